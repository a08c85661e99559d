"""Files written atomically and read without trusting them; no torch, so anything may use it.

- `atomic_write`: a temporary file in the same directory, renamed into place, with the mode a
  plain `open()` would give (0o666 less the umask).
- `read_text`, `read_json`: a damaged file is a CheckpointError naming it.
- `standard_json`: JSON every parser reads (NaN and ±Infinity written as null).
- `DirectoryLock`: a directory's one writer, for the life of the command that writes it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see DirectoryLock)
    fcntl = None

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


class DirectoryLock:
    """The one process allowed to write directory `path` (a run, a sweep, a prepared corpus, an
    export): an exclusive advisory lock (`fcntl.flock`) on the file `.NAME.lock` beside it.

    Taken before anything slow and held for the life of the command; the operating system drops
    it when the process ends, however it ends, so a crash (SIGKILL, the OOM killer) never leaves
    a stale lock: the file may stay, but nothing holds it. The lock file sits beside the directory
    rather than in it, so it also guards a directory that does not exist yet or is replaced by a
    rename (`ebt prepare-data`), and a run directory holds only the run's files. Paths are resolved
    first: two spellings of one directory (a symbolic link, `./`) take the same lock. Where the
    parent cannot be written (a mount point) and the directory exists, the lock file is
    `.ebt.lock` inside it.

    A second writer gets CheckpointError (field `field`) naming the process that holds the lock:
    its pid, host, command line and start time. One process taking the same directory twice is
    refused too (a lock is per open file). Readers (`ebt eval`, `ebt.load`) take no lock: every
    file is replaced atomically. Without `fcntl` (Windows) there is no lock, and no refusal.

        with DirectoryLock(out):
            ...  # write into out
    """

    def __init__(self, path: str | Path, field: str = "out") -> None:
        self.path = Path(path).expanduser().resolve()
        # Beside the directory; inside it when it exists and its parent cannot be written (a mount
        # point, a scratch folder handed out by the admin). The rule gives every process the same file.
        inside = self.path.is_dir() and not os.access(self.path.parent, os.W_OK)
        self.file = self.path / ".ebt.lock" if inside else self.path.parent / f".{self.path.name}.lock"
        self.field, self.fd = field, None
        self.made: list[Path] = []  # the folders above `path` that acquire created, deepest first

    def acquire(self) -> "DirectoryLock":
        """Take the lock; CheckpointError when another process holds it."""
        if fcntl is None or self.fd is not None:
            return self
        self.made = [p for p in (self.file.parent, *self.file.parent.parents) if not p.exists()]
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create {self.file.parent}: {e.strerror}", field=self.field) from None
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise CheckpointError(f"cannot write {self.file} (the lock that makes {self.path} one process's): "
                                      f"{e.strerror}", field=self.field) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                mine = f"pid {os.getpid()} on {socket.gethostname()} " in holder
                who = "this very process" if mine else "another process"
                raise CheckpointError(f"{self.path} is being written by {who} ({holder}); one directory "
                                      f"has one writer: wait for that one to end, or choose another {self.field}",
                                      field=self.field) from None
            # The file may have been removed (and made anew) by the holder releasing it while we
            # opened it: a lock on a removed file guards nothing, so take the one now there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove its file (once; later calls do nothing)."""
        if self.fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.file)):
                self.file.unlink()  # while still held: whoever opens it next re-checks (acquire)
        except OSError:
            pass
        fd, self.fd = self.fd, None
        os.close(fd)  # closing drops the flock
        for folder in self.made:  # a command that wrote nothing leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """Who holds a lock, from what it wrote into the lock file: "pid P on HOST since T: COMMAND"."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", errors="replace") or "{}")
        return (f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
                if isinstance(holder, dict) else "a process that wrote no details")
    except (OSError, ValueError, KeyError):
        return "a process that has not written its details yet"
