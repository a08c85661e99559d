"""Mixed precision (`train.precision`, and the `precision` of evaluation and generation): one choice
for training and inference.

  fp32  every operation in float32 (the default; on CUDA matmuls may use TF32, as the reference).
  bf16  `torch.autocast` to bfloat16 around the model's forward (and thinking's ∇E), with float32
        weights, optimizer state and gradients (the master copy). CPU and CUDA.
  fp16  autocast to float16 with dynamic loss scaling (`torch.amp.GradScaler`); CUDA only.

What must stay accurate stays float32 under autocast: PyTorch's autocast runs softmax, norms and
losses in float32 by its own op lists; the candidate a thinking step updates, its softmax and the
update y ← p − α∇E are float32 (∇E has the candidate's dtype, whatever the matmuls ran in); the
task losses cast logits to float32 (`ebt.tasks`).
"""

from __future__ import annotations

import contextlib

import torch

from ebt.checks import check_choice
from ebt.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, name: str = "train.precision",
                    field: str = "precision") -> None:
    """ConfigError unless `precision` is one of PRECISIONS and runs on `device` (fp16 needs CUDA:
    CPU float16 matmuls are slow and loss scaling exists for CUDA). `name`: how the message names
    the option ("train.precision"); `field`: the API field the error carries."""
    check_choice(name, precision, PRECISIONS, field=field)
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(f"{name} = 'fp16' needs a CUDA device (float16 autocast is for CUDA, with loss scaling in "
                          f"training) and the device is {torch.device(device)}; use 'bf16' on the CPU, or 'fp32'",
                          field=field)


def autocast(precision: str, device: torch.device):
    """A context manager running its body at `precision` on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler for `device`: dynamic loss scaling under fp16; for fp32 and bf16, which need
    none, a disabled one, whose methods do nothing (scale returns the loss, step is optimizer.step)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
