"""A sweep's worker process: trains the points it is sent, one after another, in one process.

    python -m ebt.scaling.worker SWEEP_DIR

Reads lines `POINT HOW` on stdin (HOW: start, resume or restart) and, for each, trains the
point exactly as its `ebt train` command would (`Sweep.command`): the same config, built from
the same preset and overrides in the same order, through the same trainer. The point's output
(both file descriptors, so C-level warnings too) goes to SWEEP_DIR/logs/POINT.log; the worker
answers `POINT EXIT_CODE` on stdout (0 done, 2 an error, 130/143 interrupted after saving).

A worker stops with its sweep: if the process that started it dies, however it dies (a SIGKILL
included), the worker sends itself SIGTERM, so its point saves a checkpoint and it exits, rather
than training on as an orphan beside the next sweep (`watch_parent`).

One process for many points pays for importing torch and setting it up once per job rather
than once per point: on 2 CPU cores that is several seconds, a large share of a short point.
It holds one model at a time: a point's model is freed when its training returns.
"""

from __future__ import annotations

import gc
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from ebt.checkpoint import load_config
from ebt.errors import EBTError, Interrupted
from ebt.scaling.sweep import LOGS, Sweep
from ebt.train import train


def train_point(sweep: Sweep, out: Path, name: str, how: str) -> int:
    """Train point `name` of `sweep` in `out`; the exit code its `ebt train` command would give."""
    point = next(p for p in sweep.points() if p.name == name)
    run = out / point.name
    print(f"$ {shlex.join(['ebt', *sweep.command(point, out, how)])}  (run by an ebt scale run worker)", flush=True)
    try:
        config = load_config(run) if how == "resume" else sweep.config(point)
        train(config, run, resume=how == "resume", overwrite=how == "restart", quiet=True,
              given=() if how == "resume" else [key for key, _ in point.overrides])  # as its command line gives them
    except Interrupted as e:
        print(f"ebt train: {e}", file=sys.stderr)
        return e.exit_code
    except EBTError as e:
        print(f"ebt train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ebt train: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal before training began (nothing new to save)
        print("ebt train: interrupted", file=sys.stderr)
        return 130
    print(f"done: {run}", flush=True)
    return 0


def watch_parent(every_s: float = 0.5) -> None:
    """Send this process SIGTERM once the process that started it has gone (the worker is then
    another's child: init's, or a subreaper's), checked every `every_s` seconds on a daemon thread;
    first a line on stderr (the point's log) saying why, since nobody else sent that SIGTERM."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        print(f"the sweep that started this worker has gone (pid {parent}); stopping the point, saving",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0])
    sweep = Sweep.load(out)
    watch_parent()
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # stdout before it is pointed at each log
    answers.write("ready\n")  # imports done: from now on a signal stops a point cleanly
    try:
        for line in sys.stdin:
            name, how = line.split()
            with open(out / LOGS / f"{name}.log", "a") as log:
                sys.stdout.flush(), sys.stderr.flush()
                saved = os.dup(1), os.dup(2)
                os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
                try:
                    code = train_point(sweep, out, name, how)
                finally:
                    sys.stdout.flush(), sys.stderr.flush()
                    os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                    os.close(saved[0]), os.close(saved[1])
            gc.collect()
            try:
                answers.write(f"{name} {code}\n")
            except BrokenPipeError:  # the sweep has gone: the point has saved, nobody is listening
                return code
            if code in (130, 143):
                break
    except KeyboardInterrupt:  # a signal while waiting for work: nothing is running
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
