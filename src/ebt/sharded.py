"""Sharded training checkpoints (`train.checkpoint_format = "sharded"`), with torch.distributed.checkpoint (DCP).

A full checkpoint gathers every weight and optimizer state on the main process, which writes them
alone (`ebt.checkpoint.save_checkpoint_files`). A sharded one has each process write its own
shards of the model and the optimizer, in parallel, and nothing is gathered:

    shards/step-N/          DCP's files: .metadata (written last, by the main process) and one
                            __R_0.distcp per process R that wrote it (its shards of "model.*" and
                            "optimizer.*": the AdamW moments keyed by parameter name)
    shards/step-N/model.json  the step and the model section the weights were trained with, as
                            model.safetensors records them (`ebt.checkpoint.weights_metadata`)
    train_state.pt          the rest of the training state, as a full checkpoint's, with
                            optimizer = None: the optimizer's state is in the shards

The unit is committed as a full checkpoint is: every process writes into OUT/.checkpoint.partial/,
all wait for each other (DCP's own last collective), then the main process adds train_state.pt,
config.json and model.json and commits the folder by one rename (`ebt.checkpoint.commit_checkpoint`);
older shards are removed after. A half-written checkpoint is never the run's, and `recover` handles
a killed save as it does a full one. With `train.async_checkpoint` the shards are written in the
background (`dcp.async_save`, on a process group of its own) while training goes on; the next
save, the run's end and a stop signal wait for it and commit it.

Loading reshards: a run resumes on any number of processes and under any `train.parallel`
(`load_training`), and `consolidate` reads the full weights in one process without a process
group (what `ebt.load_run`, `ebt eval`, `save_pretrained` and `ebt consolidate` read).

Reading executes no code from the files, as `torch.load(weights_only=True)` and safetensors do
for full checkpoints: DCP's .metadata is a pickle, so it is first unpickled with only DCP's
metadata classes, torch's sizes, dtypes and layouts and paths allowed, and the non-tensor items
of the shards (DCP stores them with `torch.save`) are read only once `torch.load(weights_only=True)`
accepts them (`ebt.safe_shards`). Anything else is refused
naming the file.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ebt import distributed
from ebt.checkpoint import (CONFIG, SAVING, SHARDS, TRAIN_STATE, WEIGHTS, _cause, _free_space, _torch_save,
                            check_trained_with, commit_checkpoint, finish_interrupted_save, load_config, recover,
                            weights_metadata, weights_step)
from ebt.config import RunConfig
from ebt.errors import CheckpointError, ConfigError
from ebt.files import DirectoryLock, atomic_write
from ebt.safe_shards import check_metadata_pickle, checked_planner

RECORD = "model.json"  # in each shards/step-N/: the step and the model section (`weights_metadata`)
# DCP warns at every save and load in one process (no_dist) that it assumes so: here it is meant.
warnings.filterwarnings("ignore", message=r".*assuming the intent is to (save|load) in a single process")


def shards_path(out: Path, step: int) -> Path:
    """Where the shards of step `step` live: OUT/shards/step-N/."""
    return Path(out) / SHARDS / f"step-{step}"


def shard_steps(out: Path) -> list[int]:
    """The steps of run directory `out` whose shards are complete (DCP's .metadata and model.json), in order."""
    folder = Path(out) / SHARDS
    names = [p.name[len("step-"):] for p in folder.glob("step-*")] if folder.is_dir() else []
    return sorted(int(n) for n in names if n.isdigit() and (folder / f"step-{n}" / ".metadata").is_file()
                  and (folder / f"step-{n}" / RECORD).is_file())


def check_newest_complete(out: Path) -> None:
    """CheckpointError naming the missing file when run directory `out`'s newest shards lack DCP's
    .metadata or model.json. A save commits both with the shards in one rename, so a missing one
    was deleted or lost: the run's last checkpoint is damaged, not absent."""
    folder, complete = Path(out) / SHARDS, shard_steps(out)
    names = [p.name[len("step-"):] for p in folder.glob("step-*")] if folder.is_dir() else []
    for step in sorted(int(n) for n in names if n.isdigit() and int(n) > max(complete, default=-1)):
        shards = shards_path(out, step)
        missing = next(f for f in (shards / ".metadata", shards / RECORD) if not f.is_file())
        raise CheckpointError(f"{missing} is missing: the shards of {shards}, the run's last checkpoint, are "
                              "incomplete and cannot be read (restore the file; a checkpoint the run kept, "
                              "train.keep_checkpoints, loads with ebt.load_run(run, step=N))")


def newest_shards(out: Path) -> Path | None:
    """The shards `ebt.load_run` reads for run directory `out`'s last weights: the newest, unless
    model.safetensors is of that step or later (a full checkpoint, or `consolidate_in_place`'s).
    CheckpointError naming the file when the newest lack one (`check_newest_complete`)."""
    check_newest_complete(out)
    steps = shard_steps(out)
    if not steps:
        return None
    full = weights_step(Path(out) / WEIGHTS) if (Path(out) / WEIGHTS).is_file() else None
    return None if full is not None and full >= steps[-1] else shards_path(out, steps[-1])


def check_async() -> None:
    """ConfigError unless this torch has `torch.distributed.checkpoint.async_save` (torch ≥ 2.3)."""
    import torch.distributed.checkpoint as dcp

    if not hasattr(dcp, "async_save"):
        raise ConfigError(f"train.async_checkpoint = true needs torch.distributed.checkpoint.async_save, which torch "
                          f"{torch.__version__} does not have (torch ≥ 2.3 does); set it to false",
                          field="train.async_checkpoint")


def _no_dist(function: Callable) -> dict[str, Any]:
    """no_dist=True where DCP's `function` takes it (torch ≥ 2.5 for load; before, no group means no_dist)."""
    return {"no_dist": True} if "no_dist" in inspect.signature(function).parameters else {}


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The model's and the optimizer's state as DCP reads and writes them: this process's shards
    (DTensors under FSDP2), keyed by parameter name whatever the wrapping."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # initializes an optimizer's empty state
    return {"model": model_state, "optimizer": optimizer_state}


def finite(model: nn.Module, dist: distributed.Distributed, device: torch.device) -> bool:
    """Whether every weight is finite on every process (each checks its own shards; one all-reduce)."""
    ok = torch.ones((), dtype=torch.bool, device=device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        ok = ok & torch.isfinite(local.detach()).all()  # no device sync per parameter
    return distributed.agree(ok, 0, dist)[0]


class ShardedCheckpoints:
    """The sharded checkpoints of a run being trained (every process holds one): `save` at a step,
    `close` at the end. With `background` (train.async_checkpoint) a save returns once this
    process's shards are copied, and the copy is written while training goes on."""

    def __init__(self, out: Path, dist: distributed.Distributed, device: torch.device, background: bool):
        if background:
            check_async()
        self.out, self.dist, self.device, self.background = Path(out), dist, device, background
        self.pending: tuple[Any, Callable[[], None]] | None = None  # (DCP's future, the commit)
        self.group = None
        if background and dist.enabled:  # the background save's collectives, apart from training's
            self.group = torch.distributed.new_group(backend="gloo")

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict[str, Any],
             config: RunConfig, keep: bool = False, on_commit: Callable[[], None] = lambda: None) -> None:
        """Save the weights and optimizer state at `step` as shards (every process) with
        `train_state` (the main process's; optimizer None) and `config`; `keep`: kept when later
        checkpoints replace it (train.keep_checkpoints). `on_commit` runs on the main process once
        the checkpoint is the run's. CheckpointError naming the cause if writing fails."""
        import torch.distributed.checkpoint as dcp

        self.wait()
        if self.dist.is_main:
            finish_interrupted_save(self.out)
            (self.out / SAVING).mkdir()
        distributed.barrier(self.dist, self.device)  # the staging folder is there, and empty
        target = shards_path(self.out / SAVING, step)
        state = _state(model, optimizer)
        writer = _writer(target)
        record = {**weights_metadata(step, config), "kept": keep}
        commit = self._commit_step(step, copy.deepcopy(train_state), config, record, on_commit)
        try:
            if self.background:  # DCP copies the state (its `stage`), then writes the copy while training goes on
                future = dcp.async_save(state, storage_writer=writer, process_group=self.group,
                                        **({} if self.dist.enabled else _no_dist(dcp.async_save)))
                self.pending = (future, commit)
                return
            dcp.save(state, storage_writer=writer, **({} if self.dist.enabled else _no_dist(dcp.save)))
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            if self.dist.is_main:
                shutil.rmtree(self.out / SAVING, ignore_errors=True)
            raise _failed(step, self.out, _dcp_failure(e)) from None
        commit()

    def _commit_step(self, step: int, train_state: dict, config: RunConfig, record: dict,
                     on_commit: Callable[[], None]) -> Callable[[], None]:
        def commit() -> None:  # on every process once its shards are written; the main one commits
            if not self.dist.is_main:
                return
            files = {TRAIN_STATE: lambda p: _torch_save(train_state, p),
                     CONFIG: lambda p: p.write_text(config.to_json() + "\n"),
                     f"{SHARDS}/step-{step}/{RECORD}": lambda p: p.write_text(json.dumps(record) + "\n")}
            commit_checkpoint(self.out, step, files)
            remove_stale(self.out, step)
            on_commit()
        return commit

    def wait(self) -> None:
        """Wait for a background save to be written (every process), then commit it (the main one)."""
        if self.pending is None:
            return
        (future, commit), self.pending = self.pending, None
        try:
            future.result()
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            if self.dist.is_main:
                shutil.rmtree(self.out / SAVING, ignore_errors=True)
            raise _failed(-1, self.out, _dcp_failure(e)) from None
        commit()

    def close(self) -> None:
        """The run's end (or an error, or a stop signal): a background save still running is
        waited for and committed; then the background process group is released."""
        try:
            self.wait()
        finally:
            if self.group is not None and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group(self.group)
            self.group = None


def _unshared(live: Any, staged: Any) -> Any:
    """`staged` (DCP's staging copy of `live`) with every tensor that still shares `live`'s memory
    copied: torch 2.4's staging leaves CPU tensors in place, which training changes meanwhile."""
    if isinstance(staged, dict):
        return {k: _unshared(live.get(k) if isinstance(live, dict) else None, v) for k, v in staged.items()}
    if isinstance(staged, list):
        return [_unshared(live[i] if isinstance(live, list) and i < len(live) else None, v)
                for i, v in enumerate(staged)]
    if isinstance(staged, torch.Tensor) and isinstance(live, torch.Tensor):
        mine, theirs = (t.to_local() if hasattr(t, "to_local") else t for t in (staged, live))
        if mine.numel() and mine.untyped_storage().data_ptr() == theirs.untyped_storage().data_ptr():
            return staged.detach().clone()
    return staged


def _writer(folder: Path):
    """DCP's file writer (each file synced before the commit), staging a background save in a copy."""
    from torch.distributed.checkpoint import FileSystemWriter

    class Writer(FileSystemWriter):
        def stage(self, state_dict):
            return _unshared(state_dict, super().stage(state_dict))

    return Writer(str(folder), sync_files=True)


def _dcp_failure(e: BaseException) -> BaseException:
    """The error a process met inside DCP, which wraps every rank's in a CheckpointException (a
    BaseException: `except Exception` misses it); a stop (KeyboardInterrupt, SystemExit) re-raised."""
    if isinstance(e, (KeyboardInterrupt, SystemExit)):
        raise e
    failures = getattr(e, "failures", None)
    if type(e).__name__ == "CheckpointException" and isinstance(failures, dict) and failures:
        return next(iter(failures.values()))[0]
    return e


def _failed(step: int, out: Path, e: BaseException) -> CheckpointError:
    """The error of a failed save: its cause in the operating system's words and the space left."""
    at = f"of step {step} " if step >= 0 else ""
    return CheckpointError(f"saving the sharded checkpoint {at}in {out} failed: {_cause(e)[:200]} "
                           f"({_free_space(out)} free); the partial shards were removed")


def remove_stale(out: Path, step: int | None) -> None:
    """After a checkpoint at `step` is committed: the shards of other steps (but those kept:
    train.keep_checkpoints) and, for a sharded one, an older model.safetensors go; after a full
    one (`step` None), every shard. Main process only, holding the directory."""
    out = Path(out)
    for old in shard_steps(out) if (out / SHARDS).is_dir() else ():
        if old != step and not _record(shards_path(out, old)).get("kept"):
            shutil.rmtree(shards_path(out, old), ignore_errors=True)
    if step is None and (out / SHARDS).is_dir() and not any((out / SHARDS).iterdir()):
        (out / SHARDS).rmdir()
    if step is not None and (out / WEIGHTS).is_file() and (weights_step(out / WEIGHTS) or 0) < step:
        (out / WEIGHTS).unlink()


def _record(folder: Path) -> dict:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{folder / RECORD} is missing or damaged; the shards beside it cannot be "
                              "read as a checkpoint") from None
    if not isinstance(record, dict) or not str(record.get("step", "")).isdigit():
        raise CheckpointError(f"{folder / RECORD} is not a shards record (it must hold the step): it is damaged")
    return record


