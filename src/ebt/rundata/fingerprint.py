"""What identifies a run's data: its source and a hash of its content, saved as data.json so that
a later command (eval, --resume) from any directory finds the same data or says it changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from ebt.checkpoint import DATA
from ebt.data.corpus import KNOWN_CORPORA
from ebt.data.images import NAMED as NAMED_IMAGES
from ebt.files import atomic_write, read_json
from ebt.errors import CheckpointError, DataError


def resolve_source(source: str) -> str:
    """A data source's name as it is; a path made absolute, so the run finds it from any directory.
    A known name stays a name even where a file of that name exists, as the loaders read it."""
    path = Path(source).expanduser()
    return str(path.resolve()) if source not in (*KNOWN_CORPORA, *NAMED_IMAGES) and path.exists() else source


def content_hash(parts: Iterable[bytes]) -> str:
    """sha256 of a sequence of byte strings, each length-prefixed (so ["ab", "c"] ≠ ["a", "bc"])."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def save_fingerprint(out: Path, source: str, sha256: str) -> None:
    """data.json: where the run's data came from and the hash of its content."""
    atomic_write(out / DATA, lambda p: p.write_text(json.dumps({"source": source, "sha256": sha256}, indent=2) + "\n"))


def check_fingerprint(run_dir: Path, fingerprint: dict[str, str]) -> None:
    """Raise DataError when the data found now is not what run_dir recorded (runs written before
    data.json existed are not checked)."""
    path = Path(run_dir) / DATA
    if not path.exists():
        return
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("sha256"), str):
        raise CheckpointError(f"{path} is not a data fingerprint (expected an object with 'source' and 'sha256')")
    if saved["sha256"] != fingerprint["sha256"]:
        raise DataError(
            f"the data has changed since {run_dir} was trained: it trained on {saved.get('source')!r} "
            f"(sha256 {saved['sha256'][:12]}…), and {fingerprint['source']!r} now holds different data "
            f"(sha256 {fingerprint['sha256'][:12]}…); restore the original data or start a new run"
        )
