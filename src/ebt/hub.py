"""The Hugging Face Hub side of a trained model: Hub ids, exported directories and model cards.

    model = ebt.load("user/ebt-tiny")          # a run directory, or a Hub id fetched into the HF cache
    model.save_pretrained("export/ebt-tiny")   # a loadable run directory with a README.md model card
    model.push_to_hub("user/ebt-tiny")         # the same files, uploaded to the Hub in one commit

An exported directory is a run directory (`ebt.checkpoint`) without its training state:

    config.json         the RunConfig, as the run saved it
    model.safetensors   the weights, with the step in its metadata
    tokenizer.json      text runs; encoder.safetensors: video runs (`ebt.rundata.save_artifacts`)
    data.json           where the run's data came from and its hash (when the source run has one)
    metrics.jsonl       the source run's log (when it has one): the model card's figures come from it
    README.md           the model card: Hub metadata, what the model is, how it was trained, its
                        last validation, how to load it

train_state.pt, checkpoints/ and shards/ are never exported: they resume training, and `ebt.load` does
not need them. The methods themselves (`save_pretrained`, `from_pretrained`, `push_to_hub`) are
`ebt.runs.Pretrained`, the huggingface_hub ModelHubMixin of every model `ebt.load` returns; this
module knows files, configs and the Hub, not how a model is loaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.utils import validate_repo_id
from torch import nn

from ebt.checkpoint import (CHECKPOINTS, CONFIG, DATA, ENCODER, METRICS, SHARDS, TOKENIZER, TRAIN_STATE, WEIGHTS,
                            load_config, save_config, save_weights, snapshot_path, validation_rows)
from ebt.config import RunConfig
from ebt.errors import CheckpointError
from ebt.files import atomic_write
from ebt.models import count_parameters
from ebt.rundata import save_artifacts

LIBRARY = "energy-based-transformers"  # the card's library_name: the name of this package
LICENSE = "mit"  # this package's licence (pyproject.toml)
PAPER_URL = "https://arxiv.org/abs/2507.02092"
CARD = "README.md"
# Every file save_pretrained may write. An export overwrites these in its directory and removes
# those it does not write this time (a text export's tokenizer.json under a video export); other
# files are left alone. config.json is written last.
EXPORTED = (WEIGHTS, TOKENIZER, ENCODER, DATA, METRICS, CARD, CONFIG)
# The files of a run that only training needs: a directory holding one is a training run.
TRAINING_ONLY = (TRAIN_STATE, CHECKPOINTS, SHARDS)

KINDS = {"ebt": "Energy-Based Transformer (EBT)", "transformer": "Transformer++ (the paper's autoregressive baseline)",
         "dit": "Diffusion Transformer (DiT, the paper's image-denoising baseline)"}
TASKS = {"text": "next-token prediction on text", "image": "image denoising", "video": "next-frame prediction on video"}
PIPELINES = {"text": "text-generation", "image": "image-to-image"}  # the Hub's pipeline_tag, where one fits
# What a validation row holds besides metrics; window_losses (text) is a list, for scaling fits.
NOT_METRICS = ("step", "split", "train_s", "wall_s")


def is_repo_id(name: str) -> bool:
    """True for a string of the form `owner/name` that the Hub accepts as a model id."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def _offline() -> bool:
    """HF_HUB_OFFLINE as it is now: huggingface_hub reads it once, when it is first imported."""
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def local_directory(path: str | Path, revision: str | None = None, *, step: int | None = None,
                    cache_dir: str | Path | None = None, token: str | bool | None = None,
                    force_download: bool = False, local_files_only: bool = False) -> Path:
    """The local directory of a run: `path` itself when it exists or is not a Hub id; a string of
    the form `owner/name` that is not a local path is a Hub model, fetched with
    `huggingface_hub.snapshot_download` into the Hugging Face cache (or found there) at `revision`
    (a branch, tag or commit; default main). Only the files loading reads are fetched (with
    `step`, that step's checkpoints/step-N.safetensors too).

    With HF_HUB_OFFLINE=1 (read at each call) or `local_files_only`, only the cache is used.
    Raises CheckpointError naming the id when the model cannot be had: offline and not cached, no
    such repository or revision, the Hub unreachable, or a repository that holds no ebt run; and
    for a `revision` given with a local directory. A missing directory that is no Hub id is left
    to the loader, whose error names it."""
    if not (isinstance(path, str) and is_repo_id(path) and not Path(path).exists()):
        if revision is not None:
            raise CheckpointError(f"revision = {revision!r} applies to a Hub id; {str(path)!r} is a local path")
        return Path(path)
    offline = local_files_only or _offline()
    files = [CONFIG, WEIGHTS, TOKENIZER, ENCODER, DATA, METRICS, CARD]
    if step is not None:
        files.append(snapshot_path(Path(), step).as_posix())
    at = f" at revision {revision!r}" if revision is not None else ""
    try:
        folder = Path(snapshot_download(path, revision=revision, cache_dir=cache_dir, token=token,
                                        force_download=force_download, local_files_only=offline,
                                        allow_patterns=files))
    except RevisionNotFoundError:
        raise CheckpointError(f"the Hub model {path!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"there is no run directory {path!r} here, and no model repository {path!r} on the "
                              "Hugging Face Hub (a private or gated one needs a token: `hf auth login`)") from None
    except LocalEntryNotFoundError as e:
        if type(e) is not LocalEntryNotFoundError:  # IncompleteSnapshotError (huggingface_hub ≥ 1.x): a partial copy
            raise CheckpointError(f"the cached copy of the Hub model {path!r}{at} is incomplete: {e}") from None
        cache = cache_dir or constants.HF_HUB_CACHE
        if local_files_only:
            why = "local_files_only=True forbids downloading it"
        elif offline:
            why = "HF_HUB_OFFLINE=1 forbids downloading it (unset HF_HUB_OFFLINE to download it)"
        else:
            why = "the Hub could not be reached to download it (check the network connection)"
        raise CheckpointError(f"there is no run directory {path!r} here, and the Hub model {path!r}{at} is not in the "
                              f"Hugging Face cache ({cache}); {why}") from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"downloading the Hub model {path!r}{at} failed: {str(e).splitlines()[0]}") from None
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"the Hub model {path!r}{at} is not an ebt run: it has no {CONFIG} "
                              "(ebt writes one with model.save_pretrained or model.push_to_hub)")
    return folder


