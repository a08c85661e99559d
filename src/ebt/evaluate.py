"""Evaluation: mean loss (nats per token) and perplexity of a model on a token stream.

Windows of context_len + 1 tokens cover the stream in order (every token after the first is
predicted once). EBT predictions start from random candidates, drawn from a generator seeded
here, so evaluation is repeatable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebt.data.batches import sequential_windows
from ebt.models import predict


def evaluate(
    model: nn.Module,
    tokens: Tensor,
    *,
    batch_size: int = 16,
    max_windows: int | None = None,
    steps: int | None = None,
    samples: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    window = model.config.context_len + 1
    generator = torch.Generator(device=device).manual_seed(seed)
    total_loss, total_tokens, passes = 0.0, 0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in sequential_windows(tokens, window, batch_size, max_windows):
            batch = batch.to(device)
            x, targets = batch[:, :-1], batch[:, 1:]
            y, passes = predict(model, x, steps=steps, samples=samples, generator=generator)
            total_loss += float(model.task.loss(y, targets)) * targets.numel()
            total_tokens += targets.numel()
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    return {"loss": loss, "ppl": perplexity(loss), "tokens": total_tokens, "forward_passes": passes}


def perplexity(loss: float) -> float:
    """exp(mean nats per token); inf where that overflows a float."""
    return math.exp(loss) if loss < 709.0 else math.inf
