"""Autoregressive generation for either kind of model, with a KV cache (text), and video rollouts.

Each new token is predicted from the last context_len tokens; an EBT thinks about the last
position only. With the cache (the default) earlier tokens' keys/values are kept, so each new
token runs only itself through the context stream (the EBT keeps one cache per energy
landscape). Once the text outgrows the window, the window slides by one token per step and,
since every rotary position then shifts, the window is encoded afresh each step — exactly what
the uncached path computes, so both give the same tokens. temperature 0 is greedy decoding.
`precision` ('fp32', 'bf16', 'fp16' on CUDA) is the autocast the model runs under, as in
`ebt.evaluate`; sampling reads float32 logits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ebt.errors import ConfigError, ThinkingDiverged
from ebt.evaluate import PRECISION_OPTION
from ebt.models import is_energy_based
from ebt.options import ThinkingOptions
from ebt.precision import autocast, check_precision


def generate(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache: bool = True,
    options: ThinkingOptions | None = None,
    precision: str = "fp32",
    stop: Callable[[list[int]], bool] | None = None,
    **given,
) -> list[int]:
    """The prompt's token ids continued by `max_new_tokens` generated ids (returned without the prompt).

    `stop`, when given, is called with the generated ids after each new token; generation ends
    early, that token kept, as soon as it returns True (`ebt.harness` stops at a stop string).

    `options` (a ThinkingOptions, or its fields as keywords) go to the EBT's `think`; a
    Transformer++ rejects any that are set. Raises ConfigError for an empty prompt, ids outside
    the vocabulary, a temperature that is not a finite number ≥ 0, a negative token count, or a
    precision not in ebt.precision.PRECISIONS (fp16 only on CUDA)."""
    options = ThinkingOptions.of(options, **given)
    check_precision(precision, device, PRECISION_OPTION)
    if not prompt:
        raise ConfigError("the prompt is empty: give at least one token of context (--prompt TEXT)")
    vocab = model.task.candidate_dim
    bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < vocab)]
    if bad:
        raise ConfigError(f"prompt ids {bad[:5]} are outside the model's vocabulary [0, {vocab})")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature = {temperature} is not allowed; it must be a finite number ≥ 0 (0 = greedy)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens = {max_new_tokens!r} is not allowed; it must be an integer ≥ 0")
    if not is_energy_based(model) and options.given():
        raise options.refused_by("a Transformer++")
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = _Decoder(model, cache, generator, options)
    ids = list(prompt)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            with autocast(precision, device):
                logits = decoder.next_logits(ids)
            logits = logits.float()  # (V,)
            if not bool(torch.isfinite(logits).all()):
                raise ThinkingDiverged(f"the prediction for token {len(ids) - len(prompt)} is not finite; "
                                       "lower the step size or the Langevin noise")
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
            if stop is not None and stop(ids[len(prompt):]):
                break
    return ids[len(prompt):]


class _Decoder:
    """Next-token logits for a sequence that grows by one token between calls."""

    def __init__(self, model: nn.Module, cache: bool, generator: torch.Generator, options: ThinkingOptions):
        self.model, self.cache, self.generator, self.options = model, cache, generator, options
        self.window = model.config.context_len
        self.state = None  # EBT: Landscapes; Transformer++: per-block keys/values
        self.seen = 0  # tokens the state holds

    def next_logits(self, ids: list[int]) -> Tensor:
        device = self.generator.device
        extend = self.cache and self.state is not None and self.seen == len(ids) - 1 and len(ids) <= self.window
        new = torch.tensor([ids[-1:] if extend else ids[-self.window:]], device=device)  # (1, N)
        if is_energy_based(self.model):
            if extend:
                self.state.append(new)
            else:
                self.state = self.model.landscapes(new, differentiable=False)
            thought = self.model.think(self.state.ids, self.options, last_only=True, landscapes=self.state,
                                       generator=self.generator)
            logits = thought.y[0, -1]
        else:
            if not extend:
                self.state = []
            logits = self.model(new, past=self.state)[0, -1]
        self.seen = len(ids)
        return logits


def rollout(model: nn.Module, context: Tensor, length: int, options: ThinkingOptions | None = None, *,
            generator: torch.Generator | None = None, precision: str = "fp32") -> Tensor:
    """Video: latents (B, length, C) predicted one frame at a time after context latents (B, K, C),
    each prediction fed back as context; past the model's window the window slides. `precision`:
    the autocast of the model's predictions (ConfigError as `generate`)."""
    check_precision(precision, context.device, PRECISION_OPTION)
    window = model.config.context_len
    frames = context
    with torch.no_grad():
        for _ in range(length):
            with autocast(precision, context.device):
                thought = model.predict(frames[:, -window:], options, last_only=True, generator=generator)
            frames = torch.cat((frames, thought.y[:, -1:].to(frames.dtype)), dim=1)  # (B, K+i+1, C)
    return frames[:, context.shape[1]:]
