"""The image act of `make demo` (ebt.demo): the image EBT against the DiT on Fashion-MNIST (SPEC §5).

Both train the same steps from their presets (`image-ebt-tiny`, `image-dit-tiny`: the same
backbone, noise level λ = 0.1) into OUT/demo-image-ebt and OUT/demo-image-dit. On the first
held-out test images, both seeing the same seeded noise, each is scored with
`ebt.evaluate.denoise_metrics` at the training level and at λ = 0.2 (noisier than either trained
on): the EBT thinking 1 step (as trained) and 3, the DiT's DDIM sampler on 10 and 100 passes (100:
every timestep at λ = 0.1, as it trained). The PSNR (dB) and forward passes per image go into one
table, a grid of clean / noisy / EBT / DiT images into OUT/demo-images.png (`ebt.denoise.image_grid`),
and `verdict` says from the figures whether the EBT denoised better, at what cost in passes.
The paper's claim it checks: an EBT denoises better than a DiT with ~1% of its passes
(docs/results.md, "Image denoising (EBT vs DiT)").
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ebt.denoise import PLOT_LEVELS, image_grid, validation_images
from ebt.evaluate import denoise_metrics
from ebt.options import ThinkingOptions
from ebt.presets import preset
from ebt.runs import Run, load_run
from ebt.train import train

HIGHER_NOISE = PLOT_LEVELS[-1]  # λ = 0.2: the DiT trained on timesteps ≤ 99 (λ ≤ 0.1) only
BUDGETS = (("ebt", 1, "EBT, 1 step (as trained)"), ("ebt", 3, "EBT, 3 steps"),
           ("dit", 10, "DiT, DDIM 10 passes"), ("dit", 100, "DiT, DDIM 100 passes"))  # (model, steps or passes, label)
PRESETS = {"ebt": "image-ebt-tiny", "dit": "image-dit-tiny"}
GRID_IMAGES = 6
GRID = "demo-images.png"


def image_act(steps: int, images: int, out: Path) -> dict:
    """Train both image models `steps` steps, score them on `images` held-out images, print the
    table and write the grid; the figures, as demo.json's "images" (see `score`). Runs on one
    torch thread (restored after): on 2 cores shared with other jobs, two threads made an image EBT
    step 6.5× slower (OpenMP threads spinning for cores they do not get; docs/results.md, "Image
    denoising", saw the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _act(steps, images, out)
    finally:
        torch.set_num_threads(threads)


def _act(steps: int, images: int, out: Path) -> dict:
    runs, seconds = train_image_models(steps, out)
    held_out = validation_images(runs["ebt"], images)  # the first of Fashion-MNIST's 10,000 test images
    start = time.perf_counter()
    figures = score(runs, held_out)
    print_table(figures)
    image_grid([runs["ebt"], runs["dit"]], held_out[:GRID_IMAGES], out / GRID, seed=0, device="cpu", precision=None)
    print(f"images written to {out / GRID} (each model as trained: EBT 1 step, DiT DDIM every timestep)")
    seconds["scoring"] = time.perf_counter() - start
    print(f"image act time: training EBT {seconds['ebt']:.0f} s, DiT {seconds['dit']:.0f} s; scoring and grid "
          f"{seconds['scoring']:.0f} s")
    return {"steps": steps, "images": len(held_out), "presets": PRESETS, "seconds": seconds, "grid": GRID, **figures}


def train_image_models(steps: int, out: Path) -> tuple[dict[str, Run], dict[str, float]]:
    """The image EBT and DiT trained `steps` steps into OUT/demo-image-KIND (replacing earlier
    ones); the runs and their training seconds, by kind. Each run's own final validation is cut to
    one image: the act scores them itself."""
    runs, seconds = {}, {}
    for kind in ("ebt", "dit"):
        config = preset(PRESETS[kind])
        config.train.steps = steps
        config.train.eval_every = 0
        config.train.eval_examples = 1
        print(f"\n=== training {PRESETS[kind]} for {steps} steps (Fashion-MNIST, noise level "
              f"{config.image.noise_level}) ===")
        start = time.perf_counter()
        train(config, out / f"demo-image-{kind}", overwrite=True)
        seconds[kind] = time.perf_counter() - start
        runs[kind] = load_run(out / f"demo-image-{kind}")
    return runs, seconds


def score(runs: dict[str, Run], images) -> dict:
    """Every budget of BUDGETS at the training level and at HIGHER_NOISE on uint8 images
    (N, C, H, W): {"levels": [{"noise", "trained", "noisy_psnr", "budgets": [{"model", "label",
    "psnr" (dB), "mse" (0–255 pixels), "forward_passes" (per image)}]}]}."""
    trained = runs["ebt"].config.image.noise_level
    levels = []
    for level in (trained, HIGHER_NOISE):
        rows, noisy = [], None
        for kind, steps, label in BUDGETS:
            m = denoise_metrics(runs[kind].model, images, level, ThinkingOptions(steps=steps))
            rows.append({"model": kind, "label": label, "psnr": m["psnr"], "mse": m["mse"],
                         "forward_passes": m["forward_passes"]})
            noisy = m["noisy_psnr"]
        levels.append({"noise": level, "trained": level == trained, "noisy_psnr": noisy, "budgets": rows})
    return {"levels": levels}


def print_table(figures: dict) -> None:
    """The PSNR table: one row per budget, PSNR and passes per image at each level."""
    levels = figures["levels"]
    print(f"\n=== image denoising: PSNR (dB, higher is better) and forward passes per image on held-out "
          "Fashion-MNIST, the same noise for both models ===")
    heads = [f"λ = {lv['noise']}" + (" (trained)" if lv["trained"] else "") for lv in levels]
    print(f"{'model':<28}" + "".join(f"{h:>18}{'passes':>8}" for h in heads))
    print(f"{'noisy input':<28}" + "".join(f"{lv['noisy_psnr']:>18.2f}{'':>8}" for lv in levels))
    for i, row in enumerate(levels[0]["budgets"]):
        cells = "".join(f"{lv['budgets'][i]['psnr']:>18.2f}{lv['budgets'][i]['forward_passes']:>8.0f}" for lv in levels)
        print(f"{row['label']:<28}{cells}")


FEW_IMAGES = 16  # fewer held-out images than this: too few to read a gap of a few tenths of a dB


def verdict(figures: dict) -> str:
    """One line per level: whether the EBT's best budget denoised better than the DiT's sampler as
    it trained (its most passes), each with its passes, and where the DiT's best budget stands when
    that is another one."""
    lines = []
    for lv in figures["levels"]:
        ebt = max((b for b in lv["budgets"] if b["model"] == "ebt"), key=lambda b: b["psnr"])
        dits = [b for b in lv["budgets"] if b["model"] == "dit"]
        most, best = max(dits, key=lambda b: b["forward_passes"]), max(dits, key=lambda b: b["psnr"])
        where = "both trained there" if lv["trained"] else "noisier than either trained on"
        share = ebt["forward_passes"] / most["forward_passes"]
        line = (f"Images at λ = {lv['noise']} ({where}): the EBT denoises "
                f"{'better' if ebt['psnr'] > most['psnr'] else 'worse'} than the DiT, {_figure(ebt)} against "
                f"{_figure(most)}" + (f" ({share:.0%} of them)" if share < 1 else ""))
        if best is not most:
            gap = ebt["psnr"] - best["psnr"]
            line += f"; the DiT's best budget, {_figure(best)}, is {abs(gap):.1f} dB {'below' if gap > 0 else 'above'}"
        lines.append(line + ".")
    if figures.get("images", FEW_IMAGES) < FEW_IMAGES:
        lines.append(f"Only {figures['images']} image(s) scored: too few to tell a difference of a few tenths of a dB "
                     f"(use --images {FEW_IMAGES} or more).")
    return "\n".join(lines)


def _figure(budget: dict) -> str:
    passes = budget["forward_passes"]
    return f"{budget['psnr']:.1f} dB with {passes:.0f} pass{'es' if passes != 1 else ''}"