def check_destination(out: Path) -> None:
    """Refuse a destination save_pretrained must not write into: a file, or a training run (its
    train_state.pt would no longer match the weights written). Raises CheckpointError naming it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"save_pretrained writes a directory; {str(out)!r} is a file")
    training = [name for name in TRAINING_ONLY if (out / name).exists()]
    if training:
        raise CheckpointError(f"{str(out)!r} holds a training run ({', '.join(training)}); save_pretrained does not "
                              "write into one, since its training state would no longer match the weights: "
                              "choose a new or empty directory")
    # Anything else there must be an earlier export (hidden files, such as a clone's .git, aside):
    # a folder of the user's own files is not written over.
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    cut_short = CONFIG not in others and set(others) <= set(EXPORTED)  # an export killed before its config.json
    if others and not cut_short and not _is_export(out):
        raise CheckpointError(f"{str(out)!r} holds files that are not an export of a model ({', '.join(others[:4])}"
                              f"{', ...' if len(others) > 4 else ''}); save_pretrained writes only into a new or "
                              "empty directory or over an earlier export: choose another")


def _is_export(out: Path) -> bool:
    """Whether `out` holds a loadable export: our config.json and model.safetensors."""
    if not (out / WEIGHTS).is_file():
        return False
    try:
        load_config(out)
    except CheckpointError:
        return False
    return True


def export(out: Path, config: RunConfig, model: nn.Module, step: int, artifacts: dict[str, Any],
           source: Path | None, card: str) -> None:
    """Write an exported directory (the module docstring's files) into `out`: the model's weights
    at `step`, `config`, the task's `artifacts` (tokenizer / frame_encoder), data.json and
    metrics.jsonl copied from run directory `source` where it has them, and the model card text.

    Each file is written atomically; config.json is removed first and written last, so an export
    cut short is no loadable run. Call `check_destination(out)` first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)
    written = save_artifacts(config, out, **artifacts)
    save_weights(out, model, step, config=config)
    written.append(WEIGHTS)
    for name in (DATA, METRICS):
        file = source / name if source is not None else None
        if file is None or not file.is_file():
            continue
        if not (out / name).exists() or not os.path.samefile(file, out / name):
            atomic_write(out / name, lambda p, file=file: shutil.copyfile(file, p))
        written.append(name)
    atomic_write(out / CARD, lambda p: p.write_text(card, encoding="utf-8"))
    written.append(CARD)
    for name in EXPORTED:
        if name not in written and name != CONFIG:
            (out / name).unlink(missing_ok=True)  # left by an earlier export of another model
    save_config(out, config)


