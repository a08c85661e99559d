"""The files of a run directory, written atomically and read without trusting them.

    config.json         the RunConfig (`load_config` migrates older versions)
    model.safetensors   the weights, with the step in its metadata
    train_state.pt      optimizer, scheduler, RNG and data-sampler states (for --resume)
    metrics.jsonl       one JSON object per logged step and per validation
    + the task data's files (text: tokenizer.json; video: encoder.safetensors) and data.json

Every file is written to a temporary name in the same directory and renamed into place, so a
crash mid-write never destroys the previous checkpoint. Loading a run with its model is
`ebt.runs.load_run`; this module knows files, not models.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from ebt.config import RunConfig
from ebt.errors import CheckpointError, EBTError

CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS = (
    "config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` via `write(tmp)` to a temporary file in the same directory, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """A JSON file's content; CheckpointError naming the file when it is unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None


def save_run(out: Path, config: RunConfig, data) -> None:
    """The parts of a run that do not change while it trains: its config and the task data's files."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, config)
    data.save(out)


def save_config(out: Path, config: RunConfig) -> None:
    atomic_write(out / CONFIG, lambda p: p.write_text(config.to_json() + "\n"))


def save_weights(out: Path, model: nn.Module, step: int, train_state: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    if train_state is not None:
        atomic_write(out / TRAIN_STATE, lambda p: torch.save({"step": step, **train_state}, p))


def load_config(path: Path) -> RunConfig:
    """The RunConfig of run directory `path` (older versions migrated); CheckpointError naming the
    file when it is missing, unreadable or invalid."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {str(path)!r} does not exist")
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