def _metadata(folder: Path):
    """DCP's metadata of shards `folder`, once every file it points to is there and long enough:
    CheckpointError naming the missing or damaged file."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder / '.metadata'} is missing: the shards in {folder} cannot be read")
    check_metadata_pickle(folder / ".metadata")
    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as e:  # noqa: BLE001  a truncated or foreign pickle: whatever it raises
        raise CheckpointError(f"{folder / '.metadata'} is damaged or unreadable ({type(e).__name__}); the shards in "
                              f"{folder} cannot be read") from None
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: the shards of {folder} are incomplete (one process's file); "
                                  "the run cannot be read from them")
        if file.stat().st_size < end:
            raise CheckpointError(f"{file} is damaged: it holds {file.stat().st_size} bytes, the shards' metadata "
                                  f"says at least {end}; the run cannot be read from them")
    return metadata


def _check_shapes(metadata, state: dict[str, Any], folder: Path, config_file: Path) -> None:
    """CheckpointError naming the first tensor of `state` ("model.*", global shapes) whose shape
    the shards do not hold: the config builds another model than the one they were saved from."""
    stored = metadata.state_dict_metadata
    for key, value in _flat(state).items():
        if not isinstance(value, torch.Tensor) or not key.startswith("model."):
            continue
        if key not in stored or not hasattr(stored[key], "size"):
            raise CheckpointError(f"the shards in {folder} hold no {key}, which the model of {config_file} has: "
                                  "they are of another model; set the config back to the run's")
        if tuple(stored[key].size) != tuple(value.shape):
            raise CheckpointError(f"the shards in {folder} hold {key} of shape {tuple(stored[key].size)}, but the model "
                                  f"of {config_file} has {tuple(value.shape)}: the model changed since they were "
                                  "saved; set the config back to the run's")


def _flat(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in state.items():
        if isinstance(v, dict) and k in ("model", "optimizer") and not prefix:
            flat.update(_flat(v, f"{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def load_training(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                  dist: distributed.Distributed) -> None:
    """--resume from a sharded checkpoint: the weights and optimizer state of `step` read into
    `model` and `optimizer` as they are wrapped now (any number of processes, any train.parallel:
    DCP reshards). CheckpointError naming the file or the tensor that does not fit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    folder = shards_path(out, step)
    if not folder.is_dir():
        raise CheckpointError(f"{Path(out) / TRAIN_STATE} is of a sharded checkpoint of step {step}, but {folder} "
                              "is missing; the run cannot resume")
    check_trained_with(_record(folder), load_config(out), folder, Path(out) / CONFIG)
    metadata = _metadata(folder)
    state = _state(model, optimizer)
    _check_shapes(metadata, state, folder, Path(out) / CONFIG)
    try:
        dcp.load(state, storage_reader=FileSystemReader(str(folder)), planner=checked_planner(),
                 **({} if dist.enabled else _no_dist(dcp.load)))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except BaseException as e:  # noqa: BLE001  DCP wraps each rank's error in its own
        e = _dcp_failure(e)
        if isinstance(e, CheckpointError):
            raise e from None
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"cannot resume from the shards in {folder}: {cause}") from None


