"""Scoring a model: the metrics of each task on held-out data (SPEC §4, §5, §6).

- `Scoring`: how a model is scored (device, precision, batch size, seed), one value made where a
  command or API call starts and handed down.
- `evaluate`: text; per-window records (`WindowScores`: each window's mean loss, tokens scored,
  whether greedy decoding gives its targets, forward passes, steps) on a token stream, which each
  caller reduces to what it reports; `WindowScores.summary()` is the common reduction (mean loss
  in nats per token, perplexity, tokens, forward passes, and with a tokenizer the UTF-8 bytes the
  scored tokens stand for and bits per byte, which compares runs of different tokenizers). Windows
  of context_len + 1 tokens cover the stream in order (every token after the first is predicted
  once).
- `evaluate_clips`, `energy_by_frame`: video; next-frame errors against copying the last frame,
  and the EBT's energy along clips (uncertainty).
- `denoise_metrics`: images; PSNR/MSE of denoised images at a noise level.

EBT predictions start from random candidates drawn from a generator seeded by `Scoring.seed`, so
every score is repeatable. Thinking options arrive as one `ThinkingOptions`. The model's
predictions run under the autocast of `Scoring.precision` ('fp32', the default; 'bf16'; 'fp16'
on CUDA; `ebt.precision`; thinking's candidates stay float32, `ebt.think`), the metrics in
float32. The commands score at the run's `train.precision` unless `--precision` is given.

Read next: `ebt/suite.py` (the paper's budgets), `ebt/harness.py` (lm-evaluation-harness).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.baselines.diffusion import add_noise, timestep
from ebt.data.tokenizers import token_bytes
from ebt.data.tokens import PAD, TokenSplit, split_window
from ebt.data.images import to_pixels, to_unit_range
from ebt.image_protocol import denoise
from ebt.options import ThinkingOptions
from ebt.precision import autocast, check_precision
from ebt.tasks.text import perplexity
from ebt.think import Thought

PRECISION_OPTION = "precision"  # how the API's errors name the option (the CLI adds its flag)


@dataclass(frozen=True)
class Scoring:
    """How a model is scored, made once per command or API call and handed down: the `device`
    (a command picks it with `ebt.distributed.pick_device`; a string such as "cpu" is made a
    torch.device), the autocast `precision` of the model's predictions, the examples per forward
    pass (`batch_size`: windows, images or clips) and the `seed` of thinking's random initial
    candidates (and of the images' noise).

    `precision` None means each run at its own train.precision: what the commands and the suites
    take by default; `for_run` resolves it. A model alone is scored at a given precision.
    Checked when made: ConfigError for a precision not in ebt.precision.PRECISIONS, or fp16 off
    CUDA."""

    device: torch.device = torch.device("cpu")
    precision: str | None = "fp32"
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))  # "cuda:0" → a torch.device
        if self.precision is not None:
            check_precision(self.precision, self.device, PRECISION_OPTION)

    @staticmethod
    def split(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Keywords → (those naming a Scoring field, the rest)."""
        names = {f.name for f in dataclasses.fields(Scoring)}
        return {k: v for k, v in given.items() if k in names}, {k: v for k, v in given.items() if k not in names}

    @classmethod
    def of(cls, scoring: Scoring | None, given: dict[str, Any], **defaults: Any) -> Scoring:
        """`scoring`, or one made of its fields given as keywords (`precision="bf16"`, `device=`,
        `batch_size=`, `seed=`: what the API functions take) on top of `defaults`. TypeError for
        another keyword, or for both."""
        mine, rest = cls.split(given)
        if rest:
            raise TypeError(f"unexpected keyword arguments {', '.join(map(repr, sorted(rest)))}")
        if scoring is not None and mine:
            raise TypeError(f"give scoring= or its fields ({', '.join(sorted(mine))}), not both")
        return scoring if scoring is not None else cls(**{**defaults, **mine})

    def for_run(self, run, option: str = "precision") -> Scoring:
        """This scoring, at `run`'s train.precision when `precision` is None (checked against the
        device: ConfigError naming the run, and `option` as what it is the default of)."""
        if self.precision is not None:
            return self
        precision = run.config.train.precision
        check_precision(precision, self.device, f"{run.path}'s train.precision (the default of {option})")
        return dataclasses.replace(self, precision=precision)

    def autocast(self):
        """The context the model's predictions run in (a no-op at fp32)."""
        if self.precision is None:
            raise ValueError("Scoring.precision is None (each run's own): resolve it with Scoring.for_run(run)")
        return autocast(self.precision, self.device)

    def generator(self) -> torch.Generator:
        """A generator on the device, seeded: where thinking's initial candidates come from."""
        return torch.Generator(device=self.device).manual_seed(self.seed)


def scoring_for_model(scoring: Scoring | None, given: dict[str, Any], **defaults: Any) -> Scoring:
    """`Scoring.of` for a function that scores a model alone: its precision must be given (fp32
    by default); ConfigError for None, as for any other value not in PRECISIONS."""
    scoring = Scoring.of(scoring, given, **defaults)
    if scoring.precision is None:
        check_precision(None, scoring.device, PRECISION_OPTION)  # type: ignore[arg-type]  raises
    return scoring


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """The model in eval mode, without gradients; its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --- Text --------------------------------------------------------------------------------------


@dataclass
class WindowScores:
    """What scoring a text model gives: one entry per window (W), in stream order.

    loss: (W,) float32, the mean loss of the window's scored targets (nats per token; what a
        scaling fit's bootstrap resamples as "window_losses").
    tokens: (W,) int64, the targets scored (padding and prompts are not).
    greedy: (W,) bool, whether every scored target is the model's most likely token given the
        true tokens before it (for prompt/answer pairs: greedy decoding gives the answer).
    batch_loss: (W,) float64, the mean loss of the batch the window was scored in, as the task
        reports it (a float32 mean over the batch's targets): `summary()`'s mean loss weights these,
        which keeps the figures of earlier versions to the last bit (a mean of the windows' own
        float32 means differs in the 7th digit, and a perplexity in the 6th).
    forward_passes: (W,) float64, forward passes per token of the window's batch.
    steps: (W,) float64, thinking steps summed over the scored targets, with adaptive thinking
        (ThinkingOptions.tolerance); None without.
    bytes: (W,) int64, the UTF-8 bytes the scored targets stand for (`ebt.data.tokenizers.
        token_bytes`), when scored with a tokenizer; None without.
    """

    loss: Tensor
    tokens: Tensor
    greedy: Tensor
    batch_loss: Tensor
    forward_passes: Tensor
    steps: Tensor | None = None
    bytes: Tensor | None = None

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def log_likelihood(self) -> Tensor:
        """(W,) float32: log p of each window's scored targets, in nats (what lm_eval asks)."""
        return -self.loss * self.tokens

    def summary(self) -> dict[str, float]:
        """The common reduction: mean `loss` over all scored tokens (nats per token), its `ppl`,
        `tokens` scored, mean `forward_passes` per token, with adaptive thinking `mean_steps`
        (the steps positions actually used), and with a tokenizer the `bytes` the scored tokens
        stand for and `bpb`, bits per byte: loss × tokens / bytes / ln 2."""
        total = int(self.tokens.sum())
        weight = self.tokens.double()  # each window counts by its tokens
        loss = float((self.batch_loss * weight).sum()) / max(total, 1)
        result = {"loss": loss, "ppl": perplexity(loss), "tokens": total,
                  "forward_passes": float((self.forward_passes * weight).sum()) / max(total, 1)}
        if self.steps is not None:
            result["mean_steps"] = float(self.steps.sum()) / max(total, 1)
        if self.bytes is not None:
            n_bytes = int(self.bytes.sum())
            result.update(bytes=n_bytes, bpb=loss * total / max(n_bytes, 1) / math.log(2))
        return result

    @classmethod
    def cat(cls, parts: list[WindowScores]) -> WindowScores:
        """The records of consecutive batches as one."""
        if not parts:
            empty = torch.zeros(0, dtype=torch.float64)
            return cls(empty.float(), empty.long(), empty.bool(), empty, empty)
        columns = ("loss", "tokens", "greedy", "batch_loss", "forward_passes")
        optional = {name: None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
                    for name in ("steps", "bytes")}
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in columns), **optional)


