"""The files of a run directory, written atomically and read without trusting them.

    config.json         the RunConfig (`load_config` migrates older versions)
    model.safetensors   the weights, with the step in its metadata
    train_state.pt      optimizer, scheduler, RNG, data-sampler and replay-buffer states (for
                        --resume; `ebt.train_state`); plain data only
    metrics.jsonl       one JSON object per logged step and per validation
    checkpoints/        with train.keep_checkpoints: step-N.safetensors, the weights at each validation
    tensorboard/        with train.log_to = "tensorboard": the event files (`ebt.trackers`)
    wandb-run.json      with train.log_to = "wandb": the W&B run's id and project, which --resume
                        continues; W&B's own files go to wandb/
    + the task data's files (text: tokenizer.json; video: encoder.safetensors) and data.json

Every file is written to a temporary name in the same directory and renamed into place, so a
crash mid-write never destroys the previous checkpoint. A training checkpoint (weights, training
state, config, the kept snapshot) is one unit (`save_checkpoint_files`): written whole into
.checkpoint.partial/, made the run's by one rename to .checkpoint.complete/, then moved into
place; whatever a kill leaves, `finish_interrupted_save` restores one complete checkpoint, the
new one or the one before. Loading a run with its model is `ebt.runs.load_run`; this module knows
files, not models.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ebt.config import RunConfig
from ebt.errors import CheckpointError, EBTError
from ebt.files import DirectoryLock, atomic_write, read_json

CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS = (
    "config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl")
ENCODER, DATA, CHECKPOINTS = "encoder.safetensors", "data.json", "checkpoints"
TENSORBOARD, WANDB_RUN, SHARDS = "tensorboard", "wandb-run.json", "shards"  # shards/: ebt.sharded
# The files (and folders) a run writes into its directory. Any of them there means the directory
# holds a run; config.json last, so that a half-removed run still reads as one. W&B's own wandb/
# is not one: a new run there gets a new W&B run and folder of its own (and wandb/ may be anyone's).
RUN_FILES = (WEIGHTS, SHARDS, TRAIN_STATE, METRICS, TOKENIZER, ENCODER, DATA, CHECKPOINTS, TENSORBOARD, WANDB_RUN,
             CONFIG)


def migrate_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved by an earlier version, in today's shapes: the step size α was a 0-d tensor
    before FSDP2 (which shards no scalar) made it (1,). Anything else is left for the caller's
    checks. Every weights file a model is loaded from passes here (`ebt.load_run`, --resume): the
    models themselves read only today's shapes."""
    return {k: v.reshape(expected[k].shape) if k in expected and v.dim() == 0 and expected[k].shape == (1,) else v
            for k, v in state.items()}


def check_weights(state: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse tensors no model can use: load_state_dict would silently cast integers into the
    weights, and NaN/Inf weights only surface later as a diverged thought."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{file} holds {name} as {tensor.dtype}; model weights are floating point "
                                  "(float32, bfloat16, ...): the file is damaged or not an ebt checkpoint")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{file} holds non-finite values in {name} (NaN or Inf): "
                                  "the run diverged before this checkpoint, or the file is damaged")


def weights_metadata(step: int, config: RunConfig | None) -> dict[str, str]:
    """The metadata of a weights file: the step, and the model section of the config the weights
    were trained with, which `check_trained_with` compares config.json against when they load
    (model.n_heads, model.context_len, model.rope_theta … do not show in the weights' shapes)."""
    metadata = {"step": str(step)}
    if config is not None:
        metadata["model"] = json.dumps(dataclasses.asdict(config.model), sort_keys=True)
    return metadata


