"""Autoregressive generation for either kind of model.

Each new token is predicted from the last context_len tokens (the window slides once the text
outgrows it); an EBT thinks about the last position only. temperature 0 is greedy decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from ebt.errors import ConfigError
from ebt.models import predict


def generate(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
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
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = list(prompt)
    window = model.config.context_len
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            x = torch.tensor([ids[-window:]], device=device)  # (1, S)
            logits = predict(model, x, generator=generator, last_only=True, **thinking).logits[0, -1].float()  # (V,)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
    return ids[len(prompt):]
