"""Images: denoising with continuous candidates (SPEC §5).

A candidate is a whole image: thinking starts from the noisy image itself (not from noise) and
every step is one gradient step on its pixels, y ← y − α ∇_y E(y). The energy is one scalar per
image (the mean of the per-patch energies), so a candidate is (B, M, S = 1, C, H, W): one
"position" per image, and `think`'s per-position best-of-M and adaptive tolerance apply per image.
Loss: Smooth-L1 (β = 1) to the clean image, the reference code's choice.

Noise (SPEC §5): the DDPM linear β schedule, 1e-4 → 2e-2 over T = 1000 steps. A noise level λ
is timestep t = λ·T − 1 and noised = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, pixels in [-1, 1]. Models train at
`model.noise_level` (0.1); 0.2 is out of distribution. The EBT is never told the level; the DiT
baseline (`ebt.baselines.dit`) is, since it starts DDIM at the level's timestep.

Both image models answer `denoise(noisy, noise_level, **options) -> Thought` (the final images
in `thought.y`, the cost in `thought.forward_passes`); `denoise_metrics` scores either.

Legend: B batch, M samples, C channels, H × W image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.config import ModelConfig, RunConfig
from ebt.data.images import ImageSplits, load_images, to_pixels, to_unit_range
from ebt.errors import CheckpointError, ConfigError

TIMESTEPS = 1000  # T of the DDPM schedule (SPEC §5)
BETA_START, BETA_END = 1e-4, 2e-2


def alphas_cumprod() -> Tensor:
    """ᾱ_t for t = 0 … T−1 of the linear β schedule, float64 (T,)."""
    betas = torch.linspace(BETA_START, BETA_END, TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timestep(noise_level: float) -> int:
    """SPEC §5: noise level λ ↦ timestep t = λ·T − 1 (λ = 0.1 → 99, 0.2 → 199)."""
    t = int(round(noise_level * TIMESTEPS)) - 1
    if not 0 <= t < TIMESTEPS:
        raise ConfigError(f"noise level {noise_level!r} is not allowed; it must be in [{1 / TIMESTEPS}, 1] "
                          f"(timestep λ·{TIMESTEPS} − 1 in [0, {TIMESTEPS - 1}])")
    return t


def add_noise(clean: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
    """√ᾱ_t·x₀ + √(1−ᾱ_t)·ε for images (B, C, H, W) and a timestep per image (B,) or one for all."""
    a = alphas_cumprod().to(clean.device)[torch.as_tensor(t, device=clean.device)].to(clean.dtype)
    a = a.reshape(-1, *(1,) * (clean.dim() - 1)) if a.dim() else a
    return a.sqrt() * clean + (1 - a).sqrt() * noise


class Denoising:
    """The image task object (see ebt.tasks): what `think` and the training objective talk to."""

    def __init__(self, channels: int, image_size: int, noise_level: float):
        self.image_shape = (channels, image_size, image_size)
        self.candidate_dim = channels * image_size * image_size
        self.noise_level = noise_level

    def initial_candidate(self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The noisy images x (B, C, H, W) themselves, M copies each: (B, M, 1, C, H, W) in like's dtype."""
        return x.to(like.dtype).unsqueeze(1).unsqueeze(1).expand(-1, samples, 1, *x.shape[1:]).contiguous()

    @staticmethod
    def prepare(y: Tensor) -> Tensor:
        return y  # the energy reads the pixels as they are

    @staticmethod
    def loss(y: Tensor, targets: Tensor) -> Tensor:
        """Smooth-L1 (β = 1) of images y (B, [1,] C, H, W) against clean images (B, C, H, W)."""
        return F.smooth_l1_loss(y.reshape(targets.shape), targets)

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        return {}


def make_task(config: ModelConfig) -> Denoising:
    return Denoising(config.channels, config.image_size, config.noise_level)


def build_model(config: RunConfig) -> nn.Module:
    """The image architectures: the bidirectional EBT and the DiT baseline (SPEC §5)."""
    from ebt.baselines.dit import DiT
    from ebt.energy import BidirectionalEBT

    if config.model.kind == "ebt":
        if config.think.randomize_step_size:  # it draws one α per (sequence, position) of token contexts
            raise ConfigError("think.randomize_step_size = true is not supported for images (System 1 only)")
        return BidirectionalEBT(config.model, config.think)
    if config.model.kind == "dit":
        return DiT(config.model)
    raise ConfigError(f"model.kind = {config.model.kind!r} has no image model; image runs are 'ebt' or 'dit'")


# --- Data --------------------------------------------------------------------------------------


class NoisyImageBatches:
    """Endless training batches (B, 2, C, H, W): [noisy at the training level, clean], pixels in
    [-1, 1]. Images and noise come from one generator seeded by (seed, rank), so
    `state_dict`/`load_state_dict` resume them exactly."""

    def __init__(self, images: Tensor, batch_size: int, noise_level: float, seed: int, rank: int = 0):
        self.images, self.batch_size, self.t = images, batch_size, timestep(noise_level)
        self.seed, self.rank = seed, rank
        state = np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)

    def __iter__(self) -> NoisyImageBatches:
        return self

    def __next__(self) -> Tensor:
        index = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
        clean = to_unit_range(self.images[index])  # (B, C, H, W)
        noisy = add_noise(clean, self.t, torch.randn(clean.shape, generator=self.generator))
        return torch.stack((noisy, clean), dim=1)  # (B, 2, C, H, W)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or (state.get("seed"), state.get("rank")) != (self.seed, self.rank):
            raise CheckpointError("the saved training-batch state is for another seed or rank; resume with the same ones")
        self.generator.set_state(state["generator"])


