"""Text: next-token prediction with discrete candidates (SPEC §2, "Text candidates").

A candidate is a vector of V logits per position, started from N(0, I). The energy model reads
its softmax, and thinking steps on the probabilities: y ← p − α ∂E/∂p, the result used as
logits for the loss and the next step (the reference code's update; normalizing was essential
for stability).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.config import TextConfig
from ebt.data.batches import example_normal
from ebt.errors import ConfigError


# A target that is not predicted (padding, `ebt.data.tokens.PAD`): cross_entropy's default ignore_index.
IGNORE_INDEX = -100


class NextToken:
    """The text task object (see ebt.tasks): candidates are V logits per position."""

    def __init__(self, vocab_size: int):
        if vocab_size < 1:
            raise ConfigError("text.vocab_size is unset: it comes from the tokenizer")
        self.candidate_dim = vocab_size

    def example_values(self, context_len: int) -> int:
        """Values in one example's candidate: one candidate (logits over the vocabulary) per position."""
        return context_len * self.candidate_dim

    @classmethod
    def from_config(cls, config: TextConfig) -> NextToken:
        return cls(config.vocab_size)

    def initial_candidate(
        self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """N(0, I) logits (B, M, S, V) for contexts x (B, S): M samples per position, with the
        device and dtype of `like` (a model weight); see `normal_candidates` for generator and seeds."""
        return normal_candidates(x, samples, self.candidate_dim, like, generator, seeds)

    def input_embedding(self, dim: int) -> nn.Module:
        """How a context token enters either model: a table of V vectors of width D, N(0, 1) (SPEC §2)."""
        return nn.Embedding(self.candidate_dim, dim)

    def prepare(self, y: Tensor) -> Tensor:
        return torch.softmax(y, dim=-1)

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        """What a mean loss means to a reader: perplexity."""
        return {"ppl": perplexity(loss)}

    def loss(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of logits y (..., V) against token ids (...); targets
        equal to IGNORE_INDEX (padding) are not predicted and count for nothing."""
        logits = y.reshape(-1, y.shape[-1])
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.reshape(-1))


    @staticmethod
    def position_losses(y: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy (nats) of each candidate at each position: logits y (…, S, V) against ids
        (B, S) broadcast to y's leading dims (e.g. y (B, M, S, V): targets[:, None]) → (…, S); 0 where
        the target is IGNORE_INDEX (`scored` says where)."""
        logits = torch.log_softmax(y.to(torch.promote_types(y.dtype, torch.float32)), dim=-1)
        while targets.dim() < logits.dim() - 1:
            targets = targets.unsqueeze(1)
        index = targets.expand(logits.shape[:-1])
        picked = logits.gather(-1, index.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return torch.where(index == IGNORE_INDEX, torch.zeros_like(picked), -picked)

    @staticmethod
    def scored(targets: Tensor) -> Tensor:
        """Where a prediction is scored: targets (B, S) → bool (B, S), False at IGNORE_INDEX (padding)."""
        return targets != IGNORE_INDEX

    @staticmethod
    def mix(y: Tensor, weights: Tensor) -> Tensor:
        """Soft selection: logits of the mixture Σ_i w_i·softmax(y_i) of M samples' predictions, y
        (B, M, S, V) and weights (B, M, S) summing to 1 over M → (B, S, V)."""
        logp = torch.log_softmax(y.to(torch.promote_types(y.dtype, torch.float32)), dim=-1)
        return torch.logsumexp(logp + torch.log(weights.to(logp.dtype)).unsqueeze(-1), dim=1).to(y.dtype)

    @staticmethod
    def decoded(y: Tensor) -> Tensor:
        """What a prediction decodes to, in the form the energy reads: the one-hot (…, V) of the most
        likely token of logits y (…, V), in y's dtype (a greedy decoder's choice)."""
        return F.one_hot(y.argmax(dim=-1), y.shape[-1]).to(y.dtype)

    def example_losses(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of each sequence: logits y (B, S, V), ids (B, S) → (B,),
        over the positions that are not IGNORE_INDEX."""
        logits = y.to(torch.promote_types(y.dtype, torch.float32))
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, S), 0 where ignored
        return losses.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1).clamp_min(1)


def normal_candidates(x: Tensor, samples: int, dim: int, like: Tensor, generator: torch.Generator | None = None,
                      seeds: Tensor | None = None) -> Tensor:
    """N(0, I) candidates (B, M, S, C) for inputs x (B, S, …): M per position, C = `dim`, in the
    dtype and on the device of `like` (a model weight), drawn from `generator` when given, or
    with `seeds` (B,) each sequence's from its own seed (training: `ebt.data.batches.Batch`, so
    a batch split over processes or micro-batches starts from the same candidates). The
    autoregressive tasks (text, video) start thinking here (SPEC §2)."""
    if seeds is not None:
        return example_normal(seeds, (samples, x.shape[1], dim), like.device, like.dtype)
    device = generator.device if generator is not None else like.device
    shape = (x.shape[0], samples, x.shape[1], dim)
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def perplexity(loss: float) -> float:
    """exp(mean nats per token); inf where that overflows a float, NaN for a NaN loss."""
    return math.exp(loss) if loss < 709.0 else (math.inf if loss == loss else math.nan)
