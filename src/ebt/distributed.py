"""Process groups for multi-process training under `torchrun` (DDP).

`torchrun --nproc_per_node N -m ebt.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them training runs as one process. CPU runs use the gloo backend, CUDA runs NCCL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_request: str) -> Distributed:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if not dist.is_initialized():
        use_nccl = device_request != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(d: Distributed, device: torch.device) -> None:
    """Wait until every process has arrived (one all-reduce on `device`; nothing with one process)."""
    if d.enabled:
        arrived = torch.zeros(1, device=device)
        dist.all_reduce(arrived)
        arrived.item()


def agree(finite: torch.Tensor, signum: int, d: Distributed | None) -> tuple[bool, int]:
    """Whether a step's loss and gradient norm are finite on every process, and the stop signal if
    one came to any: one device sync per step, and under torchrun one all-reduce, so every rank
    stops at the same step."""
    if d is None or not d.enabled:
        return bool(finite), signum
    flags = torch.stack(((~finite).long(), torch.tensor(signum, device=finite.device)))
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, signum = flags.tolist()
    return not bad, signum


def from_main(value: float, d: Distributed, device: torch.device) -> float:
    """The main process's `value` on every process (one broadcast under torchrun): what the main
    process alone computed (the validation loss) stops every rank alike."""
    if not d.enabled:
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared.item())


def teardown(d: Distributed) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(request: str, d: Distributed) -> tuple[torch.device, str]:
    """The one place a device is chosen; returns it and the reason, which the trainer prints."""
    if request == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", d.local_rank), "auto: CUDA is available"
        return torch.device("cpu"), "auto: no CUDA device found"
    from ebt.errors import ConfigError

    try:
        device = torch.device(request)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ConfigError(f"device {request!r} is not allowed; it must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {request!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
    return device, "requested"
