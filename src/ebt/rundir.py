"""The life of a run directory around training: claiming it, replacing an old run (`--overwrite`),
resuming one, the initial weights of a fine-tuning run, the metrics log and the stop signals.

A run directory belongs to one run, and has one writer: the command that trains it holds its
lock (`ebt.files.DirectoryLock`) from before anything slow to its end, and first repairs what a
killed writer left (`recover`). A new run over another needs overwrite=True, and the old run is
set aside (`Replaced`) until the new one writes its first checkpoint: if the new run stops before
that, even by a kill, the old one comes back. A resumed run may not change what shapes its model,
its data or its batches (`refuse_fixed_changes`). The files themselves are `ebt.checkpoint`'s;
the loop that fills them is `ebt.train`, which reads this module's pieces in order: `claim`, then
`check_resumable` or `resolve_init`, `MetricsLog`, `StopSignals`; `resume_command` is the line
that continues a run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

from torch import nn

from ebt.checkpoint import METRICS, RUN_FILES, TRAIN_STATE, WEIGHTS, Replaced, load_config, recover
from ebt.config import RunConfig
from ebt.distributed import Distributed
from ebt.errors import CheckpointError, ConfigError
from ebt.files import atomic_write, standard_json
from ebt.runs import load_run
from ebt.sharded import check_newest_complete, shard_steps
from ebt.trackers import Tracker

# The signals that stop a command cleanly (saving first); SIGHUP where the platform has one.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# What --resume may not change besides the model, its thinking and the data: what fixes the batches.
RESUME_FIXED_TRAIN_FIELDS = ("train.seed", "train.batch_size")


def resume_command(out: Path, dist: Distributed | None = None) -> str:
    """The shell line that continues the run in `out` (quoted: a path with spaces pastes whole);
    under torchrun (`dist`), a torchrun line with this run's processes per node (its checkpoints
    also load on any other number)."""
    command = ["ebt", "train", "--resume", "--out", str(out)]
    if dist is not None and dist.enabled:  # one node: --standalone (a free port); several: add your rendezvous
        processes = os.environ.get("LOCAL_WORLD_SIZE", str(dist.world_size))
        one_node = ["--standalone"] if processes == str(dist.world_size) else []
        command = ["torchrun", *one_node, "--nproc_per_node", processes, "-m", "ebt.cli", *command[1:]]
    return shlex.join(command)


def claim(out: Path, resume: bool, overwrite: bool, say=print) -> list[Path]:
    """Refuse to start a run in a directory that holds another; returns the old run's files that
    `overwrite` replaces (`Replaced`). Call it holding the directory's lock: what a killed writer
    left is repaired first (`recover`, said through `say`); nothing else is touched."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a run directory")
    for line in recover(out):  # the checkpoint a killed process was saving, an --overwrite it was doing
        say(line)
    if resume:
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        raise CheckpointError(f"{out} already holds a run ({', '.join(p.name for p in found)}); "
                              "pass --resume to continue it or --overwrite to replace it")
    return found


def check_resumable(out: Path, config: RunConfig) -> RunConfig:
    """--resume: the config `out` was saved with, once its checkpoint's files are there and
    `config` keeps its data and batches (the model's sections are checked after the data fills
    them in: `refuse_fixed_changes`)."""
    check_newest_complete(out)
    weights = (out / WEIGHTS).is_file() or bool(shard_steps(out))  # full or sharded (ebt.sharded)
    if weights and not (out / TRAIN_STATE).is_file():  # --overwrite would delete the weights
        raise CheckpointError(f"--resume: {out} holds weights but no {TRAIN_STATE}, so it cannot resume exactly; "
                              f"its weights still load (ebt eval); to train on from them, start a new run: "
                              f"--train.init={shlex.quote(str(out))} --out NEW_DIR")
    if not weights:
        raise CheckpointError(f"--resume: {out} has no {WEIGHTS} (nor shards) to resume from: the run stopped before its first "
                              "checkpoint (to start it afresh, pass --overwrite without --resume)")
    saved = load_config(out)
    refuse_fixed_changes(saved, config, out, ("data",), RESUME_FIXED_TRAIN_FIELDS)
    return saved