def evaluate(
    model: nn.Module,
    tokens: Tensor | TokenSplit,
    options: ThinkingOptions | None = None,
    *,
    scoring: Scoring | None = None,
    max_windows: int | None = None,
    tokenizer: Any = None,
    **given,
) -> WindowScores:
    """Score a text model on token ids (N,), or on a TokenSplit in its layout (padding is not
    scored), window by window: the records of the first `max_windows` windows (all by default).
    `evaluate(...).summary()` gives the mean loss, perplexity, tokens and forward passes.

    `scoring` (a Scoring, or its fields as keywords: `precision="bf16"`, `batch_size=16`,
    `seed=0`, `device="cpu"`) says how; `options` (a ThinkingOptions, or its fields as keywords:
    `steps=3`) go to the EBT's `think` (a Transformer++ rejects any that are set). ConfigError
    for a precision not in ebt.precision.PRECISIONS, or fp16 off CUDA.

    `tokenizer` (by default the one of the model's run, `model.run.tokenizer`, when it has one)
    gives each token's UTF-8 bytes: the records then count the bytes of the scored targets, and
    the summary reports bits per byte. The tokens must be its ids.
    """
    given, thinking = Scoring.split(given)
    scoring = scoring_for_model(scoring, given)
    options = ThinkingOptions.of(options, **thinking)
    window = model.config.context_len + 1
    generator = scoring.generator()
    tokenizer = tokenizer if tokenizer is not None else getattr(getattr(model, "run", None), "tokenizer", None)
    table = None if tokenizer is None else torch.tensor(token_bytes(tokenizer), dtype=torch.int64)
    batches = []
    with evaluating(model):
        for batch in TokenSplit.of(tokens, "evaluation split").windows(window, scoring.batch_size, max_windows):
            x, targets = split_window(batch.to(scoring.device))
            with scoring.autocast():
                thought = model.predict(x, options, generator=generator)
            scores = _window_scores(model, thought, targets, adaptive=options.tolerance is not None)
            batches.append(scores if table is None else dataclasses.replace(scores, bytes=_bytes(table, targets)))
    return WindowScores.cat(batches)


