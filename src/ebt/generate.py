"""Autoregressive generation for either kind of model, with a KV cache (text), and video rollouts.

Both drive the model's own decoder (`model.decoder(...)`, `ebt.decoding`): it predicts the
element after the sequence so far from its last context_len elements (an EBT thinks about the
last position only) and keeps the model's cache; with the cache (the default) each new token
runs only itself through the model, and past the window, where the window slides, the decoder
encodes it afresh, so decoding with and without the cache gives the same tokens. temperature 0
is greedy decoding. `precision` ('fp32', 'bf16', 'fp16' on CUDA) is the autocast the model runs
under, as in `ebt.evaluate`; sampling reads float32 logits.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ebt.checks import check_int, check_real
from ebt.errors import ConfigError, ThinkingDiverged
from ebt.evaluate import PRECISION_OPTION
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
        raise ConfigError("the prompt is empty: give at least one token of context", field="prompt")
    vocab = model.task.candidate_dim
    bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < vocab)]
    if bad:
        raise ConfigError(f"prompt ids {bad[:5]} are outside the model's vocabulary [0, {vocab})", field="prompt")
    check_real("temperature", temperature, 0, note=" (0 = greedy)")
    check_int("max_new_tokens", max_new_tokens, 0)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = model.decoder(options, generator, cache=cache)  # a Transformer++ refuses thinking options
    x = torch.tensor([prompt], device=device)  # (1, N): the prompt, then each new token (1, 1)
    new: list[int] = []
    model.eval()
    with torch.no_grad():
        for i in range(max_new_tokens):
            with autocast(precision, device):
                logits = decoder.step(x) if i else decoder.start(x)
            logits = logits[0].float()  # (V,)
            if not bool(torch.isfinite(logits).all()):
                raise ThinkingDiverged(f"the prediction for token {len(new)} is not finite; "
                                       "lower the step size or the Langevin noise")
            if temperature == 0:
                token = int(logits.argmax())
            else:
                # In float64 (any temperature > 0 is one), shifted so the largest is 0: a tiny temperature
                # gives the argmax (−∞ elsewhere) instead of ∞/∞ = NaN.
                probs = torch.softmax((logits.double() - logits.max()) / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            new.append(token)
            if stop is not None and stop(new):
                break
            x = torch.tensor([[token]], device=device)
    return new


def rollout(model: nn.Module, context: Tensor, length: int, options: ThinkingOptions | None = None, *,
            generator: torch.Generator | None = None, precision: str = "fp32") -> Tensor:
    """Video: latents (B, length, C) predicted one frame at a time after context latents (B, K, C),
    each prediction fed back as context; past the model's window the window slides. `precision`:
    the autocast of the model's predictions (ConfigError as `generate`). Each frame encodes its
    window afresh (the decoder without its cache), as `ebt generate --frames` always has."""
    check_precision(precision, context.device, PRECISION_OPTION)
    decoder = model.decoder(options, generator, cache=False)
    frames = [context[:, :0]]  # each (B, 1, C) after this empty start
    with torch.no_grad():
        for i in range(length):
            with autocast(precision, context.device):
                y = decoder.step(frames[-1]) if i else decoder.start(context)  # (B, C)
            frames.append(y[:, None].to(context.dtype))
    return torch.cat(frames, dim=1)  # (B, length, C)
