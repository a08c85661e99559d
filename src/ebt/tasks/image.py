"""Images: denoising with continuous candidates (SPEC §5).

A candidate is a whole image: thinking starts from the noisy image itself (not from noise) and
every step is one gradient step on its pixels, y ← y − α ∇_y E(y). The energy is one scalar per
image (the mean of the per-patch energies), so a candidate is (B, M, S = 1, C, H, W): one
"position" per image, and `think`'s per-position best-of-M and adaptive tolerance apply per image.
Loss: Smooth-L1 (β = 1) to the clean image, the reference code's choice.

What a noise level means (the DDPM schedule, λ ↦ timestep) is the diffusion procedure's, beside
the DiT baseline: `ebt.baselines.diffusion`. How either image model denoises at a budget is the
image evaluation protocol's, `ebt.image_protocol`; `ebt.evaluate.denoise_metrics` scores either.

Legend: B batch, M samples, C channels, H × W image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.config import ImageConfig


class Denoising:
    """The image task object (see ebt.tasks): what `think` and the training objective talk to."""

    def __init__(self, channels: int, image_size: int, patch_size: int, noise_level: float):
        self.channels, self.image_size, self.patch_size = channels, image_size, patch_size
        self.candidate_dim = channels * image_size * image_size
        self.noise_level = noise_level  # λ the models train at

    def example_values(self, context_len: int) -> int:
        """Values in one example's candidate: the whole image (context_len plays no part)."""
        return self.candidate_dim

    @classmethod
    def from_config(cls, config: ImageConfig) -> Denoising:
        return cls(config.channels, config.image_size, config.patch_size, config.noise_level)

    def initial_candidate(self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None,
                          seeds: Tensor | None = None) -> Tensor:
        """The noisy images x (B, C, H, W) themselves, M copies each: (B, M, 1, C, H, W) in like's dtype."""
        return x.to(like.dtype).unsqueeze(1).unsqueeze(1).expand(-1, samples, 1, *x.shape[1:]).contiguous()

    @staticmethod
    def prepare(y: Tensor) -> Tensor:
        return y  # the energy reads the pixels as they are

    @staticmethod
    def position_losses(y: Tensor, targets: Tensor) -> Tensor:
        """Smooth-L1 (β = 1) of each candidate image, mean over its pixels: y (B, [M,] 1, C, H, W)
        against clean images (B, C, H, W) → (B, [M,] 1)."""
        lead = y.shape[:-3]
        clean = targets.reshape(targets.shape[0], *(1,) * (len(lead) - 1), *targets.shape[1:])
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        return F.smooth_l1_loss(y, clean.to(y.dtype).expand_as(y), reduction="none").flatten(len(lead)).mean(-1)

    @staticmethod
    def scored(targets: Tensor) -> Tensor:
        """Every image is scored: clean images (B, C, H, W) → True (B, 1)."""
        return torch.ones(targets.shape[0], 1, dtype=torch.bool, device=targets.device)

    @staticmethod
    def mix(y: Tensor, weights: Tensor) -> Tensor:
        """Soft selection: Σ_i w_i·y_i of M samples' images y (B, M, 1, C, H, W), weights (B, M, 1) → (B, 1, C, H, W)."""
        return (weights.to(y.dtype).view(*weights.shape, 1, 1, 1) * y).sum(dim=1)

    @staticmethod
    def loss(y: Tensor, targets: Tensor) -> Tensor:
        """Smooth-L1 (β = 1) of images y (B, [1,] C, H, W) against clean images (B, C, H, W), in
        float32 at least (as the other tasks' losses: a 16-bit prediction is widened)."""
        y = y.reshape(targets.shape)
        return F.smooth_l1_loss(y.to(torch.promote_types(y.dtype, torch.float32)), targets)

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        return {}
