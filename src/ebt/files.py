"""Files written atomically and read without trusting them; no torch, so anything may use it.

- `atomic_write`: a temporary file in the same directory, renamed into place, with the mode a
  plain `open()` would give (0o666 less the umask).
- `read_text`, `read_json`: a damaged file is a CheckpointError naming it.
- `standard_json`: JSON every parser reads (NaN and ±Infinity written as null).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable

from ebt.errors import CheckpointError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` via `write(tmp)` to a temporary file in the same directory, then rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # The mode a plain open() gives, 0o666 trimmed by the umask, read off a file created with it
    # (thread-safe, unlike os.umask). mkstemp's 0600, and safetensors' own, would hide run files
    # from the group whatever the umask. O_EXCL: never an existing file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: Path) -> str:
    """The UTF-8 text of a run file; an unreadable, empty or non-UTF-8 file is a CheckpointError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror}") from None
    if not data.strip():
        raise CheckpointError(f"{path} is empty; the run directory is damaged (an interrupted copy?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02X} at offset {e.start}); "
                              "the file is damaged") from None


def read_json(path: Path) -> Any:
    """A JSON file's content; CheckpointError naming the file when it is unreadable or not JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged or truncated") from None


def standard_json(value: Any, **kwargs) -> str:
    """json.dumps that every JSON parser reads: NaN and ±Infinity (not JSON) are written as null,
    and allow_nan=False makes any that slip through raise rather than write a bad file."""
    return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
