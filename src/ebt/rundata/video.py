"""A video run's data: Moving-MNIST clips generated in code, encoded by a frozen frame encoder
fitted on the training frames and saved with the run (`encoder.safetensors`), SPEC §6."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebt.checkpoint import CONFIG, ENCODER, load_config
from ebt.files import atomic_write
from ebt.config import RunConfig
from ebt.data.batches import TrainingBatches
from ebt.data.video import FRAME_SIZE, FrameEncoder, digit_split, fit_encoder, mnist_digits, moving_digits
from ebt.errors import CheckpointError, ConfigError
from ebt.evaluate import Scoring, evaluate_clips
from ebt.memory import check_fits
from ebt.rundata.fingerprint import content_hash, save_fingerprint

CORPUS = "moving-mnist"
# The clips are data, not a training choice: fixed seeds, so every run (EBT or Transformer++,
# any train.seed) sees the same training and validation clips.
TRAIN_SEED, VALIDATION_SEED = 0, 1
SIZES = ("video.clips", "model.context_len", "video.encoder_dim")  # what sets the data's memory


@dataclass
class VideoData:
    """Encoded training and validation clips, the encoder, and how the trainer batches and scores them."""

    encoder: FrameEncoder
    train: Tensor  # (N, T, C) latents
    validation: Tensor  # (N', T, C) latents
    fingerprint: dict[str, str]

    @property
    def summary(self) -> str:
        n, t, c = self.train.shape
        return (f"{n:,} training / {len(self.validation):,} validation clips of {t} frames "
                f"({self.encoder.kind} latents, {c}-d)")

    @property
    def overrides(self) -> dict[str, str]:
        return {"video.latent_dim": str(self.encoder.dim)}

    @property
    def unused(self) -> dict[str, str]:
        return {}

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                         micro_batches: int = 1) -> TrainingBatches:
        """Endless micro-batches of clips (b, T, C) drawn with replacement (`TrainingBatches`)."""
        clips = self.train
        return TrainingBatches(len(clips), lambda index, seeds: clips[index], batch_size, seed, rank, world_size,
                               micro_batches)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """Clips (B, T, C) → context frames x (B, S, C) and next frames (B, S, C)."""
        return batch[:, :-1], batch[:, 1:]

    unit = "frames"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.shape[0] * targets.shape[1]

    def validate(self, model, *, batch_size: int, max_examples: int, device) -> dict:
        return evaluate_clips(model, self.validation, self.encoder.pixels_per_latent,
                              scoring=Scoring(device, batch_size=batch_size), max_clips=max_examples)

    def save(self, out: Path) -> None:
        save_encoder(out, self.encoder)
        save_fingerprint(out, **self.fingerprint)


def clips(config: RunConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's clips of one split, uint8 (N, T, H, W), and the frame (N,) each second digit appears."""
    d, v = config.data, config.video
    if d.corpus != CORPUS:
        raise ConfigError(f"the video task generates its clips: data.corpus must be {CORPUS!r}, got {d.corpus!r}")
    count = v.clips if split == "train" else max(1, round(v.clips * d.validation_fraction))
    frames = config.model.context_len + 1
    # Drawn in float32 (N, T, H, W), then rounded to bytes (5 bytes a pixel at the peak): what cannot
    # fit is refused here, not by the allocator (or the OOM killer, once the pages are written).
    check_fits(count * frames * FRAME_SIZE * FRAME_SIZE * 5, "cpu",
               f"generating the {split} clips (video.clips = {v.clips}, each of model.context_len + 1 = {frames} "
               f"{FRAME_SIZE}×{FRAME_SIZE} frames)", "video.clips" if v.clips >= frames else "model.context_len")
    seed = TRAIN_SEED if split == "train" else VALIDATION_SEED
    return moving_digits(digit_split(mnist_digits(), split), count, frames, FRAME_SIZE, seed)


def encode(encoder: FrameEncoder, frames: np.ndarray) -> Tensor:
    return encoder.encode(torch.from_numpy(frames).float() / 255)  # (N, T, C)


def load_data(config: RunConfig, run_dir: Path | None = None, init: Path | None = None) -> VideoData:
    """Generate the clips and fit the frame encoder on the training frames, or reuse the encoder of
    `run_dir` (resume, eval) or `init` (a run started from that one's weights)."""
    train, _ = clips(config, "train")
    validation, _ = clips(config, "validation")
    if run_dir is not None or init is not None:
        encoder = load_encoder(run_dir or init, kind=load_config(run_dir or init).video.frame_encoder)
    else:
        frames = torch.from_numpy(train).reshape(-1, FRAME_SIZE, FRAME_SIZE).float() / 255
        encoder = fit_encoder(frames, config.video.frame_encoder, config.video.encoder_dim)
    # The clips are drawn in code from the digits; the digits are the data to recognise.
    fingerprint = {"source": CORPUS, "sha256": content_hash([mnist_digits().tobytes()])}
    return VideoData(encoder, encode(encoder, train), encode(encoder, validation), fingerprint)


def save_encoder(out: Path, encoder: FrameEncoder) -> None:
    """encoder.safetensors in directory `out`, what `load_encoder` reads back."""
    atomic_write(Path(out) / ENCODER, encoder.save)


def load_encoder(run_dir: Path, latent_dim: int | None = None, kind: str | None = None) -> FrameEncoder:
    """The frame encoder saved in a run directory, checked against the config's latent width and
    encoder kind (video.latent_dim, video.frame_encoder) when given: CheckpointError naming the field."""
    path = Path(run_dir) / ENCODER
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no {ENCODER}")
    encoder = FrameEncoder.load(path)
    if latent_dim is not None and encoder.dim != latent_dim:
        raise CheckpointError(f"{path} gives {encoder.dim}-d latents but the config says video.latent_dim = {latent_dim}")
    if kind is not None and encoder.kind != kind:
        raise CheckpointError(f"{Path(run_dir) / CONFIG} says video.frame_encoder = {kind!r}, but {path} holds a "
                              f"{encoder.kind!r} encoder: the config was edited or is another run's; set it back to "
                              f"{encoder.kind!r}")
    return encoder