def check_trained_with(metadata: dict[str, str], config: RunConfig, weights: Path, config_file: Path) -> None:
    """CheckpointError naming the field when config.json (`config`, read from `config_file`) says
    another model than the one `weights` recorded (`weights_metadata`): a hand-edited config, or
    another run's. Weights saved before the record existed are not checked; a field this version
    no longer has is skipped."""
    recorded = metadata.get("model")
    if recorded is None:
        return
    try:
        trained = json.loads(recorded)
    except json.JSONDecodeError:
        trained = None
    if not isinstance(trained, dict):
        raise CheckpointError(f"{weights} has metadata model = {recorded[:80]!r}; it must be the JSON object of the "
                              "config's model section: the file is damaged")
    for name, value in sorted(trained.items()):
        given = getattr(config.model, name, value)
        if given != value:
            raise CheckpointError(f"{config_file} says model.{name} = {given!r}, but {weights} was trained with "
                                  f"model.{name} = {value!r}: the config was edited or is another run's; set it back "
                                  f"to {value!r}")


def save_run(out: Path, config: RunConfig, data) -> None:
    """The parts of a run that do not change while it trains: its config and the task data's files."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, config)
    data.save(out)


def save_config(out: Path, config: RunConfig) -> None:
    atomic_write(out / CONFIG, lambda p: p.write_text(config.to_json() + "\n"))


def _cpu_state(weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = weights if isinstance(weights, dict) else weights.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_weights(out: Path, weights: nn.Module | dict[str, torch.Tensor], step: int, config: RunConfig) -> None:
    """model.safetensors from a model or its (full) state dict, recording `config`'s model section
    (`weights_metadata`): an export; training saves its checkpoints with `save_checkpoint_files`."""
    state = _cpu_state(weights)
    atomic_write(out / WEIGHTS, lambda p: save_file(state, str(p), metadata=weights_metadata(step, config)))


SAVING, SAVED = ".checkpoint.partial", ".checkpoint.complete"


def save_checkpoint_files(out: Path, step: int, weights: dict[str, torch.Tensor], train_state: dict[str, Any],
                          config: RunConfig, keep: bool = False) -> None:
    """A training checkpoint at `step`, as one unit: model.safetensors, train_state.pt, config.json
    and (`keep`) checkpoints/step-N.safetensors appear together or not at all, and the checkpoint
    before stays until the new one is complete.

    Each file is written and flushed to disk in OUT/.checkpoint.partial/; one rename of that folder
    to .checkpoint.complete/ is the moment the new checkpoint becomes the run's; its files then
    replace the old ones. A kill before that rename leaves the old checkpoint (the partial folder is
    removed by the next command); after it, the next command finishes the moves
    (`finish_interrupted_save`). A failure while writing (a full disk, an I/O error) removes the
    partial folder and raises CheckpointError with the cause and the free space left."""
    out, state = Path(out), _cpu_state(weights)
    files: dict[str, Callable[[Path], None]] = {
        WEIGHTS: lambda p: save_file(state, str(p), metadata=weights_metadata(step, config)),
        TRAIN_STATE: lambda p: _torch_save({"step": step, **train_state}, p),
        CONFIG: lambda p: p.write_text(config.to_json() + "\n")}
    partial = out / SAVING
    if keep:  # the same bytes as the weights just written
        files[f"{CHECKPOINTS}/step-{step}.safetensors"] = lambda p: shutil.copyfile(partial / WEIGHTS, p)
    finish_interrupted_save(out)
    commit_checkpoint(out, step, files)


def commit_checkpoint(out: Path, step: int, files: dict[str, Callable[[Path], None]]) -> None:
    """Write `files` (name → writer) into OUT/.checkpoint.partial/, beside what is there already
    (`ebt.sharded`: every process's shards), flush everything to disk and commit the folder by
    one rename, then move its files into place (`save_checkpoint_files`)."""
    partial = out / SAVING
    try:
        partial.mkdir(exist_ok=True)
        for name, write in files.items():
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(partial / name, write)
            _flush(partial / name)
        for folder in [*sorted(p for p in partial.rglob("*") if p.is_dir()), partial]:
            _flush(folder)
        partial.rename(out / SAVED)  # the commit
    except Exception as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(f"saving the checkpoint of step {step} in {out} failed: {_cause(e)} "
                              f"({_free_space(out)} free there)") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finish_interrupted_save(out)


def finish_interrupted_save(out: Path) -> str | None:
    """Complete or undo what an interrupted `save_checkpoint_files` left in run directory `out`: a
    committed checkpoint's files still in .checkpoint.complete/ are moved into place, a partial one
    is removed. A line saying which, or None when there was nothing to do. Call it only as the
    directory's writer (`ebt.files.DirectoryLock`), or where no process writes it."""
    out, done = Path(out), None
    if (out / SAVING).exists():
        shutil.rmtree(out / SAVING, ignore_errors=True)
        done = f"{out}: removed the partial files of a checkpoint a killed process was saving (the one before stays)"
    complete = out / SAVED
    if complete.is_dir():
        for file in sorted(p for p in complete.rglob("*") if p.is_file()):
            target = out / file.relative_to(complete)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        shutil.rmtree(complete)
        done = f"{out}: put in place the complete checkpoint a killed process was saving"
    return done


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save into `path`, through a file object that keeps the operating system's error: torch
    reports a failed write (a full disk) only as "unexpected pos" in its zip writer."""
    with open(path, "wb") as f:
        recorder = _Recording(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _Recording(io.RawIOBase):
    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise


def _cause(e: Exception) -> str:
    """A failed write's cause in words: the operating system's (safetensors gives "... (os error 28)")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    found = re.search(r"os error (\d+)", str(e))
    if found:
        return os.strerror(int(found.group(1)))
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _flush(path: Path) -> None:
    """Make `path` (a file or folder) reach the disk before the commit (a power cut then cannot
    leave a committed checkpoint with empty files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:.1f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def validation_rows(out: Path) -> dict[int, dict]:
    """The validation rows of run directory `out`'s metrics.jsonl by step (the last written for a
    step); lines a crash cut short are skipped, a missing file is no rows."""
    rows: dict[int, dict] = {}
    path = Path(out) / METRICS
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("split") == "validation" and isinstance(row.get("step"), int):
            rows[row["step"]] = row
    return rows


def weights_step(file: Path) -> int | None:
    """The step a weights file (model.safetensors, checkpoints/step-N) records; None when it is
    missing or unreadable (loading it names the damage)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except Exception:
        return None


