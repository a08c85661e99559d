"""Build a model from its run configuration (an EBT or a Transformer++) and predict with either."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt.baselines.transformer import TransformerPP
from ebt.config import RunConfig
from ebt.energy import AutoregressiveEBT
from ebt.errors import ConfigError
from ebt.tasks import task_module
from ebt.think import Thought


def build_model(config: RunConfig) -> nn.Module:
    build = getattr(task_module(config.model.task), "build_model", None)  # a task with its own architectures
    if build is not None:
        return build(config)
    if config.model.kind == "ebt":
        return AutoregressiveEBT(config.model, config.think)
    return TransformerPP(config.model)


def count_parameters(model: nn.Module, embeddings: bool = False) -> int:
    """Parameters, by default without the embedding tables and the output/candidate maps of size V."""
    skip = () if embeddings else ("token_embedding", "candidate_embedding", "output", "landscape_embedding")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def is_energy_based(model: nn.Module) -> bool:
    return isinstance(model, AutoregressiveEBT)


# Thinking options at their "no thinking requested" values.
NOT_THINKING = {"steps": None, "samples": 1, "step_size": None, "langevin_std": 0.0, "tolerance": None}


def reject_thinking(thinking: dict) -> None:
    """A Transformer++ cannot think: an error if any thinking option is set."""
    given = {k: v for k, v in thinking.items() if v != NOT_THINKING.get(k)}
    if given:
        raise ConfigError(f"a Transformer++ cannot think: {given} apply to EBT runs only")


def predict(
    model: nn.Module,
    ids: Tensor,
    *,
    last_only: bool = False,
    generator: torch.Generator | None = None,
    **thinking,
) -> Thought:
    """Next-token predictions for ids (B, S) from either kind of model, as a Thought whose
    `logits` are (B, S or 1, C) and whose `forward_passes` is what they cost. Only an EBT can
    think: Transformer++ rejects thinking options (steps, samples, step_size, langevin_std,
    tolerance) that are set."""
    if is_energy_based(model):
        return model.think(ids, generator=generator, last_only=last_only, **thinking)
    reject_thinking(thinking)
    with torch.no_grad():
        logits = model(ids)  # (B, S, V)
    return Thought([logits[:, -1:] if last_only else logits], forward_passes=1)
