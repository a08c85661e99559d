"""Running a scaling sweep (`ebt.scaling.sweep`): its points trained on worker processes
(`ebt.scaling.worker`), side by side, stopped and resumed cleanly.

`prepare` checks the sweep directory and writes sweep.json; `print_commands` prints the `ebt train`
line of each point still to run (for a cluster's job array: the same weights as `run_sweep`
gives when run on the same number of torch threads, one each with jobs > 1; on another, equal
to float rounding); `run_sweep` trains them here, a
pool of `jobs` processes each handed one point at a time, and reports each point's state
(finished, failed with its log, interrupted) and the time spent outside the training loops.
SIGINT/SIGTERM/SIGHUP are passed on once to each running point, which saves a checkpoint; a
worker whose sweep died (even by SIGKILL) stops its point the same way.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ebt.checkpoint import WEIGHTS, load_config
from ebt.checks import check_int
from ebt.errors import CheckpointError, Interrupted
from ebt.files import DirectoryLock
from ebt.scaling.sweep import LOGS, SWEEP_FILE, Point, Sweep, final_validation, point_state, weights_step
from ebt.rundir import StopSignals


def prepare(sweep: Sweep, out: Path) -> Sweep:
    """Check `out` (a new directory, or one holding this very sweep) and write sweep.json."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"out {out} is a file, not a sweep directory", field="out")
    if (out / SWEEP_FILE).is_file():
        saved = Sweep.load(out)
        if saved.settings() != sweep.settings():
            mine, theirs = sweep.settings(), saved.settings()
            differ = [f"{k} (there {theirs[k]!r}, now {mine[k]!r})" for k in mine if mine[k] != theirs.get(k)]
            again = shlex.join(["ebt", "scale", "run", "--out", str(out)])
            raise CheckpointError(f"{out} holds another sweep: {'; '.join(differ)}; give another out, or the "
                                  f"same settings to continue it ({again} alone reuses them)",
                                  field="out")
    elif out.is_dir() and any(p.name != LOGS and not p.name.endswith(".lock") for p in out.iterdir()):
        raise CheckpointError(f"{out} is not empty and holds no {SWEEP_FILE}; give a new or empty out", field="out")
    sweep.save(out)
    return sweep


def print_commands(sweep: Sweep, out: Path, write: Callable[[str], None] = print) -> int:
    """Write sweep.json and print one `ebt train` line per point that is not finished (the
    command that starts, resumes or restarts it); returns how many were printed."""
    with DirectoryLock(out, field="out"):
        prepare(sweep, out)
    n = 0
    for point in sweep.points():
        state, _ = point_state(sweep, point, out)
        if state != "finished":
            write(shlex.join(["ebt", *sweep.command(point, out, state)]))
            n += 1
    return n


def run_sweep(sweep: Sweep, out: Path, jobs: int = 1, say: Callable[[str], None] = print) -> dict:
    """Train every point of `sweep` not finished in `out`, on `jobs` worker processes
    (`ebt.scaling.worker`; with jobs > 1 each on one thread). Returns {"points": [...], "wall_s",
    "overhead_pct"}: the share of the workers' time not spent in the trainers' loops (starting
    processes, loading data, building models).

    Points that fail do not stop the others: they are listed (state "failed", the log named) and
    the caller reports them. SIGINT/SIGTERM/SIGHUP stop handing out points, pass the signal on to
    each running point (which saves a checkpoint) and raise Interrupted once they have stopped. If
    this process dies without a word (SIGKILL), each worker sees it and stops its point, saving
    (`ebt.scaling.worker`). The sweep holds `out`'s lock (`ebt.files.DirectoryLock`) throughout.
    """
    check_int("jobs", jobs, 1, 256)
    out = Path(out)
    with DirectoryLock(out, field="out"):  # one sweep at a time in `out`; each point's run has its own lock
        return _run_locked(sweep, out, jobs, say)


