"""A run's data: where its batches come from, how it is validated, and what it saves with the run.

The trainer talks to a task's data object and never sees text, images or frames:
  summary                       one line for the log
  overrides                     config fields the data fixes, e.g. {"text.vocab_size": "256"},
                                and a corpus path resolved to an absolute one; one given by hand
                                with another value is refused (`ebt.train`)
  unused                        config fields this data leaves unused, by key, with why (a
                                prepared corpus's split: {"data.validation_fraction": "..."});
                                one given by hand is refused, not recorded as if applied
  training_batches(batch_size, seed, rank, world_size, micro_batches)
                                a `TrainingBatches`: for each optimizer step this process's
                                micro-batches (`Batch`: data and one seed per example) of the
                                global batch, the same whatever the number of processes;
                                state_dict()/load_state_dict()
  split(batch)                  (model input x, targets) of a batch, on the batch's device
  unit, count(targets)          what training speed is counted in ("tokens", "frames", "images")
                                and how many of them a batch's targets hold
  validate(model, batch_size=, max_examples=, device=)
                                a dict of metrics with at least "loss"; max_examples counts
                                windows (text), images or clips: the one validation budget.
                                Text adds "window_losses" (a list, each window's mean loss),
                                which the trainer keeps in metrics.jsonl for scaling fits
  fingerprint                   what identifies the data (a hash of its content), saved as
                                data.json so that a later command finds the same data
  save(out)                     what the run directory needs besides weights (text: tokenizer.json;
                                video: encoder.safetensors), and data.json

`load_data(config, run_dir)` builds one for a run; with `run_dir` (resume, eval) it reuses the
saved tokenizer or frame encoder and checks the data against the saved fingerprint; a new run
with train.init (fine-tuning) reuses the initial run's. `load_artifacts` / `save_artifacts` read
and write those files alone, for a trained model (`ebt.load_run`, `save_pretrained`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebt.checkpoint import ENCODER, TOKENIZER
from ebt.config import RunConfig
from ebt.errors import CheckpointError, ConfigError
from ebt.memory import naming
from ebt.rundata import image, text, video
from ebt.rundata.fingerprint import check_fingerprint, resolve_source

TASK_DATA = {"text": text, "image": image, "video": video}  # model.task → its module

__all__ = ["load_data", "load_artifacts", "save_artifacts", "resolve_source", "with_data_overrides"]

# Fields the data sets (0 = unset); a different value given by hand is refused, not overwritten.
SET_BY_THE_DATA = ("text.vocab_size", "video.latent_dim")


def load_data(config: RunConfig, run_dir: Path | None = None):
    """The task's data for a run; `run_dir` (on resume) reuses the artifacts saved there and
    refuses data that differs from what the run trained on (DataError naming both). A new run
    started from another's weights (train.init) reuses that run's artifacts (its tokenizer)."""
    init = Path(config.train.init) if config.train.init and run_dir is None else None
    module = TASK_DATA[config.model.task]
    sizes = {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in module.SIZES}
    with naming(f"loading the {config.model.task} data", sizes):
        data = module.load_data(config, run_dir, init)
    if run_dir is not None:
        check_fingerprint(run_dir, data.fingerprint)
    return data


def with_data_overrides(config: RunConfig, data, given: frozenset[str] = frozenset()) -> RunConfig:
    """`config` with the fields the data fixes (`data.overrides`); ConfigError for one given by hand
    (a key of `given`, or one of SET_BY_THE_DATA set) with another value, or for a key of `given`
    that the data leaves unused (`data.unused`)."""
    for key, why in data.unused.items():
        if key in given:
            raise ConfigError(f"{key} does not apply to this run: {why}; drop the override", field=key)
    for key, value in data.overrides.items():
        section, name = key.split(".")
        now = getattr(getattr(config, section), name)
        if key != "data.corpus" and (key in given or key in SET_BY_THE_DATA and now != 0) and str(now) != value:
            raise ConfigError(f"{key} comes from the data ({value}); {now} was given: drop the override", field=key)
        config = config.override(key, value)
    return config


def load_artifacts(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """What a saved run needs besides its weights, by name (text: {"tokenizer"}; video:
    {"frame_encoder"}; images: {}), checked against its config."""
    if config.model.task == "text":
        return {"tokenizer": text.load_tokenizer(run_dir, config.text.vocab_size, config.text.tokenizer)}
    if config.model.task == "video":
        return {"frame_encoder": video.load_encoder(run_dir, config.video.latent_dim, config.video.frame_encoder)}
    return {}


def save_artifacts(config: RunConfig, out: Path, tokenizer: Any = None, frame_encoder: Any = None) -> list[str]:
    """Write into directory `out` what `load_artifacts` reads back (text: tokenizer.json; video:
    encoder.safetensors; images: nothing), atomically; returns the file names written. Raises
    CheckpointError when the task's artifact is not given."""
    given = {"text": ("tokenizer", tokenizer), "video": ("frame_encoder", frame_encoder)}.get(config.model.task)
    if given is None:
        return []
    name, artifact = given
    if artifact is None:
        raise CheckpointError(f"a {config.model.task} run needs its {name} to be saved; none was given")
    if config.model.task == "text":
        text.save_tokenizer(out, artifact)
        return [TOKENIZER]
    video.save_encoder(out, artifact)
    return [ENCODER]
