"""The DiT diffusion baseline for image denoising (SPEC §5).

The bidirectional EBT's backbone (`PatchTransformer`) with a timestep embedder in place of the
learned landscape vector, and a zero-initialized per-patch output predicting the noise ε
(ε-prediction, DDPM). It trains (`objectives.NoisePrediction`) on the low-noise range of the
linear-β schedule only, timesteps 0 … t(λ_train), and denoises a level-λ image with DDIM (η = 0)
from the level's timestep t = λ·T − 1 down to 0: t + 1 network passes (fewer if asked, on an
even sub-grid of timesteps). The recursive variant re-runs DDIM on its own output.

Legend: B batch, C channels, H × W image, P patches, D width, p patch side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebt.config import ModelConfig
from ebt.errors import ConfigError
from ebt.nn import PatchTransformer, unpatchify
from ebt.tasks import make_task
from ebt.tasks.image import alphas_cumprod, timestep
from ebt.think import Thought


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features (B, D) of integer timesteps t (B,), as DiT's timestep embedder reads."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[:, None] * freq  # (B, D/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class DiT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.task = make_task(config)
        d, p, c = config.dim, config.patch_size, config.channels
        self.backbone = PatchTransformer(config.image_size, c, p, d, config.n_heads, config.ffn_width, config.n_layers)
        self.output = nn.Linear(d, c * p * p, bias=False)
        nn.init.zeros_(self.output.weight)  # DiT: a zero-initialized final layer
        self.register_buffer("alphas_cumprod", alphas_cumprod(), persistent=False)  # (T,) float64
        self.max_timestep = timestep(config.noise_level)  # trained on 0 … t(λ_train)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predicted noise ε (B, C, H, W) of noised images x_t (B, C, H, W) at timesteps t (B,)."""
        c = timestep_features(t, self.config.dim).to(x_t.dtype)  # (B, D)
        patches = self.output(self.backbone(x_t, c))  # (B, P, C·p·p)
        return unpatchify(patches, self.config.channels, self.config.image_size, self.config.patch_size)

    def ddim(self, x: Tensor, timesteps: list[int]) -> Tensor:
        """Deterministic DDIM (η = 0) through decreasing `timesteps`, ending at x₀: one pass each."""
        a = self.alphas_cumprod
        for i, t in enumerate(timesteps):
            eps = self(x, torch.full((x.shape[0],), t, device=x.device))  # (B, C, H, W)
            a_t = a[t].to(x.dtype)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if i + 1 == len(timesteps):
                return x0
            a_next = a[timesteps[i + 1]].to(x.dtype)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x

    def budgets(self, noise_level: float) -> list[dict]:
        """`denoise` options spanning its compute: DDIM on sub-grids, the full grid, recursive re-runs."""
        full = timestep(noise_level) + 1
        return [{"steps": b} for b in sorted({b for b in (1, 2, 5, 10, 25, full) if b <= full})] + [{"repeats": 2}]

    def denoise(
        self,
        noisy: Tensor,
        noise_level: float,
        *,
        steps: int | None = None,
        repeats: int = 1,
        samples: int = 1,
        step_size: float | None = None,
        langevin_std: float = 0.0,
        tolerance: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Thought:
        """DDIM from the level's timestep t to 0 on images (B, C, H, W): `steps` passes (default
        t + 1, every timestep) on an even grid from t to 0, the whole run `repeats` times
        (recursive: each run starts from the last one's output, as if at level λ again).
        EBT thinking options (samples, step_size, langevin_std, tolerance) are rejected."""
        if samples != 1 or step_size is not None or langevin_std or tolerance is not None:
            raise ConfigError("a DiT cannot think: --samples, --step-size, --langevin-std and --tolerance apply to "
                              "EBT runs only (DiT takes --steps = DDIM passes and --repeats)")
        t = timestep(noise_level)
        steps = t + 1 if steps is None else steps
        if not 1 <= steps <= t + 1 or repeats < 1:
            raise ConfigError(f"DDIM from timestep {t} (noise {noise_level}) takes 1 … {t + 1} passes and "
                              f"repeats ≥ 1; got steps = {steps}, repeats = {repeats}")
        timesteps = sorted({round(t * (1 - i / max(steps - 1, 1))) for i in range(steps)}, reverse=True)
        x = noisy
        with torch.no_grad():
            for _ in range(repeats):
                x = self.ddim(x, timesteps)
        return Thought([x], forward_passes=len(timesteps) * repeats)