def last_validation(run_dir: Path | None, step: int) -> dict | None:
    """The last validation row of run directory `run_dir`'s metrics.jsonl at or before `step` (the
    weights' step: weights kept at an earlier step are not credited with a later validation), or None."""
    rows = validation_rows(run_dir) if run_dir is not None else {}
    steps = [s for s in rows if s <= step]
    return rows[max(steps)] if steps else None


def card_data(base: ModelCardData, config: RunConfig) -> ModelCardData:
    """The card's YAML metadata: the mixin's (library_name, license, tags) and the model's own tags."""
    data = ModelCardData(**base.to_dict())
    tags = set(data.tags or ()) | {config.model.kind, config.model.task}
    if config.model.kind == "ebt":
        tags.add("energy-based-model")
    data.tags = sorted(tags)
    data.pipeline_tag = PIPELINES.get(config.model.task)
    return data


def model_card(config: RunConfig, model: nn.Module, step: int, validation: dict | None,
               data: ModelCardData, name: str, load_as: str) -> ModelCard:
    """The model card of an export: YAML metadata `data`, then what the model is (kind, task,
    parameters, sizes, the paper), how it was trained (steps, batch, learning rate, data,
    tokenizer or encoder, the thinking recipe of an EBT), its last `validation` row (from the
    source run's metrics.jsonl; none: said so) and how to load it (`ebt.load(load_as)`)."""
    m, tr = config.model, config.train
    total, body = count_parameters(model, embeddings=True), count_parameters(model)
    sizes = [("kind", f"`{m.kind}`: {KINDS[m.kind]}"), ("task", f"`{m.task}`: {TASKS[m.task]}"),
             ("parameters", f"{total:,} ({body:,} without the embeddings and output maps)"),
             ("layers × width, heads", f"{m.n_layers} × {m.dim}, {m.n_heads} heads; SwiGLU width {m.ffn_width}")]
    if m.task == "text":
        sizes += [("context", f"{m.context_len} tokens"),
                  ("tokenizer", f"`{config.text.tokenizer}`, {config.text.vocab_size:,} tokens (tokenizer.json)")]
    elif m.task == "video":
        v = config.video
        sizes += [("context", f"{m.context_len} frames"),
                  ("frame encoder", f"`{v.frame_encoder}`, {v.latent_dim}-d latents (encoder.safetensors)")]
    else:
        i = config.image
        sizes += [("images", f"{i.image_size}×{i.image_size}, {i.channels} channel(s), {i.patch_size}×{i.patch_size} "
                             f"patches; trained at noise level λ = {i.noise_level:g}")]
    corpus = config.data.corpus
    if os.path.isabs(corpus):  # a local path says nothing to a reader elsewhere; its name may
        corpus = f"`{Path(corpus).name}` (a local corpus)"
    else:
        corpus = f"`{corpus}`"
    unit = {"text": "sequences", "image": "images", "video": "clips"}[m.task]
    stopped = "" if step == tr.steps else f" (these weights: step {step})"
    training = [("steps", f"{tr.steps:,}{stopped}"), ("batch", f"{tr.batch_size} {unit}"),
                ("learning rate", f"{tr.lr:g} peak, {tr.lr_schedule} schedule, {tr.warmup_fraction:.0%} warm-up, "
                                  f"weight decay {tr.weight_decay:g}"),
                ("precision", tr.precision), ("data", corpus + (f", {config.data.layout} windows"
                                                                        if m.task == "text" else ""))]
    if tr.init:  # fine-tuned: these steps came after another run's
        training.insert(0, ("started from", f"the weights of `{Path(tr.init).name}` (fine-tuning, `ebt finetune`)"))
    if m.kind == "ebt":
        training.append(("thinking", thinking_recipe(config, model)))
    article = "An" if KINDS[m.kind][0] in "AEIOU" else "A"
    lines = [f"# {name}", "",
             f"{article} {KINDS[m.kind]} for {TASKS[m.task]}, trained with `{LIBRARY}`, the PyTorch library of "
             f"*Energy-Based Transformers are Scalable Learners and Thinkers* (Gladstone et al., "
             f"[arXiv 2507.02092]({PAPER_URL})).", "", "## Model", "", *_table(sizes), "", "## Training", "",
             *_table(training), "", "## Evaluation", ""]
    if validation is None:
        lines.append("The source run's directory held no validation (metrics.jsonl).")
    else:
        metrics = [(k, _number(v)) for k, v in validation.items()
                   if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        lines += [f"The run's validation at step {validation['step']:,} (metrics.jsonl):", "",
                  *_table(metrics, ("metric", "value"))]
    artifact = {"text": ", tokenizer", "video": ", frame_encoder"}.get(m.task, "")
    lines += ["", "## Use", "", f"With `pip install {LIBRARY}`:", "", "```python", "import ebt", "",
              f'model = ebt.load("{load_as}")      # a Hub id, or the path of a local copy of this folder',
              f'run = ebt.load_run("{load_as}")    # config, model, step{artifact}', "```", "",
              "`model.save_pretrained(DIR)` writes this folder again; `model.push_to_hub(REPO_ID)` uploads it."]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines) + "\n")