def snapshot_path(out: Path, step: int) -> Path:
    """Where train.keep_checkpoints keeps the weights of step `step`: OUT/checkpoints/step-N.safetensors."""
    return Path(out) / CHECKPOINTS / f"step-{step}.safetensors"


def snapshot_steps(out: Path) -> list[int]:
    """The steps whose weights run directory `out` keeps under checkpoints/, in order."""
    folder = Path(out) / CHECKPOINTS
    names = [p.name for p in folder.glob("step-*.safetensors")] if folder.is_dir() else []
    return sorted(int(n[len("step-"):-len(".safetensors")]) for n in names
                  if n[len("step-"):-len(".safetensors")].isdigit())


def load_config(path: Path) -> RunConfig:
    """The RunConfig of run directory `path` (older versions migrated); CheckpointError naming the
    file when it is missing, unreadable or invalid. What a killed writer left there is repaired
    first, when no process writes it (`recover_if_idle`): the config read is the run's."""
    path = Path(path)
    recover_if_idle(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {str(path)!r} " + ("is a file, not a directory" if path.exists()
                                                                  else "does not exist"))
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{str(path)!r} is not a run directory: it has no {CONFIG}")
    try:
        return RunConfig.from_dict(read_json(path / CONFIG))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG} is not a valid run config: {e}") from None
    except EBTError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None


def recover(out: Path) -> list[str]:
    """Repair what a killed writer left in run directory `out` (call it holding the directory's
    lock, `ebt.files.DirectoryLock`): a checkpoint cut off mid-save is completed or removed
    (`finish_interrupted_save`), and an --overwrite killed before the new run's first checkpoint
    puts the old run back (after it, the old run's set-aside files are removed: `Replaced.recover`).
    Returns a line for each repair."""
    out = Path(out)
    lines = [finish_interrupted_save(out)] if out.is_dir() else []
    if (out / Replaced.ASIDE).is_dir() or (out / f"{Replaced.ASIDE}.dropped").is_dir():
        lines.append(Replaced.recover(out))
    return [line for line in lines if line]


