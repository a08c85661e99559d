"""The DiT diffusion baseline for image denoising (SPEC §5): the network.

The bidirectional EBT's backbone (`PatchTransformer`) with a timestep embedder in place of the
learned landscape vector, and a zero-initialized per-patch output predicting the noise ε
(ε-prediction, DDPM). It trains (`objectives.NoisePrediction`) on the low-noise range of the
linear-β schedule only, timesteps 0 … t(λ_train), and denoises a level-λ image with DDIM (η = 0)
from the level's timestep t = λ·T − 1 down to 0: t + 1 network passes (fewer if asked, on an
even sub-grid of timesteps). The recursive variant re-runs DDIM on its own output. The schedule
and the sampler are the procedure's: `diffusion.py`; the budgets it is scored at, the image
evaluation protocol's: `ebt.image_protocol`.

Legend: B batch, C channels, H × W image, P patches, D width, p patch side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebt.baselines.diffusion import timestep
from ebt.config import ModelConfig
from ebt.nn import PatchTransformer, unpatchify
from ebt.tasks.image import Denoising


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features (B, D) of integer timesteps t (B,), as DiT's timestep embedder reads."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[:, None] * freq  # (B, D/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class DiT(nn.Module):
    """ε-prediction network on images of the task's shape; `diffusion.ddim_denoise` runs DDIM with
    it (`ebt.image_protocol.denoise` at a budget)."""

    def __init__(self, config: ModelConfig, task: Denoising):
        super().__init__()
        self.config, self.task = config, task
        d, p, c = config.dim, task.patch_size, task.channels
        self.backbone = PatchTransformer(task.image_size, c, p, d, config.n_heads, config.ffn_width, config.n_layers)
        self.output = nn.Linear(d, c * p * p, bias=False)
        nn.init.zeros_(self.output.weight)  # DiT: a zero-initialized final layer
        self.max_timestep = timestep(task.noise_level)  # trained on 0 … t(λ_train)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predicted noise ε (B, C, H, W) of noised images x_t (B, C, H, W) at timesteps t (B,)."""
        c = timestep_features(t, self.config.dim).to(x_t.dtype)  # (B, D)
        patches = self.output(self.backbone(x_t, c))  # (B, P, C·p·p)
        return unpatchify(patches, self.task.channels, self.task.image_size, self.task.patch_size)
