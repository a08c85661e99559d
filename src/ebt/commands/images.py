"""`ebt denoise`: PSNR of an image run at several noise levels (SPEC §5), beside a second run
(the DiT) with plots; the scoring and the plots are `ebt.denoise`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ebt.checks import check_int
from ebt.commands.common import (MAX_COUNT, MAX_SEED, check_inference, device_field, json_field, option, pick,
                                 precision_field, required, run_precision, seed_field)
from ebt.denoise import noise_report, parse_levels, validation_images, write_plots
from ebt.errors import ConfigError
from ebt.files import standard_json
from ebt.runs import load_run
from ebt.options import ThinkingOptions


@dataclass
class DenoiseArgs:
    """`ebt denoise`: PSNR of an image run at several noise levels, optionally beside a second run."""

    run: Path = required("the image run to score", positional=True)
    noise: str = option("0.1,0.2", "comma-separated noise levels λ in (0, 1] (timestep λ·1000 − 1)")
    vs: Path | None = option(None, "a second image run (e.g. the DiT) scored side by side, with plots")
    plots: Path | None = option(None, "with --vs: where to write the plots (default: RUN/denoise)")
    images: int = option(256, "validation images scored")
    repeats: int = option(1, "DiT: run DDIM this many times, each on the last output")
    batch_size: int = option(64, "images denoised at once")
    seed: int = seed_field()
    json: bool = json_field("print a JSON list, one object per noise level")
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    device: str = device_field()
    precision: str | None = precision_field()  # for both runs; None: each run's train.precision

    def __post_init__(self) -> None:
        ThinkingOptions.of(self.options)  # a ThinkingOptions, not a dict of its fields
        check_inference(self.device, self.precision)
        parse_levels(self.noise)
        check_int("images", self.images, 1, MAX_COUNT)
        check_int("repeats", self.repeats, 1, 100)
        check_int("batch_size", self.batch_size, 1, 65536)
        check_int("seed", self.seed, 0, MAX_SEED)


def denoise_command(args: DenoiseArgs) -> int:
    levels = parse_levels(args.noise)
    if args.plots is not None and args.vs is None:
        raise ConfigError("plots draws the comparison with another run (vs); give vs or leave plots out", field="vs")
    device = pick(args.device)
    runs = [load_run(args.run, device)] + ([load_run(args.vs, device)] if args.vs else [])
    for run in runs:
        if run.config.model.task != "image":
            raise ConfigError(f"{run.path} is a {run.config.model.task} run; ebt denoise scores image runs")
    precisions = [run_precision(args.precision, run, device) for run in runs]
    images = validation_images(runs[0], args.images)
    reports = []
    for run, precision in zip(runs, precisions):
        # Thinking options are for the first run; the vs run is scored as trained.
        mine = run is runs[0]
        reports.append(noise_report(run, images, levels, args.options if mine else None,
                                    repeats=args.repeats if mine else 1, batch_size=args.batch_size,
                                    seed=args.seed, device=device, precision=precision))
    if args.json:
        print(standard_json(reports[0] if len(runs) == 1 else
                            [{"run": str(r.path), "kind": r.config.model.kind, "levels": rep}
                             for r, rep in zip(runs, reports)]))
    else:
        _print_levels(runs, reports, levels, len(images))
    if args.vs:
        plots = args.plots or args.run / "denoise"
        write_plots(runs, images, plots, seed=args.seed, device=device, batch_size=args.batch_size,
                    precision=args.precision)
        if not args.json:
            print(f"plots in {plots}")
    return 0


def _print_levels(runs: list, reports: list[list[dict]], levels: list[float], images: int) -> None:
    """One row per noise level: the noisy PSNR, then each run's PSNR and forward passes."""
    print(f"{images} validation images; PSNR and MSE on 0–255 pixels after clamping")
    head = "".join(f"{f'{r.config.model.kind} PSNR':>12}{'passes':>8}" for r in runs)
    print(f"{'noise':>6}{'noisy PSNR':>12}{head}")
    for i, level in enumerate(levels):
        cells = "".join(f"{rep[i]['psnr']:>12.2f}{rep[i]['forward_passes']:>8g}" for rep in reports)
        print(f"{level:>6g}{reports[0][i]['noisy_psnr']:>12.2f}{cells}")
