"""Build a model from its run configuration (an EBT or a Transformer++) and predict with either."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt.baselines.transformer import TransformerPP
from ebt.config import RunConfig
from ebt.energy import AutoregressiveEBT
from ebt.errors import ConfigError


def build_model(config: RunConfig) -> nn.Module:
    if config.model.vocab_size < 1:
        raise ValueError("model.vocab_size is unset: it comes from the tokenizer")
    if config.model.kind == "ebt":
        return AutoregressiveEBT(config.model, config.think)
    return TransformerPP(config.model)


def count_parameters(model: nn.Module, embeddings: bool = False) -> int:
    """Parameters, by default without the embedding tables and the output/candidate maps of size V."""
    skip = () if embeddings else ("token_embedding", "candidate_embedding", "output", "landscape_embedding")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def is_energy_based(model: nn.Module) -> bool:
    return isinstance(model, AutoregressiveEBT)


def predict(
    model: nn.Module,
    ids: Tensor,
    *,
    steps: int | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
    last_only: bool = False,
) -> tuple[Tensor, int]:
    """Next-token predictions (B, S or 1, C) for ids (B, S) from either kind of model, and the
    forward passes per position that they cost. Only an EBT can think: Transformer++ rejects
    `steps` and `samples`."""
    if is_energy_based(model):
        thought = model.think(ids, steps=steps, samples=samples, generator=generator, last_only=last_only)
        return thought.logits, thought.forward_passes
    if steps is not None or samples != 1:
        raise ConfigError(
            f"a Transformer++ cannot think: steps = {steps!r} and samples = {samples!r} apply to EBT runs only"
        )
    with torch.no_grad():
        logits = model(ids)
    return (logits[:, -1:] if last_only else logits), 1
