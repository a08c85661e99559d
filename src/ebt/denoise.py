"""`ebt denoise`: score image runs at several noise levels, and compare an EBT with a DiT (SPEC §5).

- `noise_report`: per noise level, PSNR/MSE of the model's output and of the noisy input, and
  the forward passes it spent (EBT: thinking steps × samples; DiT: DDIM passes × repeats).
- `compute_curve`: PSNR against forward passes over the model's budgets (`ebt.image_protocol`:
  EBT 1 … 4 thinking steps; DiT DDIM on sub-grids of the timesteps, the full grid, recursive re-runs).
- `write_plots`: the curves at λ = 0.1 (in distribution) and 0.2 (out of distribution) and an
  image grid clean | noisy | first run | second run (`image_grid`, which `make demo` draws too).

Every model sees the same noisy images (the noise generator is seeded). Each run denoises at
`precision` (autocast, `ebt.evaluate`), by default the one it trained at (its train.precision).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ebt.baselines.diffusion import add_noise, timestep
from ebt.data.images import to_pixels, to_unit_range
from ebt.errors import ConfigError
from ebt.evaluate import PRECISION_OPTION, denoise_metrics
from ebt.files import atomic_write
from ebt.image_protocol import budgets, denoise
from ebt.options import ThinkingOptions
from ebt.packages import import_package
from ebt.precision import autocast, check_precision
from ebt.rundata import load_data

PLOT_LEVELS = (0.1, 0.2)  # in distribution (the training level) and out of distribution (SPEC §5)


def parse_levels(text: str) -> list[float]:
    """'0.1,0.2' → [0.1, 0.2], each a noise level on the schedule (SPEC §5), else a ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"noise = {text!r} is not allowed; it must be a string of comma-separated levels such as "
                          "'0.1,0.2'", field="noise")
    levels = []
    for part in text.split(","):
        try:
            level = float(part)
        except ValueError:
            raise ConfigError(f"noise = {text!r}: {part.strip()!r} is not a number; give levels like 0.1,0.2",
                              field="noise") from None
        if not 0 < level <= 1:  # NaN fails this too
            raise ConfigError(f"noise = {text!r}: {level} is not allowed; a noise level must be in (0, 1]", field="noise")
        timestep(level)  # raises below the schedule's first step (λ < 0.001)
        levels.append(level)
    return levels


def validation_images(run, count: int) -> torch.Tensor:
    """The first `count` validation images (uint8 (N, C, H, W)) of a run's data (checked against
    the data the run trained on)."""
    return load_data(run.config, run.path).splits.validation[:count]


def run_precision(run, precision: str | None) -> str:
    """`precision`, or the run's train.precision when None."""
    return run.config.train.precision if precision is None else precision


def noise_report(run, images: torch.Tensor, levels: list[float], options: ThinkingOptions | None = None, *,
                 repeats: int = 1, batch_size: int = 64, seed: int = 0, device="cpu",
                 precision: str | None = None) -> list[dict]:
    """One dict per level: noise, psnr, mse, noisy_psnr, noisy_mse, forward_passes, loss, images.
    `precision`: None for the run's train.precision."""
    precision = run_precision(run, precision)
    return [{"noise": level, **denoise_metrics(run.model, images, level, options, repeats=repeats,
                                               batch_size=batch_size, seed=seed, device=device,
                                               precision=precision)} for level in levels]


def compute_curve(run, images: torch.Tensor, level: float, *, seed: int = 0, batch_size: int = 64,
                  device="cpu", precision: str | None = None) -> tuple[list[tuple[float, float]], float]:
    """(forward passes, PSNR) points for one model at one level, over its budgets (`ebt.image_protocol`),
    and the PSNR of the noisy input. `precision`: None for the run's train.precision."""
    points, noisy = [], 0.0
    precision = run_precision(run, precision)
    for budget in budgets(run.model, level):
        m = denoise_metrics(run.model, images, level, **budget, batch_size=batch_size, seed=seed, device=device,
                            precision=precision)
        points.append((m["forward_passes"], m["psnr"]))
        noisy = m["noisy_psnr"]
    return points, noisy


def write_plots(runs: list, images: torch.Tensor, out: Path, *, seed: int = 0, device="cpu",
                batch_size: int = 64, precision: str | None = None) -> dict:
    """PSNR-vs-passes plots at λ = 0.1 and 0.2 and an image grid; returns the curves drawn.
    `precision` applies to every run; None runs each at its own train.precision."""
    for run in runs:
        check_precision(run_precision(run, precision), device, PRECISION_OPTION)
    plt = _pyplot()

    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    fig, axes = plt.subplots(1, len(PLOT_LEVELS), figsize=(5 * len(PLOT_LEVELS), 4))
    for ax, level in zip(axes, PLOT_LEVELS):
        for run in runs:
            points, noisy = compute_curve(run, images, level, seed=seed, device=device, batch_size=batch_size,
                                          precision=precision)
            curves[f"{run.path.name} ({run.config.model.kind}) λ={level}"] = points
            ax.plot(*zip(*points), marker="o", label=f"{run.config.model.kind}: {run.path.name}")
        ax.axhline(noisy, color="gray", linestyle="--", label="noisy input")
        ax.set_xscale("log")
        ax.set(xlabel="forward passes per image", ylabel="PSNR (dB)",
               title=f"λ = {level} ({'in' if level == runs[0].config.image.noise_level else 'out of'} distribution)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "psnr_vs_passes.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    image_grid(runs, images[:8], out / "denoised_grid.png", seed=seed, device=device, precision=precision)
    return curves


def _pyplot():
    """pyplot on the Agg backend (files, no display); PackageError in one line when matplotlib is
    missing or broken (`ebt.packages`)."""
    import_package("matplotlib", needed_for="the denoising plots").use("Agg")
    return import_package("matplotlib.pyplot", needed_for="the denoising plots")


def image_grid(runs: list, images: torch.Tensor, path: Path, *, seed: int, device, precision: str | None) -> None:
    """A PNG at `path`: for each of PLOT_LEVELS, a strip of the uint8 images (N, C, H, W) clean,
    noised (seeded by `seed`), then denoised by each run as trained (EBT: its thinking steps; DiT:
    DDIM on every timestep). `precision`: None runs each at its own train.precision."""
    plt = _pyplot()

    rows = []
    for level in PLOT_LEVELS:
        generator = torch.Generator().manual_seed(seed)
        clean = to_unit_range(images)
        noisy = add_noise(clean, timestep(level), torch.randn(clean.shape, generator=generator))
        row = [clean, noisy]
        for run in runs:
            with torch.no_grad(), autocast(run_precision(run, precision), device):
                row.append(denoise(run.model, noisy.to(device), level).y.reshape(clean.shape).cpu())
        rows.append((level, row))
    titles = ["clean", "noisy"] + [f"{r.config.model.kind}" for r in runs]
    n = len(images)
    fig, axes = plt.subplots(len(rows) * len(titles), 1, figsize=(n * 1.0, len(rows) * len(titles) * 1.1))
    for i, (level, row) in enumerate(rows):
        for j, (title, batch) in enumerate(zip(titles, row)):
            ax = axes[i * len(titles) + j]
            strip = to_pixels(batch).to(torch.uint8).permute(0, 2, 3, 1)  # (N, H, W, C)
            strip = torch.cat(list(strip), dim=1).numpy()  # (H, N·W, C)
            ax.imshow(strip.squeeze(-1) if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{title} (λ = {level})", fontsize=8, loc="left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