def refuse_fixed_changes(saved: RunConfig, config: RunConfig, out: Path, sections: tuple[str, ...],
                         fields: tuple[str, ...] = ()) -> None:
    """--resume: whole config `sections` and single `fields` shape the model, its data or its
    batches, so they cannot change mid-run."""
    before, now = _flat(saved), _flat(config)
    keys = [k for k in before if k.partition(".")[0] in sections] + list(fields)
    changed = [f"{k} (saved {before[k]!r}, now {now[k]!r})" for k in keys if before[k] != now[k]]
    if changed:
        raise ConfigError(f"--resume: {'; '.join(changed)}: cannot change in the middle of the run in {out}; "
                          "start a new run in another --out to change it (from this run's weights: --train.init)")


def resolve_init(config: RunConfig, out: Path) -> RunConfig:
    """train.init, saved absolute (like the corpus): ConfigError unless it is a run directory other
    than `out`."""
    init = Path(config.train.init).expanduser().resolve()
    if init == out.resolve():
        raise ConfigError(f"train.init = {config.train.init!r} is the run directory this run writes (--out); "
                          "a run starts from another run's weights: choose another --out")
    try:
        load_config(init)
    except CheckpointError as e:
        raise ConfigError(f"train.init = {config.train.init!r} must be a run directory to start from: {e}") from None
    return config.override("train.init", str(init))


def load_initial_weights(model: nn.Module, config: RunConfig, init: Path) -> str:
    """train.init: copy the weights of the run in `init` into `model` (fine-tuning). ConfigError
    unless its model and task sections equal this run's (the weights would not fit); the run's
    files are checked as `ebt.load_run` checks them. Returns a line for the log."""
    theirs = load_config(init)
    mine_flat, theirs_flat = _flat(config), _flat(theirs)
    sections = ("model", config.model.task)
    changed = [f"{k} = {mine_flat.get(k)!r} (the initial run has {theirs_flat.get(k)!r})"
               for k in sorted(set(mine_flat) | set(theirs_flat)) if k.split(".")[0] in sections
               and mine_flat.get(k) != theirs_flat.get(k)]
    if changed:
        raise ConfigError(f"train.init = {str(init)!r}: {'; '.join(changed[:4])}; a run started from another's "
                          "weights keeps its model: drop those overrides")
    run = load_run(init)
    model.load_state_dict(run.model.state_dict())
    return f"{init} (its step {run.step})"


def _flat(config: RunConfig) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, fields in config.to_dict().items() if isinstance(fields, dict)
            for k, v in fields.items()}


class StopSignals:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal, a lost ssh session) set a flag the
    training loop reads after each step, which then saves a checkpoint and raises Interrupted; the
    same signal again stops at once (KeyboardInterrupt: Ctrl-C twice). Another signal after the
    first is part of the same stop and is absorbed: under torchrun the terminal's Ctrl-C reaches
    the workers, and torchrun, stopping, sends them SIGTERM a moment later (it waits for them
    before killing them), which must not cut the checkpoint short.

    Handlers can only be set in the main thread; elsewhere signals keep their usual effect. Under
    torchrun every rank gets the signal and the ranks agree on it each step (`ebt.train.train_step`).
    """

    def __init__(self) -> None:
        self.signum, self.previous = 0, {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


class MetricsLog:
    """metrics.jsonl of run directory `out`, written by the main process only (`enabled`), and the
    experiment tracker (`ebt.trackers`) fed the same rows."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled, self.tracker = out / METRICS, enabled, Tracker()

    def write(self, row: dict) -> None:
        if self.enabled:
            line = standard_json(row) + "\n"  # one write per row: a crash cuts at most the last line short
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
            self.tracker.log(row, row["step"])

    def keep_until(self, step: int) -> None:
        """--resume: drop the rows of steps after the checkpoint (lost when the run stopped) and a
        last line a crash cut short, so the log reads as one run."""
        if not self.enabled or not self.path.is_file():
            return
        text = self.path.read_text()
        kept = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(standard_json(row) + "\n")
        if "".join(kept) != text:
            atomic_write(self.path, lambda p: p.write_text("".join(kept)))

    def close(self, exit_code: int = 0) -> None:
        """Close the tracker (once: later calls do nothing)."""
        tracker, self.tracker = self.tracker, Tracker()
        tracker.close(exit_code)
