"""Autoregressive generation for either kind of model, with a KV cache.

Each new token is predicted from the last context_len tokens; an EBT thinks about the last
position only. With the cache (the default) earlier tokens' keys/values are kept, so each new
token runs only itself through the context stream (the EBT keeps one cache per energy
landscape). Once the text outgrows the window, the window slides by one token per step and,
since every rotary position then shifts, the window is encoded afresh each step — exactly what
the uncached path computes, so both give the same tokens. temperature 0 is greedy decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt.errors import ConfigError
from ebt.models import is_energy_based, reject_thinking


def generate(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache: bool = True,
    **thinking,
) -> list[int]:
    """The prompt's token ids continued by `max_new_tokens` generated ids (returned without the prompt).

    `thinking` options (steps, samples, step_size, langevin_std, tolerance) go to the EBT's `think`."""
    if not prompt:
        raise ConfigError("the prompt is empty: give at least one token of context (--prompt TEXT)")
    if temperature < 0:
        raise ConfigError(f"temperature = {temperature} is not allowed; it must be ≥ 0 (0 = greedy)")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens = {max_new_tokens} is not allowed; it must be ≥ 0")
    if not is_energy_based(model):
        reject_thinking(thinking)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = _Decoder(model, cache, generator, thinking)
    ids = list(prompt)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = decoder.next_logits(ids).float()  # (V,)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
    return ids[len(prompt):]


class _Decoder:
    """Next-token logits for a sequence that grows by one token between calls."""

    def __init__(self, model: nn.Module, cache: bool, generator: torch.Generator, thinking: dict):
        self.model, self.cache, self.generator, self.thinking = model, cache, generator, thinking
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
            thought = self.model.think(self.state.ids, last_only=True, landscapes=self.state,
                                       generator=self.generator, **self.thinking)
            logits = thought.logits[0, -1]
        else:
            if not extend:
                self.state = []
            logits = self.model(new, past=self.state)[0, -1]
        self.seen = len(ids)
        return logits
