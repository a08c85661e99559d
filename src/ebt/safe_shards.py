"""Reading torch.distributed.checkpoint (DCP) files without running code from them (`ebt.sharded`).

Full checkpoints load with safetensors and `torch.load(weights_only=True)`, which run no code from
the file. DCP's own reader does not hold to that: its `.metadata` is a plain pickle, and the
non-tensor items of the shards (the optimizer's hyperparameters) are `torch.load`ed with
`weights_only=False`. So a run directory from elsewhere could run code when loaded. Here the
`.metadata` is first unpickled with only what DCP's metadata is made of allowed
(`check_metadata_pickle`), and a load planner reads a non-tensor item only once
`torch.load(weights_only=True)` accepts its bytes (`checked_planner`).
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ebt.errors import CheckpointError


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's .metadata allowing only what it is made of (module docstring)."""

    TORCH_KINDS = (torch.dtype, torch.layout, torch.memory_format)
    NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("torch.distributed.checkpoint.filesystem",
             "_StorageInfo"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
             ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name) if module.startswith(("torch", "pathlib", "collections")) else None
        if (module, name) in self.NAMES or (module == "torch" and isinstance(found, self.TORCH_KINDS)) or (
                module == "torch.distributed.checkpoint.metadata" and isinstance(found, type)
                and found.__module__ == module):
            return found
        raise _Refused(f"it refers to {module}.{name}, which DCP's metadata does not hold")


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than what DCP's metadata is made of."""


def check_metadata_pickle(file: Path) -> None:
    """CheckpointError naming `file` unless it unpickles with `_MetadataUnpickler` (nothing run)."""
    try:
        with open(file, "rb") as f:
            _MetadataUnpickler(f).load()
    except _Refused as e:
        raise CheckpointError(f"{file} is not a checkpoint's metadata that can be read safely ({e}); refusing to "
                              "load it: it may run code") from None
    except Exception as e:  # noqa: BLE001  a truncated pickle raises whatever its last opcode does
        raise CheckpointError(f"{file} is damaged or cut short ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                              "the shards beside it cannot be read") from None


def checked_planner():
    """DCP's default load planner, reading a non-tensor item only once `torch.load(weights_only=True)`
    accepts its bytes (CheckpointError otherwise)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _CheckedPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                torch.load(value, weights_only=True)
            except Exception as e:  # noqa: BLE001
                found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
                cause = f"it refers to {found.group(1)}" if found else type(e).__name__
                raise CheckpointError(f"the shards' item {read_item.dest_index.fqn!r} is not plain data ({cause}); "
                                      "refusing to load it: it may run code") from None
            value.seek(0)
            super().load_bytes(read_item, value)

    return _CheckedPlanner()