def recover_if_idle(out: Path) -> None:
    """For a reader (`ebt.load_run`, a sweep looking at its points): repair what a killed writer
    left in run directory `out` (`recover`, each repair said on stderr), unless a live process
    writes it (that one repairs its own) or it cannot be written (the files in place are then
    read: each is a whole file). Takes the lock only when there is something to repair."""
    out = Path(out)
    if not any((out / name).exists() for name in (SAVING, SAVED, Replaced.ASIDE, f"{Replaced.ASIDE}.dropped")):
        return
    try:
        with DirectoryLock(out):
            for line in recover(out):
                print(line, file=sys.stderr)
    except (CheckpointError, OSError):
        pass


class Replaced:
    """--overwrite: the old run's files, set aside in OUT/.replaced when the new run starts and
    deleted once it has written its first checkpoint. If the new run stops before that (an error,
    divergence, a crash of the command), `restore` removes its files and puts the old run back; if
    it was killed, the next command that takes the directory does (`recover`).

    OUT/.replaced/names.json lists the old run's files before any moves, so a restore cut short
    can be taken up again without confusing the two runs' files."""

    ASIDE, NAMES = ".replaced", "names.json"

    def __init__(self) -> None:
        self.out: Path | None = None

    def set_aside(self, out: Path, files: list[Path]) -> None:
        if not files:
            return
        aside = out / self.ASIDE
        aside.mkdir()  # `recover` has dealt with any earlier one
        atomic_write(aside / self.NAMES, lambda p: p.write_text(json.dumps([path.name for path in files])))
        self.out = out
        for path in files:
            os.replace(path, aside / path.name)

    def drop(self) -> None:
        if self.out is not None:
            dropped = self.out / f"{self.ASIDE}.dropped"
            os.replace(self.out / self.ASIDE, dropped)  # one rename: a kill cannot leave half a drop
            shutil.rmtree(dropped, ignore_errors=True)
            self.out = None

    def restore(self) -> None:
        if self.out is not None:
            self._put_back(self.out)
            self.out = None

    @classmethod
    def recover(cls, out: Path) -> str:
        """What a killed --overwrite left: the new run's first checkpoint complete → the old run's
        files are dropped; otherwise the old run comes back. A line saying which."""
        shutil.rmtree(out / f"{cls.ASIDE}.dropped", ignore_errors=True)
        if not (out / cls.ASIDE).is_dir():
            return f"{out}: removed the files of a replaced run a killed process was deleting"
        names = cls._names(out)
        if not names:
            shutil.rmtree(out / cls.ASIDE)
            return f"{out}: an --overwrite was killed before it set anything aside; the run is as it was"
        set_aside = cls._still_aside(out, names) == names  # and only the new run writes in out after that
        weights = (out / WEIGHTS).is_file() or (out / SHARDS).is_dir()  # a full or a sharded checkpoint
        if set_aside and weights and (out / TRAIN_STATE).is_file():
            shutil.rmtree(out / cls.ASIDE)
            return (f"{out}: an --overwrite was killed after the new run's first checkpoint; "
                    f"removed the replaced run's files it had set aside in {cls.ASIDE}/")
        cls._put_back(out)
        return (f"{out}: an --overwrite was killed before the new run's first checkpoint; "
                "the run it was replacing is back in place")

    @classmethod
    def _put_back(cls, out: Path) -> None:
        names = cls._names(out)
        for name in RUN_FILES:  # the new run's files, except those of the old run not yet set aside
            if name not in cls._still_aside(out, names) and name in names:
                continue
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for name in cls._still_aside(out, names):
            os.replace(out / cls.ASIDE / name, out / name)
        shutil.rmtree(out / cls.ASIDE)

    @classmethod
    def _names(cls, out: Path) -> list[str]:
        try:
            names = json.loads((out / cls.ASIDE / cls.NAMES).read_text())
        except (OSError, ValueError):  # killed before the list was written: nothing was moved yet
            names = []
        return [n for n in names if n in RUN_FILES] if isinstance(names, list) else []

    @classmethod
    def _still_aside(cls, out: Path, names: list[str]) -> list[str]:
        return [n for n in names if (out / cls.ASIDE / n).exists()]
