"""Memory a run needs, checked before it is allocated: a size that passes the range checks but
cannot fit (model.dim = 100000, video.clips = 1e9) is one line naming it, not the allocator's
error or, worse, the kernel's OOM killer (an allocation the kernel grants lazily is killed only
when it is written).

Each check compares a lower bound of what an allocation needs with the memory of the device it
goes to: the CPU's physical memory (or its cgroup's limit, when lower), or a CUDA device's total
memory. A lower bound never refuses what would fit; what it does not foresee (activations, a
batch of a command) is named where the allocation fails (`naming`).

Users: `ebt.models` (the weights, before a model is built), `ebt.objectives` (what training
holds: weights, gradients, AdamW's moments, a batch, the replay buffer), `ebt.rundata` (the
data a run generates or reads).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from ebt.errors import ConfigError

_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def device_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes of memory `device` has in all (not what is free now: other processes come and go);
    None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = None
    for limit in _CGROUP_LIMITS:  # a container's share, when it has one below the machine's
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def size(n: float) -> str:
    """Bytes for a reader: '512 MB', '3.7 TB' (powers of 1000, as allocators and disks say)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def check_fits(need: int, device: torch.device | str, what: str, field: str | None = None,
               fix: str | None = None) -> None:
    """ConfigError when `need` bytes (a lower bound of `what`, which names the sizes that set it)
    exceed the memory of `device`; its `field` is the option to lower, and the message ends with
    `fix` (default: "lower FIELD")."""
    have = device_memory(device)
    if have is not None and need > have:
        where = "this machine" if torch.device(device).type == "cpu" else str(device)
        fix = fix or (f"lower {field}" if field else None)
        raise ConfigError(f"{what} needs at least {size(need)} of memory, more than the {size(have)} {where} has"
                          + (f"; {fix}" if fix else ""), field=field)


def out_of_memory(error: BaseException) -> str | None:
    """The allocator's words when `error` is an allocation that failed (CPU or CUDA, torch or
    numpy): "tried to allocate 40000000000 bytes", "Unable to allocate 19.1 GiB", …; else None."""
    text = str(error)
    if isinstance(error, MemoryError):  # numpy: "Unable to allocate 238. TiB for an array with shape ..."
        return text.split(" for an array")[0] or "out of memory"
    cuda = isinstance(error, torch.cuda.OutOfMemoryError)  # "CUDA out of memory. Tried to allocate 20.00 GiB ..."
    if not (cuda or isinstance(error, RuntimeError) and "can't allocate memory" in text):  # torch's CPU allocator
        return None
    tried = re.search(r"[Tt]ried to allocate [\d.]+ \w+", text)
    words = f"t{tried.group(0)[1:]}" if tried else "out of memory"
    return f"CUDA out of memory; {words}" if cuda else words


@contextlib.contextmanager
def naming(what: str, sizes: dict[str, Any]) -> Iterator[None]:
    """An allocation that fails inside is a ConfigError naming `what` was being made and the
    `sizes` (option → value) that set it; its field the size, when there is one."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        words = out_of_memory(e)
        if words is None:
            raise
        listed = ", ".join(f"{k} = {v!r}" for k, v in sizes.items())
        raise ConfigError(f"{what} ran out of memory ({words}) at {listed}; lower one of them",
                          field=next(iter(sizes)) if len(sizes) == 1 else None) from None
