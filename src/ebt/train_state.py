"""The training state, train_state.pt: what a resumed run needs besides its weights to continue
exactly, saved beside model.safetensors at every checkpoint (`ebt.checkpoint.save_checkpoint_files`).

It is made of parts that have `state_dict()` and `load_state_dict(state)` (the optimizer through
`ebt.parallel`, the lr scheduler, the training batches, System 2's replay buffer, the fp16 loss
scaler, torch's generators: `ebt.train` names them), and two plain numbers, the step and the length
the lr schedule runs over. `TRAIN_STATE_KEYS` is the one list of them: `state_dict` writes it,
`restore` reads it and `load` checks a file against it. The file holds plain data only and is
loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ebt.checkpoint import (CONFIG, TRAIN_STATE, WEIGHTS, check_trained_with, load_config, migrate_weights,
                            weights_step)
from ebt.errors import CheckpointError

NUMBERS = ("step", "schedule_steps")
# train_state.pt's keys, each with whether every training state has it. The others are None where
# a run has no such part (cuda_rng off CUDA, replay without System 2's buffer, scaler but under fp16)
# and absent from files written before they existed (schedule_steps).
TRAIN_STATE_KEYS = {"step": True, "schedule_steps": False, "optimizer": True, "scheduler": True, "batches": True,
                    "replay": False, "scaler": False, "torch_rng": True, "cuda_rng": False}


class Generator:
    """torch's default generator, the CPU's or (`cuda`) every CUDA device's, as a part of the state.
    Python's `random` and numpy's global generator are not saved: nothing in training draws from them."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda

    def state_dict(self) -> torch.Tensor | list[torch.Tensor]:
        return torch.cuda.get_rng_state_all() if self.cuda else torch.get_rng_state()

    def load_state_dict(self, state) -> None:
        if self.cuda:
            torch.cuda.set_rng_state_all(state)
        else:
            torch.set_rng_state(state)


def state_dict(parts: dict[str, Any], **numbers: int) -> dict[str, Any]:
    """The training state of `parts` (key → a part, or None where the run has none) and `numbers`
    (step, schedule_steps): every key of TRAIN_STATE_KEYS. Under FSDP2 every process calls it (the
    optimizer's state is a collective)."""
    state = {**numbers, **{key: part.state_dict() if part is not None else None for key, part in parts.items()}}
    if set(state) != set(TRAIN_STATE_KEYS):
        raise ValueError(f"the training state's keys are {sorted(TRAIN_STATE_KEYS)}, not {sorted(state)}")
    return state


def restore(parts: dict[str, Any], state: dict[str, Any], out: Path) -> None:
    """Load each part this run has from `state` where it holds one (the numbers are the caller's);
    CheckpointError naming run directory `out` when a part does not take its state."""
    try:
        for key in TRAIN_STATE_KEYS:
            if key not in NUMBERS and parts[key] is not None and state.get(key) is not None:
                parts[key].load_state_dict(state[key])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {out}: {e}") from None


def load(path: Path) -> dict[str, Any]:
    """The training state of run directory `path`.

    Loaded with weights_only=True: tensors, numbers, strings, lists and dicts, never pickled code,
    so a train_state.pt from elsewhere cannot run anything. A damaged file, or one without the keys
    every training state has, is a CheckpointError naming it, whatever torch.load raised.
    """
    file = Path(path) / TRAIN_STATE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError, UnpicklingError, OSError, RuntimeError (zip), … depending on the damage
        if isinstance(e, EOFError):
            reason = "it is empty or cut short"
        elif isinstance(e, pickle.UnpicklingError):  # its own message is a page on weights_only
            reason = "it is not a PyTorch file of tensors, numbers, strings, lists and dicts"
        else:
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        raise CheckpointError(f"{file} is damaged or unreadable ({reason}); the run cannot resume from it") from None
    required = [k for k, always in TRAIN_STATE_KEYS.items() if always]
    missing = [k for k in required if k not in state] if isinstance(state, dict) else required
    if missing:
        raise CheckpointError(f"{file} is not a training state: it has no {', '.join(missing)}")
    return state


def load_weights(out: Path, expected: dict[str, torch.Tensor], step: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of run directory `out` on `device`, in the shapes of `expected` (a model's
    state dict: `ebt.checkpoint.migrate_weights`); CheckpointError unless they are readable and
    from `step`, the step of its training state."""
    try:
        weights = load_file(str(out / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{out / WEIGHTS} is corrupt or unreadable ({e}); the run cannot resume from it") from None
    if (saved := weights_step(out / WEIGHTS)) != step:
        raise CheckpointError(f"{out / WEIGHTS} is from step {saved} but {out / TRAIN_STATE} from step "
                              f"{step} (a save was cut short); the run cannot continue exactly")
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        check_trained_with(f.metadata() or {}, load_config(out), out / WEIGHTS, out / CONFIG)
    return migrate_weights(weights, expected)


def load_checkpoint(out: Path, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """--resume: the training state of run directory `out`, after loading its weights into the
    (unwrapped) model. A sharded checkpoint's (optimizer None: `ebt.sharded`) are read once the
    model is wrapped, by `ebt.sharded.load_training`."""
    state = load(out)
    try:
        if state["optimizer"] is not None:
            model.load_state_dict(load_weights(out, model.state_dict(), int(state["step"]), device))
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume from {out}: {e}") from None
    return state
