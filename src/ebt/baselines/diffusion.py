"""The Gaussian diffusion procedure of the DiT baseline (SPEC §5): noise schedule and DDIM sampler.

Kept apart from the network (`dit.py`), as improved-diffusion keeps its procedure apart from its
model: the DDPM linear β schedule, 1e-4 → 2e-2 over T = 1000 steps. A noise level λ is timestep
t = λ·T − 1 and noised = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, pixels in [-1, 1]. The image task's noise levels
(training batches, `ebt denoise`) mean the same for the EBT, which is never told the level.

Legend: B batch, C channels, H × W image.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ebt.checks import check_int
from ebt.errors import ConfigError

TIMESTEPS = 1000  # T of the DDPM schedule (SPEC §5)
BETA_START, BETA_END = 1e-4, 2e-2


def alphas_cumprod() -> Tensor:
    """ᾱ_t for t = 0 … T−1 of the linear β schedule, float64 (T,)."""
    betas = torch.linspace(BETA_START, BETA_END, TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timestep(noise_level: float) -> int:
    """SPEC §5: noise level λ ↦ timestep t = λ·T − 1 (λ = 0.1 → 99, 0.2 → 199)."""
    ok = isinstance(noise_level, (int, float)) and noise_level == noise_level
    t = int(round(noise_level * TIMESTEPS)) - 1 if ok and abs(noise_level) <= 1e6 else -1
    if not 0 <= t < TIMESTEPS:
        raise ConfigError(f"noise level {noise_level!r} is not allowed; it must be in [{1 / TIMESTEPS}, 1] "
                          f"(timestep λ·{TIMESTEPS} − 1 in [0, {TIMESTEPS - 1}])")
    return t


def add_noise(clean: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
    """√ᾱ_t·x₀ + √(1−ᾱ_t)·ε for images (B, C, H, W) and a timestep per image (B,) or one for all."""
    a = alphas_cumprod().to(clean.device)[torch.as_tensor(t, device=clean.device)].to(clean.dtype)
    a = a.reshape(-1, *(1,) * (clean.dim() - 1)) if a.dim() else a
    return a.sqrt() * clean + (1 - a).sqrt() * noise


def ddim_timesteps(noise_level: float, passes: int | None = None) -> list[int]:
    """Decreasing timesteps from the level's t to 0: `passes` of them on an even grid (default
    t + 1, every timestep). Raises ConfigError outside 1 … t + 1."""
    t = timestep(noise_level)
    passes = t + 1 if passes is None else passes
    if not 1 <= passes <= t + 1:
        raise ConfigError(f"DDIM from timestep {t} (noise {noise_level}) takes 1 … {t + 1} passes; got {passes}")
    return sorted({round(t * (1 - i / max(passes - 1, 1))) for i in range(passes)}, reverse=True)


def ddim(predict_noise: Callable[[Tensor, Tensor], Tensor], x: Tensor, timesteps: list[int]) -> Tensor:
    """Deterministic DDIM (η = 0) of images x (B, C, H, W) through decreasing `timesteps`, ending
    at x₀: one call of `predict_noise(x_t, t (B,)) -> ε (B, C, H, W)` each."""
    a = alphas_cumprod().to(x.device)
    for i, t in enumerate(timesteps):
        eps = predict_noise(x, torch.full((x.shape[0],), t, device=x.device))  # (B, C, H, W)
        a_t = a[t].to(x.dtype)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if i + 1 == len(timesteps):
            return x0
        a_next = a[timesteps[i + 1]].to(x.dtype)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


def ddim_denoise(predict_noise: Callable[[Tensor, Tensor], Tensor], noisy: Tensor, noise_level: float,
                 passes: int | None = None, repeats: int = 1) -> tuple[Tensor, int]:
    """Denoise level-λ images (B, C, H, W) with DDIM from the level's timestep t to 0: `passes`
    calls of `predict_noise` (default t + 1, every timestep) on an even grid of timesteps, the
    whole run `repeats` times (recursive: each run starts from the last one's output, as if at
    level λ again). Returns the images and the network passes run. ConfigError for passes
    outside 1 … t + 1 or repeats outside 1 … 100."""
    check_int("repeats", repeats, 1, 100)
    timesteps = ddim_timesteps(noise_level, passes)
    x = noisy
    with torch.no_grad():
        for _ in range(repeats):
            x = ddim(predict_noise, x, timesteps)
    return x, len(timesteps) * repeats
