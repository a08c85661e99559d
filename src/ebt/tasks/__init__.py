"""Tasks: what a candidate is, how a prediction is scored, and where the data comes from.

One file per modality. A task object (no parameters) is what the models and `think` talk to:
  candidate_dim                 size of one candidate vector (text: the vocabulary; video: the latent)
  input_embedding(dim)          the module taking one context element to width D (text: a token
                                table nn.Embedding(V, D); video: nn.Linear(latent, D, bias=False))
  initial_candidate(x, samples, like, generator)
                                where thinking starts for input x, M samples (text: N(0, I) logits
                                (B, M, S, V); images: the noisy image itself)
  prepare(y)                    the form the energy model reads and ∇E is taken against (text:
                                softmax; video: the identity)
  loss(y, targets)              mean loss of a prediction (text: cross-entropy in nats; video: Smooth-L1)
  loss_metrics(loss)            what a mean loss means to a reader (text: {"ppl": e^loss})

A task's data (`load_data`) is what the trainer talks to; it never sees text, images or frames:
  summary                       one line for the log
  overrides                     config fields the data fixes, e.g. {"model.vocab_size": "256"}
  training_batches(batch_size, seed, rank, world_size)
                                endless, seeded batches with state_dict()/load_state_dict()
  split(batch)                  (model input x, targets) of a batch, on the batch's device
  unit, count(targets)          what training speed is counted in ("tokens", "frames", "images")
                                and how many of them a batch's targets hold
  validate(model, batch_size=, max_batches=, device=)
                                a dict of metrics with at least "loss"
  save(out)                     what the run directory needs besides weights (text: tokenizer.json)

Each task module defines `make_task(model_config)`, `load_data(run_config, run_dir)` and
`load_artifacts(run_config, run_dir)`; the functions here dispatch on `model.task`. For the
command line it also defines `evaluate_run(run, args, thinking, device)` → (metrics, summary line)
and `generate_run(run, args, thinking, device)` → what to print (`ebt eval`, `ebt generate`).
A task whose models are not the autoregressive EBT / Transformer++ pair defines
`build_model(run_config)` (images: the bidirectional EBT and the DiT baseline).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from ebt.config import ModelConfig, RunConfig
from ebt.errors import ConfigError

TASKS = {"text": "ebt.tasks.text", "video": "ebt.tasks.video", "image": "ebt.tasks.image"}  # model.task → its module


def normal_candidates(x: Tensor, samples: int, dim: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, I) candidates (B, M, S, C) for inputs x (B, S, …): M per position, C = `dim`, in the
    dtype and on the device of `like` (a model weight), drawn from `generator` when given. The
    autoregressive tasks start thinking here (SPEC §2)."""
    device = generator.device if generator is not None else like.device
    shape = (x.shape[0], samples, x.shape[1], dim)
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"model.task = {name!r} is not a known task; known: {', '.join(map(repr, TASKS))}")
    return importlib.import_module(TASKS[name])


def make_task(config: ModelConfig):
    return task_module(config.task).make_task(config)


def load_data(config: RunConfig, run_dir: Path | None = None):
    """The task's data for a run; `run_dir` (on --resume) reuses the artifacts saved there."""
    return task_module(config.model.task).load_data(config, run_dir)


def load_artifacts(config: RunConfig, run_dir: Path):
    """What a saved run needs besides its weights (text: the tokenizer), checked against its config."""
    return task_module(config.model.task).load_artifacts(config, run_dir)
