"""Load a trained run: its config, the model with its weights, and the task's saved files.

    run = ebt.load_run("runs/ebt")     # Run(config, model, step, path, tokenizer, frame_encoder)
    model = ebt.load("runs/ebt")       # just the model, in eval mode
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ebt.checkpoint import CONFIG, WEIGHTS, check_weights, load_config, snapshot_path, snapshot_steps, weights_step
from ebt.config import RunConfig
from ebt.errors import CheckpointError
from ebt.models import build_model
from ebt.rundata import load_artifacts


@dataclass
class Run:
    """A trained run. `tokenizer` is set for text runs, `frame_encoder` for video runs."""

    config: RunConfig
    model: nn.Module
    step: int  # optimizer steps the weights have had
    path: Path
    tokenizer: Any = None
    frame_encoder: Any = None


def load_run(path: str | Path, map_location: str | torch.device = "cpu", step: int | None = None) -> Run:
    """The run in directory `path`, its model on `map_location` in eval mode: its last weights, or
    with `step` those kept at that step (train.keep_checkpoints: checkpoints/step-N.safetensors).

    Raises CheckpointError naming the file when a file is missing, damaged or does not match the
    config (a config.json of an earlier version is migrated, not refused)."""
    path = Path(path)
    config = load_config(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"step = {step!r} is not a training step; it must be an integer ≥ 0")
    weights = path / WEIGHTS if step is None else snapshot_path(path, step)
    if step is not None and not weights.is_file() and weights_step(path / WEIGHTS) == step:
        weights = path / WEIGHTS  # the last weights are that step's
    if not weights.is_file():
        if step is not None:
            kept = snapshot_steps(path)
            raise CheckpointError(f"run directory {str(path)!r} keeps no weights of step {step}; "
                                  + (f"it keeps steps {', '.join(map(str, kept))}" if kept else
                                     "it keeps none (train with --train.keep_checkpoints=true)"))
        raise CheckpointError(f"run directory {str(path)!r} has no {WEIGHTS} (was training stopped before the first checkpoint?)")
    artifacts = load_artifacts(config, path)
    model = build_model(config)
    try:
        state = load_file(str(weights), device=str(map_location))
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or unreadable: {e}") from None
    check_weights(state, weights)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights} does not match {path / CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()  # buffers (rotary tables) follow the weights
    step = metadata.get("step", "0")
    if not step.isdigit():
        raise CheckpointError(f"{weights} has metadata step = {step!r}; it must be a count of training steps")
    return Run(config, model, int(step), path, **artifacts)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run directory (an EBT, a Transformer++ or a DiT), in eval mode."""
    return load_run(path, map_location).model
