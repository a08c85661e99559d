"""Build the model a run configuration describes, handed its task object (SPEC §2, §5).

    (task, kind)        model
    text/video, ebt     AutoregressiveEBT        (energy.py)
    text/video, transformer  TransformerPP       (baselines/transformer.py)
    image, ebt          BidirectionalEBT         (energy.py)
    image, dit          DiT                      (baselines/dit.py, procedure in baselines/diffusion.py)

Every text/video model answers `predict(x, options, last_only=, generator=) -> Thought`, every
image model `denoise(noisy, noise_level, options) -> Thought`.
"""

from __future__ import annotations

from torch import nn

from ebt.baselines.dit import DiT
from ebt.baselines.transformer import TransformerPP
from ebt.config import RunConfig
from ebt.energy import AutoregressiveEBT, BidirectionalEBT
from ebt.errors import ConfigError
from ebt.nn import AdaLNBlock, Block
from ebt.tasks import make_task


def build_model(config: RunConfig) -> nn.Module:
    """A freshly initialized model for `config` (its vocabulary or latent width must be set).
    Raises ConfigError for a kind the task has no model of."""
    task, kind = config.model.task, config.model.kind
    handed = make_task(config)
    if task == "image":
        if kind == "ebt":
            return BidirectionalEBT(config.model, config.think, handed)
        if kind == "dit":
            return DiT(config.model, handed)
    elif kind == "ebt":
        return AutoregressiveEBT(config.model, config.think, handed)
    elif kind == "transformer":
        return TransformerPP(config.model, handed)
    raise ConfigError(f"model.kind = {kind!r} has no {task} model; {task} runs are "
                      + ("'ebt' or 'dit'" if task == "image" else "'ebt' or 'transformer'"))


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn activation checkpointing (`train.activation_checkpointing`) on or off for `model`, any
    kind: in training, activations are recomputed in the backward pass instead of kept.

    Every transformer block keeps only the inputs of each of its passes (`ebt.nn.recompute_in_backward`);
    an EBT's training (`objectives.UnrolledThinking`) also keeps only the input of each thinking step
    that builds the second-order graph, and runs the step's energy, ∇E and their graph again in the
    backward pass (`think`'s recompute_steps). Per block alone would save little for an EBT: the
    graph of ∇E holds the blocks' recomputed activations until `loss.backward()`. Gradients are
    unchanged up to floating-point reordering; eval mode (validation, inference) is unchanged."""
    for module in model.modules():
        if isinstance(module, (Block, AdaLNBlock, AutoregressiveEBT, BidirectionalEBT)):
            module.activation_checkpointing = on


def count_parameters(model: nn.Module, embeddings: bool = False) -> int:
    """Parameters, by default without the embedding tables and the output/candidate maps of size V."""
    skip = () if embeddings else ("token_embedding", "candidate_embedding", "output", "landscape_embedding")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def is_energy_based(model: nn.Module) -> bool:
    """True for both EBTs (they think and have an energy), False for the Transformer++ and the DiT."""
    return isinstance(model, (AutoregressiveEBT, BidirectionalEBT))

