"""A run's data: where its batches come from, how it is validated, and what it saves with the run.

The trainer talks to a task's data object and never sees text, images or frames:
  summary                       one line for the log
  overrides                     config fields the data fixes, e.g. {"text.vocab_size": "256"},
                                and a corpus path resolved to an absolute one
  training_batches(batch_size, seed, rank, world_size)
                                endless, seeded batches with state_dict()/load_state_dict()
  split(batch)                  (model input x, targets) of a batch, on the batch's device
  unit, count(targets)          what training speed is counted in ("tokens", "frames", "images")
                                and how many of them a batch's targets hold
  validate(model, batch_size=, max_examples=, device=)
                                a dict of metrics with at least "loss"; max_examples counts
                                windows (text), images or clips: the one validation budget
  fingerprint                   what identifies the data (a hash of its content), saved as
                                data.json so that a later command finds the same data
  save(out)                     what the run directory needs besides weights (text: tokenizer.json;
                                video: encoder.safetensors), and data.json

`load_data(config, run_dir)` builds one for a run; with `run_dir` (resume, eval) it reuses the
saved tokenizer or frame encoder and checks the data against the saved fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from ebt.checkpoint import DATA, atomic_write, read_json
from ebt.config import RunConfig
from ebt.errors import DataError

def load_data(config: RunConfig, run_dir: Path | None = None):
    """The task's data for a run; `run_dir` (on resume) reuses the artifacts saved there and
    refuses data that differs from what the run trained on (DataError naming both)."""
    from ebt.rundata import image, text, video

    module = {"text": text, "image": image, "video": video}[config.model.task]
    data = module.load_data(config, run_dir)
    if run_dir is not None:
        check_fingerprint(run_dir, data.fingerprint)
    return data


def load_artifacts(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """What a saved run needs besides its weights, by name (text: {"tokenizer"}; video:
    {"frame_encoder"}; images: {}), checked against its config."""
    from ebt.rundata import text, video

    if config.model.task == "text":
        return {"tokenizer": text.load_tokenizer(run_dir, config.text.vocab_size)}
    if config.model.task == "video":
        return {"frame_encoder": video.load_encoder(run_dir, config.video.latent_dim)}
    return {}


def resolve_source(source: str) -> str:
    """A data source's name as it is; a path made absolute, so the run finds it from any directory."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


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
        from ebt.errors import CheckpointError

        raise CheckpointError(f"{path} is not a data fingerprint (expected an object with 'source' and 'sha256')")
    if saved["sha256"] != fingerprint["sha256"]:
        raise DataError(
            f"the data has changed since {run_dir} was trained: it trained on {saved.get('source')!r} "
            f"(sha256 {saved['sha256'][:12]}…), and {fingerprint['source']!r} now holds different data "
            f"(sha256 {fingerprint['sha256'][:12]}…); restore the original data or start a new run"
        )