def _bytes(table: Tensor, targets: Tensor) -> Tensor:
    """(B,) int64: the UTF-8 bytes of each window's scored targets (B, S), by the (V,) table
    (an id past its end, or PAD, counts none)."""
    ids = targets.cpu()
    known = (ids >= 0) & (ids < len(table))
    return torch.where(known, table[ids.clamp(0, len(table) - 1)], 0).sum(dim=1)


def _window_scores(model: nn.Module, thought: Thought, targets: Tensor, adaptive: bool) -> WindowScores:
    """The records of one batch: predictions `thought` (B, S, V) of targets (B, S)."""
    scored = targets != PAD  # (B, S)
    greedy = ((thought.y.argmax(dim=-1) == targets) | ~scored).all(dim=1)  # (B,)
    steps = None
    if adaptive:
        taken = thought.steps_taken
        steps = (torch.zeros(len(targets), dtype=torch.float64) if taken is None
                 else (taken.float() * scored).sum(dim=1).double().cpu())  # (B,)

    def each(value: float) -> Tensor:  # (B,): a figure of the whole batch, for each of its windows
        return torch.full((len(targets),), float(value), dtype=torch.float64)

    return WindowScores(model.task.example_losses(thought.y, targets).cpu(), scored.sum(dim=1).cpu(), greedy.cpu(),
                        each(model.task.loss(thought.y, targets)), each(thought.forward_passes), steps)


# --- Video -------------------------------------------------------------------------------------


def evaluate_clips(
    model: nn.Module,
    latents: Tensor,
    pixels_per_latent: float,
    options: ThinkingOptions | None = None,
    *,
    scoring: Scoring | None = None,
    max_clips: int | None = None,
    **given,
) -> dict[str, float]:
    """Next-frame errors on clips (N, T, C), per latent coordinate, with copy-the-last-frame beside.

    loss = smooth_l1 (β = 1) and mse of the predicted latents; pixel_mse is the mse of the decoded
    prediction against the decoded target per pixel, mse × `pixels_per_latent` (the frame encoder
    is affine and orthonormal up to one scale: `FrameEncoder.pixels_per_latent`). `options` go to
    the EBT's `think`; forward_passes is per frame. `scoring`: as `evaluate`'s.
    """
    scoring = scoring_for_model(scoring, given)
    options = options or ThinkingOptions()
    latents = latents[:max_clips] if max_clips is not None else latents
    generator = scoring.generator()
    sums = dict.fromkeys(("smooth_l1", "mse", "copy_smooth_l1", "copy_mse", "forward_passes"), 0.0)
    frames = 0
    with evaluating(model):
        for start in range(0, len(latents), scoring.batch_size):
            batch = latents[start:start + scoring.batch_size].to(scoring.device)
            x, targets = batch[:, :-1], batch[:, 1:]  # (B, S, C) each
            with scoring.autocast():
                thought = model.predict(x, options, generator=generator)
            y = thought.y.to(targets.dtype)  # (B, S, C)
            n = targets.shape[0] * targets.shape[1]
            for name, guess in (("", y), ("copy_", x)):
                sums[f"{name}smooth_l1"] += float(F.smooth_l1_loss(guess, targets, beta=1.0, reduction="sum"))
                sums[f"{name}mse"] += float(F.mse_loss(guess, targets, reduction="sum"))
            sums["forward_passes"] += thought.forward_passes * n
            frames += n
    c = latents.shape[-1]
    result = {k: v / max(frames * (1 if k == "forward_passes" else c), 1) for k, v in sums.items()}
    result.update(loss=result["smooth_l1"], pixel_mse=result["mse"] * pixels_per_latent,
                  copy_pixel_mse=result["copy_mse"] * pixels_per_latent, frames=frames)
    return result