def _run_locked(sweep: Sweep, out: Path, jobs: int, say: Callable[[str], None]) -> dict:
    prepare(sweep, out)
    points = {p.name: p for p in sweep.points()}
    todo, report = [], []
    for point in points.values():
        state, detail = point_state(sweep, point, out)
        if state == "finished":
            report.append({"name": point.name, "state": "finished", "detail": f"already finished ({detail})"})
        else:
            todo.append((point.name, state, detail))
    say(f"sweep {out}: {sweep.axis} axis, {len(points)} points; {len(points) - len(todo)} finished, "
        f"{len(todo)} to run, {min(jobs, max(1, len(todo)))} at a time")
    (out / LOGS).mkdir(exist_ok=True)
    pool = _Pool(out, jobs, say)
    started = time.perf_counter()
    report += pool.run(todo, points)
    spent = sum(w.active_s for w in pool.spawned)
    trained = sum(r.get("train_wall_s", 0.0) for r in report)
    result = {"out": str(out), "axis": sweep.axis, "points": report, "wall_s": time.perf_counter() - started,
              "overhead_pct": 100 * max(0.0, spent - trained) / spent if spent else 0.0}
    signum = pool.signals.signum
    if signum:
        stopped = [r["name"] for r in report if r["state"] == "interrupted" and "saved" in r["detail"]]
        raise Interrupted(f"sweep interrupted ({signal.Signals(signum).name}); "
                          f"{len(stopped)} point(s) saved a checkpoint mid-run; "
                          f"resume with: {shlex.join(['ebt', 'scale', 'run', '--out', str(out)])}", 128 + signum)
    return result


class _Pool:
    """Up to `jobs` worker processes handed the points to run one at a time, and the signals that
    stop them (`_Forward`)."""

    def __init__(self, out: Path, jobs: int, say: Callable[[str], None]) -> None:
        self.out, self.jobs, self.say = out, jobs, say
        self.env = dict(os.environ)
        if jobs > 1:
            self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the cores are shared between the points
        self.signals, self.answers = _Forward(), queue.Queue()
        self.workers: list[_Worker] = []
        self.spawned: list[_Worker] = []  # every worker this run started, for the overhead

    def run(self, todo: list[tuple[str, str, str]], points: dict[str, Point]) -> list[dict]:
        """Run `todo` ((name, state, detail) of each point) to the end or to a signal; the report
        of each point that ran."""
        report: list[dict] = []
        total = len(todo)
        self.signals.install()
        try:
            while True:
                self._hand_out(todo)
                if todo and len(self.workers) < self.jobs and not self.signals.signum:
                    self.workers.append(_Worker(self.out, self.env, self.answers))
                    self.spawned.append(self.workers[-1])
                    continue
                if not self.workers:
                    return report
                entry = self._collect(points)
                if entry is not None:
                    report.append(entry)
                    self.say(f"[{len(report)}/{total}] {entry['name']}: "
                             f"{entry['state']} ({entry['detail']})")
        finally:
            self.signals.restore()
            for worker in self.workers:
                worker.close()

    def _hand_out(self, todo: list[tuple[str, str, str]]) -> None:
        """Give each idle worker the next point, or close it when there is none (or a signal came)."""
        for worker in [w for w in self.workers if w.task is None]:
            if worker.process.poll() is not None:  # died between points: nothing was lost
                self.workers.remove(worker)
            elif todo and not self.signals.signum:
                name, state, detail = todo.pop(0)
                worker.send(name, state)
                if state != "start":
                    self.say(f"  {name}: " + (f"resuming at {detail}" if state == "resume" else f"restarting ({detail})"))
            else:
                worker.close()
                self.workers.remove(worker)

    def _collect(self, points: dict[str, Point]) -> dict | None:
        """The report of the next point a worker finished, or None (nothing within 0.1 s: signals
        are passed on meanwhile; or an answer from a worker no longer on that point)."""
        try:
            worker, name, code = self.answers.get(timeout=0.1)
        except queue.Empty:
            self.signals.forward([w for w in self.workers if w.task is not None])
            return None
        if worker not in self.workers or worker.task is None or worker.task[0] != name:
            return None
        seconds = time.perf_counter() - worker.task[1]
        worker.task = None
        if code is None:  # the worker process died (killed, out of memory): its point failed
            self.workers.remove(worker)
            code = worker.process.wait()
        return _finished(points[name], code, seconds, self.out, started=not worker.stopped)


