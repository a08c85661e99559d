"""Build the model a run configuration describes, handed its task object (SPEC §2, §5).

    (task, kind)        model
    text/video, ebt     AutoregressiveEBT        (energy.py)
    text/video, transformer  TransformerPP       (baselines/transformer.py)
    image, ebt          BidirectionalEBT         (energy.py)
    image, dit          DiT                      (baselines/dit.py, procedure in baselines/diffusion.py)

Every text/video model answers `predict(x, options, last_only=, generator=) -> Thought` and hands
out its decoder, `decoder(options, generator, cache=)` (`ebt.decoding`); the image models are
scored by the image evaluation protocol, `ebt.image_protocol`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

from torch import nn

from ebt.baselines.dit import DiT
from ebt.baselines.transformer import TransformerPP
from ebt.compiled import check_compile
from ebt.config import RunConfig
from ebt.energy import AutoregressiveEBT, BidirectionalEBT
from ebt.errors import ConfigError
from ebt.nn import AdaLNBlock, Block
from ebt.tasks import make_task


def build_model(config: RunConfig, subclasses: Mapping[type, type] | None = None) -> nn.Module:
    """A freshly initialized model for `config` (its vocabulary or latent width must be set).
    `subclasses` maps a model class to a subclass to build in its place (`ebt.runs`: the same model
    with the Hub methods). Raises ConfigError for a kind the task has no model of."""
    task, kind = config.model.task, config.model.kind
    handed = make_task(config)
    kinds = {"ebt": BidirectionalEBT, "dit": DiT} if task == "image" else {"ebt": AutoregressiveEBT,
                                                                        "transformer": TransformerPP}
    if kind not in kinds:
        raise ConfigError(f"model.kind = {kind!r} has no {task} model; {task} runs are "
                          + " or ".join(map(repr, kinds)))
    cls = (subclasses or {}).get(kinds[kind], kinds[kind])
    return cls(config.model, config.think, handed) if kind == "ebt" else cls(config.model, handed)


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn activation checkpointing (`train.activation_checkpointing`) on or off for `model`, any
    kind: in training, activations are recomputed in the backward pass instead of kept.

    Every transformer block keeps only the inputs of each of its passes (`ebt.nn.recompute_in_backward`);
    an EBT's training (`objectives.UnrolledThinking`) also keeps only the input of each thinking step
    that builds the second-order graph, and runs the step's energy, ∇E and their graph again in the
    backward pass (the model's `landscapes` then wrap the energy in `ebt.think.Checkpointed`). Per
    block alone would save little for an EBT: the graph of ∇E holds the blocks' recomputed
    activations until `loss.backward()`. Gradients are unchanged up to floating-point reordering;
    eval mode (validation, inference) is unchanged."""
    for module in model.modules():
        if isinstance(module, (Block, AdaLNBlock, AutoregressiveEBT, BidirectionalEBT)):
            module.activation_checkpointing = on


@contextlib.contextmanager
def compiled_inference(model: nn.Module, on: bool = True) -> Iterator[nn.Module]:
    """Inside the block, `model` runs the hot paths of inference through `torch.compile` (`on`,
    `--compile`; `ebt.compiled`), or eagerly (`on=False`): an EBT its context passes and
    first-order thinking steps, a Transformer++ its forward passes. The same results up to float rounding; training is
    never compiled. The first calls compile (slow); later ones, in later blocks too, and other
    models of the same architecture reuse what was compiled.

        with compiled_inference(run.model):
            ids = generate(run.model, prompt, 200)

    Raises ConfigError (field "compile") when torch.compile cannot run on the model's device
    here, or for a DiT (it has nothing compiled)."""
    supported = hasattr(model, "compiled")
    if on and not supported:
        raise ConfigError(f"compiled inference (compile = True) applies to EBT and Transformer++ runs; a "
                          f"{type(model).__name__} has no compiled path", field="compile")
    if on:
        check_compile(next(model.parameters()).device)
    if not supported:
        yield model
        return
    before, model.compiled = model.compiled, on
    try:
        yield model
    finally:
        model.compiled = before


def count_parameters(model: nn.Module, embeddings: bool = False) -> int:
    """Parameters, by default without the embedding tables and the output/candidate maps of size V."""
    skip = () if embeddings else ("token_embedding", "candidate_embedding", "output", "landscape_embedding")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def is_energy_based(model: nn.Module) -> bool:
    """True for both EBTs (they think and have an energy), False for the Transformer++ and the DiT."""
    return isinstance(model, (AutoregressiveEBT, BidirectionalEBT))

