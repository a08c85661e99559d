"""An image run's data: clean images, noised at the training level for each batch (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ebt.baselines.diffusion import add_noise, timestep
from ebt.config import RunConfig
from ebt.data.batches import TrainingBatches, example_normal
from ebt.data.images import ImageSplits, load_images, to_unit_range
from ebt.evaluate import Scoring, denoise_metrics
from ebt.rundata.fingerprint import content_hash, resolve_source, save_fingerprint

SIZES = ("image.image_size", "image.channels")  # what sets the data's memory


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

    @property
    def unused(self) -> dict[str, str]:
        """Config fields this data leaves unused, and why (`ebt.rundata`)."""
        if self.source == "fashion-mnist":
            return {"data.validation_fraction": "fashion-mnist comes split (its 10,000 test images validate)"}
        return {}

    unit = "images"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.shape[0]

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                         micro_batches: int = 1) -> TrainingBatches:
        """Endless micro-batches (b, 2, C, H, W): [noisy at the training level, clean], pixels in
        [-1, 1]; each image's noise comes from its own seed (`TrainingBatches`)."""
        images, t = self.splits.train, timestep(self.noise_level)

        def fetch(index: Tensor, seeds: Tensor) -> Tensor:
            clean = to_unit_range(images[index])  # (b, C, H, W)
            noisy = add_noise(clean, t, example_normal(seeds, clean.shape[1:]))
            return torch.stack((noisy, clean), dim=1)

        return TrainingBatches(len(images), fetch, batch_size, seed, rank, world_size, micro_batches)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, C, H, W) → noisy images x (B, C, H, W), clean targets (B, C, H, W)."""
        return batch[:, 0], batch[:, 1]

    def validate(self, model, *, batch_size: int, max_examples: int, device) -> dict:
        images = self.splits.validation[:max_examples]
        return denoise_metrics(model, images, self.noise_level, scoring=Scoring(device, batch_size=batch_size))

    def save(self, out: Path) -> None:
        save_fingerprint(out, **self.fingerprint)


def load_data(config: RunConfig, run_dir: Path | None = None, init: Path | None = None) -> ImageData:
    """The images of `data.corpus`, split (an image run saves no artifacts to reuse from `run_dir`
    or `init`)."""
    timestep(config.image.noise_level)  # raises on a level off the schedule
    source = resolve_source(config.data.corpus)
    splits = load_images(source, config.image.image_size, config.data.validation_fraction)
    fingerprint = content_hash([splits.train.numpy().tobytes(), splits.validation.numpy().tobytes()])
    return ImageData(splits, config.image.noise_level, source, {"source": source, "sha256": fingerprint})
