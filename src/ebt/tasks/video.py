"""Video: next-frame prediction with continuous candidates (SPEC §2 "Continuous candidates", §6).

A candidate is a vector in the frozen frame encoder's latent space (`ebt.data.video`), started
from N(0, I) and read by the energy model as it is (`prepare` is the identity): thinking steps
y ← y − α ∇_y E on the latent itself. Loss: Smooth-L1 (β = 1) to the true next frame's latent.
The context enters through a linear map of latents (`input_embedding`) instead of a token
table; the same AutoregressiveEBT, `think` and trainer serve text and video. The Transformer++
regresses the next latent with the same loss.

The clips and the frame encoder are in `ebt.data.video` and `ebt.rundata.video`; scoring
(next-frame errors against copying the last frame, the energy along clips) in `ebt.evaluate`.

Legend: B batch, M samples, S = T − 1 predicted frames, T frames per clip, C latent width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.config import VideoConfig
from ebt.errors import ConfigError
from ebt.tasks.text import normal_candidates


class NextFrame:
    """The video task object (see ebt.tasks): candidates are frame latents."""

    def __init__(self, latent_dim: int):
        if latent_dim < 1:
            raise ConfigError("video.latent_dim is unset: it comes from the frame encoder (video.frame_encoder)")
        self.candidate_dim = latent_dim

    def example_values(self, context_len: int) -> int:
        """Values in one example's candidate: one candidate (a latent frame) per position."""
        return context_len * self.candidate_dim

    @classmethod
    def from_config(cls, config: VideoConfig) -> NextFrame:
        return cls(config.latent_dim)

    def initial_candidate(
        self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """N(0, I) latents (B, M, S, C) for context latents x (B, S, C), dtype and device of `like`
        (generator, seeds: `ebt.tasks.text.normal_candidates`)."""
        return normal_candidates(x, samples, self.candidate_dim, like, generator, seeds)

    def input_embedding(self, dim: int) -> nn.Module:
        """A context frame's latent (C) → width D: a linear map, no bias (SPEC §2)."""
        return nn.Linear(self.candidate_dim, dim, bias=False)

    def prepare(self, y: Tensor) -> Tensor:
        return y  # a latent is read as it is; ∇E is taken with respect to it

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        return {}

    @staticmethod
    def position_losses(y: Tensor, targets: Tensor) -> Tensor:
        """Smooth-L1 (β = 1) of each candidate latent, mean over C: y (…, S, C) against targets
        (B, S, C) broadcast to y's leading dims → (…, S)."""
        while targets.dim() < y.dim():
            targets = targets.unsqueeze(1)
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        return F.smooth_l1_loss(y, targets.to(y.dtype).expand_as(y), beta=1.0, reduction="none").mean(-1)

    @staticmethod
    def scored(targets: Tensor) -> Tensor:
        """Every frame is scored: targets (B, S, C) → True (B, S)."""
        return torch.ones(targets.shape[:2], dtype=torch.bool, device=targets.device)

    @staticmethod
    def mix(y: Tensor, weights: Tensor) -> Tensor:
        """Soft selection: Σ_i w_i·y_i of M samples' latents y (B, M, S, C), weights (B, M, S) → (B, S, C)."""
        return (weights.to(y.dtype).unsqueeze(-1) * y).sum(dim=1)

    def loss(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean Smooth-L1 (β = 1) per latent coordinate of predictions y (…, C) against targets (…, C)."""
        return F.smooth_l1_loss(y.to(torch.promote_types(y.dtype, torch.float32)), targets.to(y.dtype), beta=1.0)
