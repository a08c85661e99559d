"""Run directories: `config.json` + `model.safetensors` (+ `train_state.pt`) + the task's own
files (text: `tokenizer.json`).

Every file is written to a temporary name in the same directory and renamed into place, so a
crash mid-write never destroys the previous checkpoint. The training state (optimizer,
scheduler, RNG and data-sampler states) lets `ebt train --resume` continue exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ebt.config import RunConfig
from ebt.errors import CheckpointError, EBTError
from ebt.models import build_model

CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE = "config.json", "tokenizer.json", "model.safetensors", "train_state.pt"


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


def save_run(out: Path, config: RunConfig, data) -> None:
    """The parts of a run that do not change while it trains: its config and the task data's files."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG, lambda p: p.write_text(config.to_json() + "\n"))
    data.save(out)


def save_weights(out: Path, model: nn.Module, step: int, train_state: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    if train_state is not None:
        atomic_write(out / TRAIN_STATE, lambda p: torch.save({"step": step, **train_state}, p))


@dataclass
class Run:
    config: RunConfig
    model: nn.Module
    tokenizer: Any  # what the task saved with the run (text: the tokenizer)
    step: int
    path: Path


def load_config(path: Path) -> RunConfig:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {str(path)!r} does not exist")
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{str(path)!r} is not a run directory: it has no {CONFIG}")
    try:
        return RunConfig.from_dict(json.loads((path / CONFIG).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG} is not a valid run config: {e}") from None
    except EBTError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> Run:
    from ebt.tasks import load_artifacts

    path = Path(path)
    config = load_config(path)
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"run directory {str(path)!r} has no {WEIGHTS} (was training stopped before the first checkpoint?)")
    tokenizer = load_artifacts(config, path)
    model = build_model(config)
    try:
        state = load_file(str(path / WEIGHTS), device=str(map_location))
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is corrupt or unreadable: {e}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path / WEIGHTS} does not match {path / CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()  # buffers (rotary tables) follow the weights
    step = int(metadata.get("step", 0))
    return Run(config, model, tokenizer, step, path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run directory (an EBT or a Transformer++), in eval mode."""
    return load_run(path, map_location).model
