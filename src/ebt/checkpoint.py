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
crash mid-write never destroys the previous checkpoint. Loading a run with its model is
`ebt.runs.load_run`; this module knows files, not models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ebt.config import RunConfig
from ebt.errors import CheckpointError, EBTError
from ebt.files import atomic_write, read_json

CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS = (
    "config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl")
ENCODER, DATA, CHECKPOINTS = "encoder.safetensors", "data.json", "checkpoints"
TENSORBOARD, WANDB_RUN = "tensorboard", "wandb-run.json"
# The files (and folders) a run writes into its directory. Any of them there means the directory
# holds a run; config.json last, so that a half-removed run still reads as one. W&B's own wandb/
# is not one: a new run there gets a new W&B run and folder of its own (and wandb/ may be anyone's).
RUN_FILES = (WEIGHTS, TRAIN_STATE, METRICS, TOKENIZER, ENCODER, DATA, CHECKPOINTS, TENSORBOARD, WANDB_RUN, CONFIG)


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


def save_weights(out: Path, weights: nn.Module | dict[str, torch.Tensor], step: int,
                 train_state: dict[str, Any] | None = None) -> None:
    """model.safetensors from a model or its (full) state dict, and train_state.pt if given."""
    state = _cpu_state(weights)
    atomic_write(out / WEIGHTS, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    if train_state is not None:
        atomic_write(out / TRAIN_STATE, lambda p: torch.save({"step": step, **train_state}, p))


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


def save_snapshot(out: Path, weights: nn.Module | dict[str, torch.Tensor], step: int) -> None:
    """Keep a copy of the weights at `step` (train.keep_checkpoints), in the format of model.safetensors."""
    state = _cpu_state(weights)
    path = snapshot_path(out, step)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda p: save_file(state, str(p), metadata={"step": str(step)}))


def snapshot_steps(out: Path) -> list[int]:
    """The steps whose weights run directory `out` keeps under checkpoints/, in order."""
    folder = Path(out) / CHECKPOINTS
    names = [p.name for p in folder.glob("step-*.safetensors")] if folder.is_dir() else []
    return sorted(int(n[len("step-"):-len(".safetensors")]) for n in names
                  if n[len("step-"):-len(".safetensors")].isdigit())


def load_config(path: Path) -> RunConfig:
    """The RunConfig of run directory `path` (older versions migrated); CheckpointError naming the
    file when it is missing, unreadable or invalid."""
    path = Path(path)
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