@dataclass
class ImageData:
    splits: ImageSplits
    noise_level: float

    @property
    def summary(self) -> str:
        s = self.splits
        return (f"{len(s.train):,} training / {len(s.validation):,} validation images from {s.source} "
                f"({'×'.join(map(str, s.train.shape[1:]))}), noise level {self.noise_level}")

    @property
    def overrides(self) -> dict[str, str]:
        return {"model.channels": str(self.splits.channels)}

    unit = "images"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.shape[0]

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> NoisyImageBatches:
        return NoisyImageBatches(self.splits.train, batch_size, self.noise_level, seed, rank)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, C, H, W) → noisy images x (B, C, H, W), clean targets (B, C, H, W)."""
        return batch[:, 0], batch[:, 1]

    def validate(self, model, *, batch_size: int, max_batches: int, device) -> dict:
        images = self.splits.validation[: batch_size * max_batches]
        return denoise_metrics(model, images, self.noise_level, batch_size=batch_size, device=device)

    def save(self, out: Path) -> None:
        pass  # an image run needs nothing besides its config and weights


def load_data(config: RunConfig, run_dir: Path | None = None) -> ImageData:
    timestep(config.model.noise_level)  # raises on a level off the schedule
    splits = load_images(config.data.corpus, config.model.image_size, config.data.validation_fraction)
    return ImageData(splits, config.model.noise_level)


def load_artifacts(config: RunConfig, run_dir: Path) -> None:
    return None


# --- Scoring -----------------------------------------------------------------------------------


def psnr(mse: Tensor) -> Tensor:
    """SPEC §5: 10·log10(255² / MSE), MSE on 0–255 pixels."""
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def denoise_metrics(
    model: nn.Module,
    images: Tensor,
    noise_level: float,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **options,
) -> dict[str, float]:
    """Noise uint8 images (N, C, H, W) at `noise_level` (seeded: the same noise for every model)
    and denoise them with `model.denoise(noisy, noise_level, **options)`.

    Returns the Smooth-L1 `loss` in [-1, 1] units, `mse` and `psnr` of the output and
    `noisy_mse`, `noisy_psnr` of the noisy input (0–255 after clamping; PSNR is the mean of
    per-image PSNRs), `forward_passes` per image and `images`.
    """
    t = timestep(noise_level)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    sums = {"loss": 0.0, "mse": 0.0, "psnr": 0.0, "noisy_mse": 0.0, "noisy_psnr": 0.0, "forward_passes": 0.0}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            clean = to_unit_range(images[start:start + batch_size], dtype)  # (B, C, H, W)
            noisy = add_noise(clean, t, torch.randn(clean.shape, generator=generator, dtype=dtype))
            clean, noisy = clean.to(device), noisy.to(device)
            thought = model.denoise(noisy, noise_level, **options)
            out = thought.y.reshape(clean.shape)
            n = clean.shape[0]
            target = to_pixels(clean)
            for name, pred in (("", out), ("noisy_", noisy)):
                mse = (to_pixels(pred) - target).pow(2).flatten(1).mean(1)  # (B,)
                sums[name + "mse"] += float(mse.sum())
                sums[name + "psnr"] += float(psnr(mse).sum())
            sums["loss"] += float(Denoising.loss(out, clean)) * n
            sums["forward_passes"] += thought.forward_passes * n
    model.train(was_training)
    total = max(len(images), 1)
    return {**{k: v / total for k, v in sums.items()}, "images": len(images)}


def evaluate_run(run, args, thinking: dict, device) -> tuple[dict, str]:
    """`ebt eval` on an image run: (metrics, summary line) at the training noise level, on the
    run's validation split, or on every image of another set given by --data."""
    cfg = run.config
    source = args.data or cfg.data.corpus
    splits = load_images(source, cfg.model.image_size, cfg.data.validation_fraction)
    images, split = (splits.validation, "validation") if source == cfg.data.corpus else \
        (torch.cat((splits.train, splits.validation)), "all")
    if args.max_windows is not None:
        images = images[: args.batch_size * args.max_windows]
    options = {k: v for k, v in thinking.items() if v is not None}
    result = denoise_metrics(run.model, images, cfg.model.noise_level, batch_size=args.batch_size, seed=args.seed,
                             device=device, **options)
    result = {"run": str(run.path), "kind": cfg.model.kind, "data": source, "split": split,
              "noise": cfg.model.noise_level, **result}
    line = (f"{run.path} ({cfg.model.kind}) on {source} [{split}], noise {cfg.model.noise_level}: "
            f"PSNR {result['psnr']:.2f} dB (noisy {result['noisy_psnr']:.2f}), MSE {result['mse']:.2f}, "
            f"loss {result['loss']:.4f}, {result['images']} images, {result['forward_passes']:g} forward passes per image")
    return result, line


def generate_run(run, args, thinking: dict, device) -> str:
    raise ConfigError(f"{run.path} is an image run: it denoises rather than generates; use `ebt denoise {run.path}`")