class _Worker:
    """A worker process (`python -m ebt.scaling.worker OUT`), the point it is training, and a
    thread that passes its answers ("POINT CODE" lines; None for the code when it dies) on."""

    def __init__(self, out: Path, env: dict, answers: queue.Queue) -> None:
        self.born = time.perf_counter()
        self.last = self.born
        self.task: tuple[str, float] | None = None
        self.ready = False  # set once it has imported everything: before that a signal would kill it mid-import
        self.stopped = False  # killed by a signal before it was ready: its point did not start
        # Its own session: a terminal's Ctrl-C reaches it only through the sweep, once (a second
        # signal would stop a point without saving).
        self.process = subprocess.Popen([sys.executable, "-m", "ebt.scaling.worker", str(out)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, args=(answers,), daemon=True).start()

    @property
    def active_s(self) -> float:
        """Seconds from its start to its last answer: what the sweep spent on this process."""
        return self.last - self.born

    def send(self, name: str, how: str) -> None:
        self.task = (name, time.perf_counter())
        self.process.stdin.write(f"{name} {how}\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        self.process.wait()

    def _read(self, answers: queue.Queue) -> None:
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready = True
                continue
            name, _, code = line.strip().partition(" ")
            self.last = time.perf_counter()
            answers.put((self, name, int(code)))
        self.last = time.perf_counter()
        if self.task is not None:
            answers.put((self, self.task[0], None))


def _finished(point: Point, code: int, seconds: float, out: Path, started: bool = True) -> dict:
    run, log = out / point.name, out / LOGS / f"{point.name}.log"
    entry = {"name": point.name, "exit_code": code, "process_s": seconds}
    if not started:
        return {**entry, "state": "interrupted", "detail": "stopped before it began"}
    if code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        saved = (f"checkpoint at step {weights_step(run)} saved" if (run / WEIGHTS).is_file()
                 else "stopped before its first checkpoint")
        return {**entry, "state": "interrupted", "detail": f"{saved}; log {log}"}
    if code != 0:
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or [""]
        return {**entry, "state": "failed", "detail": f"exit {code}: {last[0][:200]}; log {log}"}
    row = final_validation(run, load_config(run).train.steps) or {}
    entry["train_wall_s"] = float(row.get("wall_s") or 0.0)  # the trainer's loop, validations included
    loss = row.get("loss")
    return {**entry, "state": "finished", "detail": f"{seconds:.0f} s; validation loss "
                                                    + (f"{loss:.4f}" if isinstance(loss, float) else "?")}


class _Forward(StopSignals):
    """SIGINT/SIGTERM/SIGHUP while a sweep runs: remembered (however many arrive), and passed on once to
    each running point (started in their own sessions, so a terminal's Ctrl-C reaches them only
    through here: a second signal would make a point stop without saving)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: set[int] = set()

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def forward(self, workers: list[_Worker]) -> None:
        """Send the signal, once, to each worker training a point; a worker still starting up
        (its point not begun) is stopped outright."""
        if not self.signum:
            return
        for worker in workers:
            child = worker.process
            if child.pid in self.sent or child.poll() is not None:
                continue
            if worker.ready:
                child.send_signal(self.signum)
            else:
                worker.stopped = True
                child.kill()
            self.sent.add(child.pid)


def summary(result: dict) -> str:
    """The report of `run_sweep` as lines."""
    lines = [f"{r['name']:<28} {r['state']:<11} {r['detail']}" for r in result["points"]]
    if not any("process_s" in r for r in result["points"]):
        lines.append(f"sweep {result['out']}: every point was already finished")
    else:
        lines.append(f"sweep {result['out']}: {result['wall_s']:.0f} s; overhead beyond the training loops "
                     f"(process start, data, model set-up) {result['overhead_pct']:.1f}% of the points' time")
    return "\n".join(lines)