def thinking_recipe(config: RunConfig, model: nn.Module) -> str:
    """One line on how the EBT thinks: System 1 or 2 and the settings of its energy descent."""
    t = config.think
    system2 = (t.truncate_graph or t.randomize_step_size or t.langevin_std > 0 or t.replay_buffer_size > 0
               or t.min_steps > 0)
    steps = f"{t.min_steps}–{t.steps} steps per batch" if t.min_steps else f"{t.steps} steps"
    alpha = (f"α learned from α₀ = {t.step_size:g} (now {float(model.alpha.detach()):.4g})" if t.learn_step_size
             else f"α = {t.step_size:g} fixed")
    parts = [f"System {2 if system2 else 1}: {steps}", alpha]
    parts += ["one energy landscape per step"] if t.landscape_per_step else []
    parts += ["loss on the last step only (truncated graph)" if t.truncate_graph else
              "loss averaged over steps" if t.loss_every_step else "loss on the last step"]
    parts += ["α randomized per position"] if t.randomize_step_size else []
    parts += [f"Langevin noise σ = {t.langevin_std:g}"] if t.langevin_std > 0 else []
    parts += [f"replay buffer of {t.replay_buffer_size} sequences"] if t.replay_buffer_size else []
    parts += [f"start logits σ = {t.start_std:g}"] if t.start_std != 1 else []
    parts += [f"ranking loss on the energies (weight {t.ranking_weight:g}, τ = {t.ranking_temperature:g})"] \
        if t.ranking_weight else []
    parts += [f"monotone-descent penalty (weight {t.monotone_weight:g})"] if t.monotone_weight else []
    return "; ".join(parts)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.6g}"


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
