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
    seed: int = 0,
    device: torch.device | str = "cpu",
    **thinking,
) -> dict[str, float]:
    """Mean loss (nats per token), perplexity, tokens scored and forward passes per token.

    `thinking` options (steps, samples, step_size, langevin_std, tolerance) go to the EBT's
    `think`. With adaptive thinking, `forward_passes` is the mean of what the batches ran and
    `mean_steps` the steps positions actually used.
    """
    window = model.config.context_len + 1
    generator = torch.Generator(device=device).manual_seed(seed)
    total_loss, total_tokens, total_passes, total_steps = 0.0, 0, 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in sequential_windows(tokens, window, batch_size, max_windows):
            batch = batch.to(device)
            x, targets = batch[:, :-1], batch[:, 1:]
            thought = predict(model, x, generator=generator, **thinking)
            n = targets.numel()
            total_loss += float(model.task.loss(thought.logits, targets)) * n
            total_passes += thought.forward_passes * n
            if thought.steps_taken is not None:
                total_steps += float(thought.steps_taken.float().sum())
            total_tokens += n
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    result = {"loss": loss, "ppl": perplexity(loss), "tokens": total_tokens,
              "forward_passes": total_passes / max(total_tokens, 1)}
    if thinking.get("tolerance") is not None:
        result["mean_steps"] = total_steps / max(total_tokens, 1)
    return result


def perplexity(loss: float) -> float:
    """exp(mean nats per token); inf where that overflows a float."""
    return math.exp(loss) if loss < 709.0 else math.inf
