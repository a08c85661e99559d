"""An image run's data: clean images, noised at the training level for each batch (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ebt.baselines.diffusion import add_noise, timestep
from ebt.config import RunConfig
from ebt.data.images import ImageSplits, load_images, to_unit_range
from ebt.errors import CheckpointError
from ebt.evaluate import denoise_metrics
from ebt.rundata.fingerprint import content_hash, resolve_source, save_fingerprint


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
    source: str
    fingerprint: dict[str, str]

    @property
    def summary(self) -> str:
        s = self.splits
        return (f"{len(s.train):,} training / {len(s.validation):,} validation images from {s.source} "
                f"({'×'.join(map(str, s.train.shape[1:]))}), noise level {self.noise_level}")

    @property
    def overrides(self) -> dict[str, str]:
        return {"image.channels": str(self.splits.channels), "data.corpus": self.source}

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

    def validate(self, model, *, batch_size: int, max_examples: int, device) -> dict:
        images = self.splits.validation[:max_examples]
        return denoise_metrics(model, images, self.noise_level, batch_size=batch_size, device=device)

    def save(self, out: Path) -> None:
        save_fingerprint(out, **self.fingerprint)


def load_data(config: RunConfig, run_dir: Path | None = None) -> ImageData:
    timestep(config.image.noise_level)  # raises on a level off the schedule
    source = resolve_source(config.data.corpus)
    splits = load_images(source, config.image.image_size, config.data.validation_fraction)
    fingerprint = content_hash([splits.train.numpy().tobytes(), splits.validation.numpy().tobytes()])
    return ImageData(splits, config.image.noise_level, source, {"source": source, "sha256": fingerprint})
