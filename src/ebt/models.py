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
import dataclasses
from typing import Iterator, Mapping

import torch
from torch import nn

from ebt.baselines.dit import DiT
from ebt.baselines.transformer import TransformerPP
from ebt.compiled import check_compile
from ebt.config import ImageConfig, ModelConfig, RunConfig, ThinkConfig
from ebt.energy import AutoregressiveEBT, BidirectionalEBT
from ebt.errors import ConfigError
from ebt.memory import check_fits, naming
from ebt.nn import AdaLNBlock, Block
from ebt.tasks import make_task


def build_model(config: RunConfig, subclasses: Mapping[type, type] | None = None) -> nn.Module:
    """A freshly initialized model for `config` (its vocabulary or latent width must be set), built
    on the host. `subclasses` maps a model class to a subclass to build in its place (`ebt.runs`:
    the same model with the Hub methods). Raises ConfigError for a kind the task has no model of,
    and, before allocating, for a model whose weights cannot fit in the host's memory, naming the
    size to lower (`model_size`)."""
    parameters, nbytes = model_size(config)
    check_fits(nbytes, "cpu", f"the model ({describe_sizes(config)}: {parameters:.3g} parameters)",
               largest_size(config))
    with naming("building the model", {key: value for key, value in size_options(config).items() if key in TYPICAL}):
        return _build(config, subclasses)


def _build(config: RunConfig, subclasses: Mapping[type, type] | None = None) -> nn.Module:
    task, kind = config.model.task, config.model.kind
    handed = make_task(config)
    kinds = {"ebt": BidirectionalEBT, "dit": DiT} if task == "image" else {"ebt": AutoregressiveEBT,
                                                                        "transformer": TransformerPP}
    if kind not in kinds:
        raise ConfigError(f"model.kind = {kind!r} has no {task} model; {task} runs are "
                          + " or ".join(map(repr, kinds)))
    cls = (subclasses or {}).get(kinds[kind], kinds[kind])
    return cls(config.model, config.think, handed) if kind == "ebt" else cls(config.model, handed)


def model_size(config: RunConfig) -> tuple[int, int]:
    """(parameters, bytes of its parameters and buffers) of the model `config` describes, without
    allocating it: built on the meta device with 1 and 2 layers, each further layer adding what
    the second did (so model.n_layers = 1e9 costs no more than 2)."""
    def measured(layers: int) -> tuple[int, int]:
        with torch.device("meta"):
            model = _build(dataclasses.replace(config, model=dataclasses.replace(config.model, n_layers=layers)))
        tensors = (*model.parameters(), *model.buffers())
        return sum(p.numel() for p in model.parameters()), sum(t.numel() * t.element_size() for t in tensors)

    one, two = measured(1), measured(2)
    layers = config.model.n_layers
    return one[0] + (layers - 1) * (two[0] - one[0]), one[1] + (layers - 1) * (two[1] - one[1])


# The options that size a model: all are described; the ones a user sets (not the vocabulary or
# latent width, which come from the data) are measured against a typical value (the defaults;
# model.dim's for model.ffn_dim) to name the one to lower.
SIZES = ("model.n_layers", "model.dim", "model.ffn_dim", "model.context_len", "text.vocab_size", "image.image_size",
         "image.patch_size", "image.channels", "video.latent_dim")
TYPICAL = {"model.n_layers": ModelConfig.n_layers, "model.dim": ModelConfig.dim, "model.ffn_dim": ModelConfig.dim,
           "model.context_len": ModelConfig.context_len, "image.image_size": ImageConfig.image_size,
           "image.channels": ImageConfig.channels, "think.steps": ThinkConfig.steps}


def size_options(config: RunConfig) -> dict[str, int]:
    """The options that size the model `config` describes, by key ("model.dim": 128, ...)."""
    values = {}
    for key in SIZES:
        section, name = key.split(".")
        part = getattr(config, section, None)
        if part is not None:
            values[key] = getattr(part, name)
    if config.model.kind == "ebt" and config.think.landscape_per_step:  # an energy landscape per step
        values["think.steps"] = config.think.steps
    return values


def describe_sizes(config: RunConfig) -> str:
    """'model.n_layers = 2, model.dim = 100000, ...': the options that size the model."""
    return ", ".join(f"{k} = {v}" for k, v in size_options(config).items())


def largest_size(config: RunConfig) -> str:
    """The size option furthest above its typical value: the one to lower when a model cannot fit."""
    sizes = {k: v for k, v in size_options(config).items() if k in TYPICAL}
    return max(sizes, key=lambda key: sizes[key] / TYPICAL[key])


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

