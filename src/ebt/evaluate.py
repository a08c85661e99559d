"""Scoring a model: the metrics of each task on held-out data (SPEC §4, §5, §6).

- `evaluate`: text; mean loss (nats per token) and perplexity on a token stream. Windows of
  context_len + 1 tokens cover the stream in order (every token after the first is predicted once).
- `evaluate_clips`, `energy_by_frame`: video; next-frame errors against copying the last frame,
  and the EBT's energy along clips (uncertainty).
- `denoise_metrics`: images; PSNR/MSE of denoised images at a noise level.

EBT predictions start from random candidates drawn from a generator seeded here, so every
score is repeatable. Thinking options arrive as one `ThinkingOptions`. Each function takes a
`precision` ('fp32', the default; 'bf16'; 'fp16' on CUDA): the model's predictions run under that
autocast (`ebt.precision`; thinking's candidates stay float32, `ebt.think`), the metrics in
float32. The commands pass the run's `train.precision` unless `--precision` is given.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.baselines.diffusion import add_noise, timestep
from ebt.data.tokens import PAD, TokenSplit, split_window
from ebt.data.images import to_pixels, to_unit_range
from ebt.precision import autocast, check_precision
from ebt.tasks.text import perplexity
from ebt.think import ThinkingOptions

PRECISION_OPTION = "precision (--precision)"  # how the API's errors name the option


def evaluate(
    model: nn.Module,
    tokens: Tensor | TokenSplit,
    options: ThinkingOptions | None = None,
    *,
    batch_size: int = 16,
    max_windows: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    window_losses: bool = False,
    exact_match: bool = False,
    per_window: bool = False,
    precision: str = "fp32",
    **given,
) -> dict[str, float]:
    """Mean loss (nats per token), perplexity, tokens scored and forward passes per token of a
    text model on token ids (N,), or on a TokenSplit in its layout (padding is not scored).

    `window_losses`: also return each window's mean loss, in stream order, as a list under
    "window_losses" (what a scaling fit's bootstrap resamples; in the packed layout every window
    has context_len targets, so their mean is the loss).

    `exact_match`: also the share of windows whose every target is the model's most likely token
    given the true tokens before it — for prompt/answer pairs (`ebt.data.pairs`, one window
    each), whether greedy decoding would give the reference answer. `per_window`: also, under
    "per_window", lists in window order of "log_likelihood" (the sum of log p of the targets, in
    nats), "tokens" (targets scored) and "greedy" (whether all were the most likely) — what
    lm-evaluation-harness asks of a model (`ebt.harness`).

    `options` (a ThinkingOptions, or its fields as keywords: `steps=3`) go to the EBT's `think`
    (a Transformer++ rejects any that are set). With adaptive
    thinking, `forward_passes` is the mean of what the batches ran and `mean_steps` the steps
    positions actually used. `precision`: see the module docstring (ConfigError for a value
    not in ebt.precision.PRECISIONS, or fp16 off CUDA).
    """
    options = ThinkingOptions.of(options, **given)
    check_precision(precision, device, PRECISION_OPTION)
    window = model.config.context_len + 1
    generator = torch.Generator(device=device).manual_seed(seed)
    total_loss, total_tokens, total_passes, total_steps, total_windows = 0.0, 0, 0.0, 0.0, 0
    losses: list[float] = []
    windows = {"log_likelihood": [], "tokens": [], "greedy": []}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in TokenSplit.of(tokens, "evaluation split").windows(window, batch_size, max_windows):
            x, targets = split_window(batch.to(device))
            with autocast(precision, device):
                thought = model.predict(x, options, generator=generator)
            scored = targets != PAD  # (B, S)
            n = int(scored.sum())
            total_loss += float(model.task.loss(thought.logits, targets)) * n
            if window_losses or per_window:
                mean_losses = model.task.example_losses(thought.logits, targets)  # (B,)
                losses += mean_losses.tolist()
            if exact_match or per_window:
                greedy = ((thought.logits.argmax(dim=-1) == targets) | ~scored).all(dim=1)  # (B,)
                windows["greedy"] += greedy.tolist()
            if per_window:
                counts = scored.sum(dim=1)
                windows["tokens"] += counts.tolist()
                windows["log_likelihood"] += (-mean_losses * counts).tolist()
            total_windows += len(batch)
            total_passes += thought.forward_passes * n
            if thought.steps_taken is not None:
                total_steps += float(thought.steps_taken.float()[targets != PAD].sum())  # (B, S)
            total_tokens += n
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    result = {"loss": loss, "ppl": perplexity(loss), "tokens": total_tokens,
              "forward_passes": total_passes / max(total_tokens, 1)}
    if options.tolerance is not None:
        result["mean_steps"] = total_steps / max(total_tokens, 1)
    if window_losses:
        result["window_losses"] = losses
    if exact_match:
        result["exact_match"] = sum(windows["greedy"]) / max(total_windows, 1)
    if per_window:
        result["per_window"] = windows
    return result


# --- Video -------------------------------------------------------------------------------------


def evaluate_clips(
    model: nn.Module,
    latents: Tensor,
    pixels_per_latent: float,
    options: ThinkingOptions | None = None,
    *,
    batch_size: int = 16,
    max_clips: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """Next-frame errors on clips (N, T, C), per latent coordinate, with copy-the-last-frame beside.

    loss = smooth_l1 (β = 1) and mse of the predicted latents; pixel_mse is the mse of the decoded
    prediction against the decoded target per pixel, mse × `pixels_per_latent` (the frame encoder
    is affine and orthonormal up to one scale: `FrameEncoder.pixels_per_latent`). `options` go to
    the EBT's `think`; forward_passes is per frame. `precision`: see the module docstring.
    """
    options = options or ThinkingOptions()
    check_precision(precision, device, PRECISION_OPTION)
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
            with autocast(precision, device):
                thought = model.predict(x, options, generator=generator)
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
    result.update(loss=result["smooth_l1"], pixel_mse=result["mse"] * pixels_per_latent,
                  copy_pixel_mse=result["copy_mse"] * pixels_per_latent, frames=frames)
    return result


def energy_by_frame(
    model: nn.Module,
    latents: Tensor,
    appears: np.ndarray,
    options: ThinkingOptions | None = None,
    *,
    batch_size: int = 16,
    max_clips: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    around: int = 3,
    precision: str = "fp32",
) -> dict[str, list[float]]:
    """The EBT's uncertainty along clips (SPEC §6): the mean final energy (and Smooth-L1) of each
    predicted frame 1 … T−1, and around the frame where a clip's second digit appears (offset 0
    = the first frame showing it; clips where it is there from frame 0 are left out).
    `precision`: see the module docstring."""
    check_precision(precision, device, PRECISION_OPTION)
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
            with autocast(precision, device):
                thought = model.think(x, options, generator=generator, score_final=True)
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
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """Noise uint8 images (N, C, H, W) at `noise_level` (seeded: the same noise for every model)
    and denoise them with `model.denoise(noisy, noise_level, options, repeats=)`.

    Returns the Smooth-L1 `loss` in [-1, 1] units, `mse` and `psnr` of the output and
    `noisy_mse`, `noisy_psnr` of the noisy input (0–255 after clamping; PSNR is the mean of
    per-image PSNRs), `forward_passes` per image and `images`. `precision`: see the module docstring.
    """
    check_precision(precision, device, PRECISION_OPTION)
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
            with autocast(precision, device):
                thought = model.denoise(noisy, noise_level, options, repeats=repeats)
            out = thought.y.reshape(clean.shape)
            n = clean.shape[0]
            target = to_pixels(clean)
            for name, pred in (("", out), ("noisy_", noisy)):
                mse = (to_pixels(pred) - target).pow(2).flatten(1).mean(1)  # (B,)
                sums[name + "mse"] += float(mse.sum())
                sums[name + "psnr"] += float(psnr(mse).sum())
            sums["loss"] += float(F.smooth_l1_loss(out, clean)) * n
            sums["forward_passes"] += thought.forward_passes * n
    model.train(was_training)
    total = max(len(images), 1)
    return {**{k: v / total for k, v in sums.items()}, "images": len(images)}