def energy_by_frame(
    model: nn.Module,
    latents: Tensor,
    appears: np.ndarray,
    options: ThinkingOptions | None = None,
    *,
    scoring: Scoring | None = None,
    max_clips: int | None = None,
    around: int = 3,
    **given,
) -> dict[str, list[float]]:
    """The EBT's uncertainty along clips (SPEC §6): the mean final energy (and Smooth-L1) of each
    predicted frame 1 … T−1, and around the frame where a clip's second digit appears (offset 0
    = the first frame showing it; clips where it is there from frame 0 are left out).
    `scoring`: as `evaluate`'s."""
    scoring = scoring_for_model(scoring, given)
    latents = latents[:max_clips] if max_clips is not None else latents
    appears = torch.as_tensor(appears[:len(latents)])
    generator = scoring.generator()
    s = latents.shape[1] - 1
    energy, loss = torch.zeros(s, dtype=torch.float64), torch.zeros(s, dtype=torch.float64)
    offsets = torch.arange(-around, around + 1)
    by_offset, counts = torch.zeros(len(offsets), dtype=torch.float64), torch.zeros(len(offsets), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(latents), scoring.batch_size):
            batch = latents[start:start + scoring.batch_size].to(scoring.device)
            x, targets = batch[:, :-1], batch[:, 1:]
            with scoring.autocast():
                thought = model.think(x, options, generator=generator, score_final=True)
            e = thought.energies[-1].double().cpu()  # (B, S): final energy of the kept candidate
            energy += e.sum(0)
            loss += F.smooth_l1_loss(thought.y, targets, beta=1.0, reduction="none").mean(-1).double().sum(0).cpu()
            for row, a in zip(e, appears[start:start + scoring.batch_size]):  # row (S,): position j predicts frame j+1
                for i, k in enumerate(offsets):
                    frame = int(a + k)
                    if a > 0 and 1 <= frame <= s:
                        by_offset[i] += row[frame - 1]
                        counts[i] += 1
    n = len(latents)
    return {"frame": list(range(1, s + 1)), "energy": (energy / n).tolist(), "smooth_l1": (loss / n).tolist(),
            "offset": offsets.tolist(), "energy_by_offset": (by_offset / counts.clamp(min=1)).tolist()}


# --- Images ------------------------------------------------------------------------------------


def psnr(mse: Tensor) -> Tensor:
    """SPEC §5: 10·log10(255² / MSE), MSE on 0–255 pixels."""
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def denoise_metrics(
    model: nn.Module,
    images: Tensor,
    noise_level: float,
    options: ThinkingOptions | None = None,
    *,
    repeats: int = 1,
    scoring: Scoring | None = None,
    **given,
) -> dict[str, float]:
    """Noise uint8 images (N, C, H, W) at `noise_level` (seeded by `scoring.seed` on the CPU: the
    same noise for every model) and denoise them at one budget, `options` and `repeats`
    (`ebt.image_protocol.denoise`); `scoring` as `evaluate`'s, 64 images per batch by default.

    Returns the Smooth-L1 `loss` in [-1, 1] units, `mse` and `psnr` of the output and
    `noisy_mse`, `noisy_psnr` of the noisy input (0–255 after clamping; PSNR is the mean of
    per-image PSNRs), `forward_passes` per image and `images`.
    """
    scoring = scoring_for_model(scoring, given, batch_size=64)
    t = timestep(noise_level)
    generator = torch.Generator().manual_seed(scoring.seed)
    dtype = next(model.parameters()).dtype
    sums = {"loss": 0.0, "mse": 0.0, "psnr": 0.0, "noisy_mse": 0.0, "noisy_psnr": 0.0, "forward_passes": 0.0}
    with evaluating(model):
        for start in range(0, len(images), scoring.batch_size):
            clean = to_unit_range(images[start:start + scoring.batch_size], dtype)  # (B, C, H, W)
            noisy = add_noise(clean, t, torch.randn(clean.shape, generator=generator, dtype=dtype))
            clean, noisy = clean.to(scoring.device), noisy.to(scoring.device)
            with scoring.autocast():
                thought = denoise(model, noisy, noise_level, options, repeats=repeats)
            out = thought.y.reshape(clean.shape)
            n = clean.shape[0]
            target = to_pixels(clean)
            for name, pred in (("", out), ("noisy_", noisy)):
                mse = (to_pixels(pred) - target).pow(2).flatten(1).mean(1)  # (B,)
                sums[name + "mse"] += float(mse.sum())
                sums[name + "psnr"] += float(psnr(mse).sum())
            sums["loss"] += float(F.smooth_l1_loss(out, clean)) * n
            sums["forward_passes"] += thought.forward_passes * n
    total = max(len(images), 1)
    return {**{k: v / total for k, v in sums.items()}, "images": len(images)}