def consolidate(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The full weights in shards `folder` (one process, no process group; only the model's
    shards are read) and their metadata as model.safetensors records it (step, model section).
    CheckpointError naming the file when one is missing or damaged."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    record = _record(folder)
    metadata = _metadata(folder)
    weights = {key[len("model."):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
               for key, m in metadata.state_dict_metadata.items() if key.startswith("model.") and hasattr(m, "size")}
    try:
        dcp.load({"model": weights}, storage_reader=FileSystemReader(str(folder)), planner=checked_planner(),
                 **_no_dist(dcp.load))
    except BaseException as e:  # noqa: BLE001
        e = _dcp_failure(e)
        if isinstance(e, CheckpointError):
            raise e from None
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"the shards in {folder} are damaged or unreadable: {cause}") from None
    return weights, {k: str(v) for k, v in record.items() if k in ("step", "model")}


def consolidate_in_place(out: Path) -> str:
    """`ebt consolidate`: model.safetensors written into run directory `out` from its newest shards
    (holding the directory's lock), the file `ebt.load_run` then reads and an export copies; the
    shards stay, for --resume. A line saying what was done. CheckpointError when `out` holds no
    shards, or a shard is missing or damaged (naming the file)."""
    from safetensors.torch import save_file

    out = Path(out)
    load_config(out)  # names the directory when it holds no run
    with DirectoryLock(out, field="run"):
        recover(out)
        check_newest_complete(out)
        steps = shard_steps(out)
        if not steps:
            raise CheckpointError(f"{out} holds no sharded checkpoint ({SHARDS}/step-N/) to consolidate")
        folder = shards_path(out, steps[-1])
        if (out / WEIGHTS).is_file() and weights_step(out / WEIGHTS) == steps[-1]:
            return f"{out / WEIGHTS} already holds the weights of step {steps[-1]}; nothing to do"
        weights, metadata = consolidate(folder)
        check_trained_with(metadata, load_config(out), folder, out / CONFIG)
        weights = {k: v.contiguous() for k, v in weights.items()}
        atomic_write(out / WEIGHTS, lambda p: save_file(weights, str(p), metadata=metadata))
    size = (out / WEIGHTS).stat().st_size / 2**20
    return f"{out / WEIGHTS}: the weights of step {steps[-1]} from {folder} ({size:.1f} MiB)"
