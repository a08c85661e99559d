"""Load a trained run: its config, the model with its weights, and the task's saved files.

    run = ebt.load_run("runs/ebt")     # Run(config, model, step, path, tokenizer, frame_encoder)
    model = ebt.load("runs/ebt")       # just the model, in eval mode; model.run is its Run
    model = ebt.load("user/ebt-tiny")  # a Hub id: fetched into the Hugging Face cache (`ebt.hub`)
    model.save_pretrained("export")    # a loadable run directory with a model card; push_to_hub(id)

Every model loaded here is built as its kind (an AutoregressiveEBT, ...) with `Pretrained`, the
huggingface_hub ModelHubMixin, mixed in (`PRETRAINED`, handed to `build_model`): the Hub methods
live here, above the models, which never see files or runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ebt import hub
from ebt.baselines.dit import DiT
from ebt.baselines.transformer import TransformerPP
from ebt.checkpoint import (CONFIG, WEIGHTS, Replaced, check_trained_with, check_weights, load_config,
                            migrate_weights, snapshot_path, snapshot_steps, weights_step)
from ebt.config import RunConfig
from ebt.energy import AutoregressiveEBT, BidirectionalEBT
from ebt.errors import CheckpointError
from ebt.files import DirectoryLock
from ebt.models import build_model
from ebt.rundata import load_artifacts
from ebt.sharded import consolidate, newest_shards, shard_steps, shards_path


@dataclass
class Run:
    """A trained run. `tokenizer` is set for text runs, `frame_encoder` for video runs."""

    config: RunConfig
    model: nn.Module
    step: int  # optimizer steps the weights have had
    path: Path
    tokenizer: Any = None
    frame_encoder: Any = None


def load_run(path: str | Path, map_location: str | torch.device = "cpu", step: int | None = None,
             revision: str | None = None) -> Run:
    """The run in directory `path`, its model on `map_location` in eval mode: its last weights, or
    with `step` those kept at that step (train.keep_checkpoints: checkpoints/step-N.safetensors).

    `path` may also be a Hub id: a string `owner/name` that is no local path is fetched from the
    Hugging Face Hub at `revision` (default main) into its cache, or found there when
    HF_HUB_OFFLINE=1 (`ebt.hub.local_directory`); `run.path` is then the cached snapshot. The
    model is a `Pretrained` (save_pretrained, push_to_hub) whose `run` is the returned Run.

    Raises CheckpointError naming the file when a file is missing, damaged or does not match the
    config (a config.json of an earlier version is migrated, not refused), and naming the id when
    a Hub model cannot be had (offline and not cached, no such repository or revision)."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"step = {step!r} is not a training step; it must be an integer ≥ 0")
    path = hub.local_directory(path, revision, step=step)
    config = load_config(path)
    weights = path / WEIGHTS if step is None else snapshot_path(path, step)
    if step is not None and not weights.is_file() and weights_step(path / WEIGHTS) == step:
        weights = path / WEIGHTS  # the last weights are that step's
    if step is None:  # a sharded run's last weights, unless model.safetensors is as new (ebt.sharded)
        shards = newest_shards(path)
    else:
        shards = shards_path(path, step) if not weights.is_file() and step in shard_steps(path) else None
    if shards is None and not weights.is_file():
        _no_weights(path, step)
    artifacts = load_artifacts(config, path)
    if shards is not None:
        weights, (state, metadata) = shards, consolidate(shards)  # full tensors, in this process
        state = {k: v.to(map_location) for k, v in state.items()}
    else:
        try:
            state = load_file(str(weights), device=str(map_location))
            with safe_open(str(weights), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{weights} is corrupt or unreadable: {e}") from None
    check_weights(state, weights)
    check_trained_with(metadata, config, weights, path / CONFIG)
    model = build_model(config, PRETRAINED)  # its kind, with the Hub methods
    expected = model.state_dict()
    state = migrate_weights(state, expected)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights} does not match {path / CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()  # buffers (rotary tables) follow the weights
    step = metadata.get("step", "0")
    if not step.isdigit():
        raise CheckpointError(f"{weights} has metadata step = {step!r}; it must be a count of training steps")
    run = Run(config, model, int(step), path, **artifacts)
    model.run = run
    return run


def _no_weights(path: Path, step: int | None) -> None:
    """CheckpointError: run directory `path` has no weights (of `step`), and why."""
    if step is not None:
        kept = sorted(set(snapshot_steps(path)) | set(shard_steps(path)))
        raise CheckpointError(f"run directory {str(path)!r} keeps no weights of step {step}; "
                              + (f"it keeps steps {', '.join(map(str, kept))}" if kept else
                                 "it keeps none (train with --train.keep_checkpoints=true)"))
    if (path / Replaced.ASIDE).is_dir():  # a live --overwrite (a killed one was repaired by load_config)
        raise CheckpointError(f"run directory {str(path)!r} is being replaced (--overwrite) by a run that has "
                              f"not reached its first checkpoint; the run it replaces is kept in "
                              f"{path / Replaced.ASIDE} until then, and comes back if the new run stops first")
    raise CheckpointError(f"run directory {str(path)!r} has no {WEIGHTS} (was training stopped before the first checkpoint?)")


def load(path: str | Path, map_location: str | torch.device = "cpu", revision: str | None = None) -> nn.Module:
    """The trained model of a run directory or Hub id (an EBT, a Transformer++ or a DiT), in eval
    mode; `model.run` is its Run (config, step, tokenizer or frame encoder). See `load_run`."""
    return load_run(path, map_location, revision=revision).model


class Pretrained(ModelHubMixin, library_name=hub.LIBRARY, license=hub.LICENSE, paper_url=hub.PAPER_URL,
                 tags=["energy-based-transformers", "pytorch"]):
    """The Hub methods of a loaded model (huggingface_hub's ModelHubMixin, written for our files):

        model.save_pretrained(dir)                  # an exported run directory (`ebt.hub`): ebt.load reads it
        model.push_to_hub("user/ebt-tiny")           # the same files, uploaded in one commit
        Pretrained.from_pretrained("user/ebt-tiny")  # = ebt.load; a kind's class also checks the kind

    `run` is the Run the model was loaded with: its config, step and tokenizer or frame encoder
    are what save_pretrained writes beside the model's current weights."""

    run: Run

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict[str, Any] | None = None,
                        **push_to_hub_kwargs) -> str | None:
        """Write the model into directory `save_directory` as an exported run directory (config.json,
        model.safetensors with the run's step, tokenizer.json or encoder.safetensors, data.json and
        metrics.jsonl when the run has them, README.md: the model card), which `ebt.load` and
        `ebt.load_run` read back. With `push_to_hub`, then upload it to `repo_id` (default: the
        directory's name). Returns the commit URL when pushed, else None.

        Files of the export are overwritten and the export's files this model does not have
        (another task's artifact) removed; other files are left alone; config.json is written last, so
        an export cut short (even by a kill) is no loadable run, and the next save_pretrained there
        completes it. Raises CheckpointError for a file or a training run (train_state.pt,
        checkpoints/) at `save_directory`, for a directory another process is writing
        (`ebt.files.DirectoryLock`), and for `config`:
        the saved config is always the run's (`model.run.config`)."""
        if config is not None:
            raise CheckpointError("save_pretrained writes the model's own RunConfig (model.run.config); "
                                  "config= is not accepted")
        out = Path(save_directory)
        with DirectoryLock(out, field="save_directory"):  # one writer, as for a run
            hub.check_destination(out)
            self._save_pretrained(out, **(model_card_kwargs or {}))
        if push_to_hub:
            return self.push_to_hub(repo_id or out.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, **model_card_kwargs) -> None:
        run = self._run()
        artifacts = {"tokenizer": run.tokenizer, "frame_encoder": run.frame_encoder}
        card = self.generate_model_card(name=Path(save_directory).name, **model_card_kwargs)
        hub.export(save_directory, run.config, self, run.step, artifacts, run.path, str(card))

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs) -> str:
        """Upload the model's exported directory (see save_pretrained) to Hub repository `repo_id`,
        creating it if needed, in one commit; returns the commit's URL. The other keywords are
        ModelHubMixin.push_to_hub's (private, token, branch, create_pr, commit_message, ...); its
        errors (not logged in, no access) are huggingface_hub's."""
        card = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def generate_model_card(self, name: str | None = None, repo_id: str | None = None) -> ModelCard:
        """The model card (`ebt.hub.model_card`) titled `name` (default: the repository's or the run's
        name), whose loading example names `repo_id` when given (an `owner/name` Hub id)."""
        run = self._run()
        title = repo_id.split("/")[-1] if repo_id else name or run.path.name
        load_as = repo_id if repo_id and "/" in repo_id else f"OWNER/{title}"
        data = hub.card_data(self._hub_mixin_info.model_card_data, run.config)
        return hub.model_card(run.config, self, run.step, hub.last_validation(run.path, run.step), data, title,
                              load_as)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> Pretrained:
        """The model of a run directory or Hub id, as `ebt.load` (the Hub keywords are
        snapshot_download's). On a kind's class (`type(model).from_pretrained`), a run of another
        kind is a CheckpointError naming both."""
        path = hub.local_directory(pretrained_model_name_or_path, revision, cache_dir=cache_dir, token=token,
                                   force_download=force_download, local_files_only=local_files_only)
        model = load_run(path, map_location).model
        if not isinstance(model, cls):
            raise CheckpointError(f"{str(pretrained_model_name_or_path)!r} holds a {type(model).__name__} "
                                  f"(model.kind = {model.run.config.model.kind!r}), not a {cls.__name__}; "
                                  "load it with ebt.load or Pretrained.from_pretrained")
        return model

    def _run(self) -> Run:
        run = self.__dict__.get("run")
        if run is None:
            raise CheckpointError(f"this {type(self).__name__} has no run (config, step, tokenizer) to save with "
                                  "it; models loaded with ebt.load or from_pretrained have one")
        return run


class PretrainedAutoregressiveEBT(AutoregressiveEBT, Pretrained):
    """A loaded autoregressive EBT (text or video) with the Hub methods."""


class PretrainedBidirectionalEBT(BidirectionalEBT, Pretrained):
    """A loaded image EBT with the Hub methods."""


class PretrainedTransformerPP(TransformerPP, Pretrained):
    """A loaded Transformer++ (text or video) with the Hub methods."""


class PretrainedDiT(DiT, Pretrained):
    """A loaded DiT with the Hub methods."""


# Each class build_model makes → its loaded form.
PRETRAINED = {c.__bases__[0]: c for c in (PretrainedAutoregressiveEBT, PretrainedBidirectionalEBT,
                                          PretrainedTransformerPP, PretrainedDiT)}
