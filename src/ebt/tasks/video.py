"""Video: next-frame prediction with continuous candidates (SPEC §2 "Continuous candidates", §6).

A candidate is a vector in the frozen frame encoder's latent space (`ebt.data.video`), started
from N(0, I) and read by the energy model as it is (`prepare` is the identity): thinking steps
y ← y − α ∇_y E on the latent itself. Loss: Smooth-L1 (β = 1) to the true next frame's latent.
The context enters through a linear map of latents (`input_embedding`) instead of a token
table; the same AutoregressiveEBT, `think` and trainer serve text and video. The Transformer++
regresses the next latent with the same loss.

`ebt eval RUN --json` reports smooth_l1 and mse of next-frame latents against copying the last
frame (copy_smooth_l1, copy_mse) on the run's validation clips; `--plots DIR` draws the EBT's
energy along the clips (uncertainty, SPEC §6). `ebt generate RUN --frames K --length N` rolls
out from K frames of a validation clip and writes a PNG strip and a GIF.

Legend: B batch, M samples, S = T − 1 predicted frames, T frames per clip, C latent width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.checkpoint import atomic_write
from ebt.config import ModelConfig, RunConfig
from ebt.data.video import (FRAME_SIZE, FrameEncoder, RandomClips, digit_split, fit_encoder, mnist_digits,
                            moving_digits, write_gif, write_strip)
from ebt.errors import CheckpointError, ConfigError
from ebt.models import is_energy_based, predict
from ebt.tasks import normal_candidates

ENCODER = "encoder.safetensors"
CORPUS = "moving-mnist"
# The clips are data, not a training choice: fixed seeds, so every run (EBT or Transformer++,
# any train.seed) sees the same training and validation clips.
TRAIN_SEED, VALIDATION_SEED = 0, 1


class NextFrame:
    def __init__(self, latent_dim: int):
        self.candidate_dim = latent_dim

    def initial_candidate(
        self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """N(0, I) latents (B, M, S, C) for context latents x (B, S, C), dtype and device of `like`."""
        return normal_candidates(x, samples, self.candidate_dim, like, generator)

    def input_embedding(self, dim: int) -> nn.Module:
        """A context frame's latent (C) → width D: a linear map, no bias (SPEC §2)."""
        return nn.Linear(self.candidate_dim, dim, bias=False)

    def prepare(self, y: Tensor) -> Tensor:
        return y  # a latent is read as it is; ∇E is taken with respect to it

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        return {}

    def loss(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean Smooth-L1 (β = 1) per latent coordinate of predictions y (…, C) against targets (…, C)."""
        return F.smooth_l1_loss(y.to(torch.promote_types(y.dtype, torch.float32)), targets.to(y.dtype), beta=1.0)


def make_task(config: ModelConfig) -> NextFrame:
    if config.latent_dim < 1:
        raise ConfigError("model.latent_dim is unset: it comes from the frame encoder (data.frame_encoder)")
    return NextFrame(config.latent_dim)


@dataclass
class VideoData:
    """Encoded training and validation clips, the encoder, and how the trainer batches and scores them."""

    encoder: FrameEncoder
    train: Tensor  # (N, T, C) latents
    validation: Tensor  # (N', T, C) latents

    @property
    def summary(self) -> str:
        n, t, c = self.train.shape
        return (f"{n:,} training / {len(self.validation):,} validation clips of {t} frames "
                f"({self.encoder.kind} latents, {c}-d)")

    @property
    def overrides(self) -> dict[str, str]:
        return {"model.latent_dim": str(self.encoder.dim)}

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> RandomClips:
        return RandomClips(self.train, batch_size, seed, rank)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """Clips (B, T, C) → context frames x (B, S, C) and next frames (B, S, C)."""
        return batch[:, :-1], batch[:, 1:]

    unit = "frames"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.shape[0] * targets.shape[1]

    def validate(self, model, *, batch_size: int, max_batches: int, device) -> dict:
        return evaluate_clips(model, self.validation, self.encoder, batch_size=batch_size, max_clips=max_batches,
                              device=device)

    def save(self, out: Path) -> None:
        atomic_write(out / ENCODER, self.encoder.save)


def clips(config: RunConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's clips of one split, uint8 (N, T, H, W), and the frame (N,) each second digit appears."""
    d = config.data
    if d.corpus != CORPUS:
        raise ConfigError(f"the video task generates its clips: data.corpus must be {CORPUS!r}, got {d.corpus!r}")
    count = d.clips if split == "train" else max(1, round(d.clips * d.validation_fraction))
    seed = TRAIN_SEED if split == "train" else VALIDATION_SEED
    return moving_digits(digit_split(mnist_digits(), split), count, config.model.context_len + 1, FRAME_SIZE, seed)


def encode(encoder: FrameEncoder, frames: np.ndarray) -> Tensor:
    return encoder.encode(torch.from_numpy(frames).float() / 255)  # (N, T, C)


def load_data(config: RunConfig, run_dir: Path | None = None) -> VideoData:
    """Generate the clips and fit the frame encoder on the training frames (or reuse a run's encoder)."""
    train, _ = clips(config, "train")
    validation, _ = clips(config, "validation")
    if run_dir is not None:
        encoder = load_encoder(run_dir)
    else:
        frames = torch.from_numpy(train).reshape(-1, FRAME_SIZE, FRAME_SIZE).float() / 255
        encoder = fit_encoder(frames, config.data.frame_encoder, config.data.encoder_dim)
    return VideoData(encoder, encode(encoder, train), encode(encoder, validation))


def load_encoder(run_dir: Path, latent_dim: int | None = None) -> FrameEncoder:
    path = Path(run_dir) / ENCODER
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no {ENCODER}")
    encoder = FrameEncoder.load(path)
    if latent_dim is not None and encoder.dim != latent_dim:
        raise CheckpointError(f"{path} gives {encoder.dim}-d latents but the config says model.latent_dim = {latent_dim}")
    return encoder


def load_artifacts(config: RunConfig, run_dir: Path) -> FrameEncoder:
    return load_encoder(run_dir, config.model.latent_dim)


# --- Scoring ------------------------------------------------------------------------------------


def evaluate_clips(
    model: nn.Module,
    latents: Tensor,
    encoder: FrameEncoder,
    *,
    batch_size: int = 16,
    max_clips: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **thinking,
) -> dict[str, float]:
    """Next-frame errors on clips (N, T, C), per latent coordinate, with copy-the-last-frame beside.

    loss = smooth_l1 (β = 1) and mse of the predicted latents; pixel_mse is the mse of the decoded
    prediction against the decoded target per pixel (the encoder is affine and orthonormal up to
    one scale, so it follows from mse). `thinking` options go to the EBT's `think`; forward_passes
    is per frame.
    """
    latents = latents[:max_clips] if max_clips is not None else latents
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = dict.fromkeys(("smooth_l1", "mse", "copy_smooth_l1", "copy_mse", "forward_passes"), 0.0)
    frames = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            batch = latents[start:start + batch_size].to(device)
            x, targets = batch[:, :-1], batch[:, 1:]  # (B, S, C) each
            thought = predict(model, x, generator=generator, **thinking)
            y = thought.y.to(targets.dtype)  # (B, S, C)
            n = targets.shape[0] * targets.shape[1]
            for name, guess in (("", y), ("copy_", x)):
                sums[f"{name}smooth_l1"] += float(F.smooth_l1_loss(guess, targets, beta=1.0, reduction="sum"))
                sums[f"{name}mse"] += float(F.mse_loss(guess, targets, reduction="sum"))
            sums["forward_passes"] += thought.forward_passes * n
            frames += n
    model.train(was_training)
    c = latents.shape[-1]
    result = {k: v / max(frames * (1 if k == "forward_passes" else c), 1) for k, v in sums.items()}
    pixels_per_latent = encoder.scale ** 2 * c / encoder.size ** 2
    result.update(loss=result["smooth_l1"], pixel_mse=result["mse"] * pixels_per_latent,
                  copy_pixel_mse=result["copy_mse"] * pixels_per_latent, frames=frames)
    return result


def energy_by_frame(
    model: nn.Module,
    latents: Tensor,
    appears: np.ndarray,
    *,
    batch_size: int = 16,
    max_clips: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    around: int = 3,
    **thinking,
) -> dict[str, list[float]]:
    """The EBT's uncertainty along clips (SPEC §6): the mean final energy (and Smooth-L1) of each
    predicted frame 1 … T−1, and around the frame where a clip's second digit appears (offset 0
    = the first frame showing it; clips where it is there from frame 0 are left out)."""
    latents = latents[:max_clips] if max_clips is not None else latents
    appears = torch.as_tensor(appears[:len(latents)])
    generator = torch.Generator(device=device).manual_seed(seed)
    s = latents.shape[1] - 1
    energy, loss = torch.zeros(s, dtype=torch.float64), torch.zeros(s, dtype=torch.float64)
    offsets = torch.arange(-around, around + 1)
    by_offset, counts = torch.zeros(len(offsets), dtype=torch.float64), torch.zeros(len(offsets), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            batch = latents[start:start + batch_size].to(device)
            x, targets = batch[:, :-1], batch[:, 1:]
            thought = model.think(x, generator=generator, score_final=True, **thinking)
            e = thought.energies[-1].double().cpu()  # (B, S): final energy of the kept candidate
            energy += e.sum(0)
            loss += F.smooth_l1_loss(thought.y, targets, beta=1.0, reduction="none").mean(-1).double().sum(0).cpu()
            for row, a in zip(e, appears[start:start + batch_size]):  # row (S,): position j predicts frame j+1
                for i, k in enumerate(offsets):
                    frame = int(a + k)
                    if a > 0 and 1 <= frame <= s:
                        by_offset[i] += row[frame - 1]
                        counts[i] += 1
    n = len(latents)
    return {"frame": list(range(1, s + 1)), "energy": (energy / n).tolist(), "smooth_l1": (loss / n).tolist(),
            "offset": offsets.tolist(), "energy_by_offset": (by_offset / counts.clamp(min=1)).tolist()}


# --- Commands -----------------------------------------------------------------------------------


def evaluate_run(run, args, thinking: dict, device) -> tuple[dict, str]:
    """`ebt eval RUN [--plots DIR]` on a video run: errors on its validation clips vs copying."""
    if args.data is not None:
        raise ConfigError(f"a video run is scored on its own validation clips ({CORPUS}); drop --data")
    frames, appears = clips(run.config, "validation")
    latents = encode(run.tokenizer, frames)
    result = evaluate_clips(run.model, latents, run.tokenizer, batch_size=args.batch_size, max_clips=args.max_windows,
                            seed=args.seed, device=device, **thinking)
    result = {"run": str(args.run), "kind": run.config.model.kind, "data": CORPUS, "split": "validation", **result}
    line = (f"{args.run} ({run.config.model.kind}) on {CORPUS} [validation]: smooth_l1 {result['smooth_l1']:.4f} "
            f"(copy-last-frame {result['copy_smooth_l1']:.4f}), mse {result['mse']:.4f} "
            f"(copy {result['copy_mse']:.4f}), {result['frames']:,} frames, "
            f"{result['forward_passes']:g} forward passes per frame")
    if args.plots is not None:
        if not is_energy_based(run.model):
            raise ConfigError("--plots draws the energy along clips: EBT runs only (a Transformer++ has no energy)")
        from ebt.plots import plot_energy_by_frame

        profile = energy_by_frame(run.model, latents, appears, batch_size=args.batch_size, max_clips=args.max_windows,
                                  seed=args.seed, device=device, **thinking)
        args.plots.mkdir(parents=True, exist_ok=True)
        atomic_write(args.plots / "energy_by_frame.json", lambda p: p.write_text(json.dumps(profile) + "\n"))
        path = plot_energy_by_frame(profile, args.plots / "energy_by_frame.png")
        result["energy_by_frame"] = profile
        line += f"; energy along clips in {path}"
    return result, line


def rollout(model: nn.Module, context: Tensor, length: int, *, generator: torch.Generator | None = None,
            **thinking) -> Tensor:
    """Latents (B, length, C) predicted one frame at a time after context latents (B, K, C), each
    prediction fed back as context; past the model's window the window slides."""
    window = model.config.context_len
    frames = context
    with torch.no_grad():
        for _ in range(length):
            thought = predict(model, frames[:, -window:], last_only=True, generator=generator, **thinking)
            frames = torch.cat((frames, thought.y[:, -1:].to(frames.dtype)), dim=1)  # (B, K+i+1, C)
    return frames[:, context.shape[1]:]


def generate_run(run, args, thinking: dict, device) -> str:
    """`ebt generate RUN --frames K --length N [--clip I] [--out PATH]`: a rollout from K frames of a
    validation clip, written as PNG strip (truth above, prediction below) and GIF (side by side)."""
    if args.prompt is not None:
        raise ConfigError("a video run continues clips, not prompts: drop --prompt; use --frames K --length N")
    frames, _ = clips(run.config, "validation")
    count, k = frames.shape[1], args.frames
    length = count - k if args.length is None else args.length
    if not 1 <= k <= count or length < 1:
        raise ConfigError(f"--frames must be in [1, {count}] and --length ≥ 1; got --frames {k}, --length {length}")
    if not 0 <= args.clip < len(frames):
        raise ConfigError(f"--clip = {args.clip} is not allowed; the run has {len(frames)} validation clips (0 … {len(frames) - 1})")
    encoder: FrameEncoder = run.tokenizer
    truth = torch.from_numpy(frames[args.clip]).float() / 255  # (T, H, W)
    latents = encoder.encode(truth).to(device)  # (T, C)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    predicted = rollout(run.model, latents[None, :k], length, generator=generator, **thinking)[0]  # (N, C)
    decoded = encoder.decode(predicted.cpu()).clamp(0, 1).numpy()  # (N, H, W)
    shown = np.concatenate((truth[:k].numpy(), decoded))  # (K+N, H, W): context, then prediction
    true_row = np.zeros_like(shown)
    true_row[:min(count, k + length)] = truth[:k + length].numpy()
    out = Path(args.out) if args.out is not None else run.path / "generated.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".png"), lambda p: write_strip(np.stack((true_row, shown)), p))
    atomic_write(out.with_suffix(".gif"), lambda p: write_gif(np.concatenate((true_row, shown), axis=-1), p))
    known = min(length, count - k)
    errors = ((predicted[:known].cpu() - latents[k:k + known].cpu()) ** 2).mean(-1).tolist()
    per_frame = ", ".join(f"{e:.3f}" for e in errors)
    return (f"{length} frames predicted from {k} of validation clip {args.clip}: {out.with_suffix('.png')} "
            f"(top: truth, bottom: context then prediction), {out.with_suffix('.gif')}\n"
            f"latent mse per predicted frame vs truth: {per_frame or '(past the clip)'}")
