"""`ebt scale run` and `ebt scale fit`: the scaling sweeps and fits behind "EBTs scale X% faster
than the Transformer++" (SPEC §7).

`run` trains one ordinary run directory per (model kind, axis value, seed) (`ebt.scaling.sweep`,
`ebt.scaling.running`); `fit` reads their validation losses (`ebt.scaling.curves`) and fits the
scaling rate of each kind with bootstrap intervals (`ebt.scaling.fit`); with `thinking`, also the
EBT's gains from thinking longer and from best-of-M along the axis, and their trend
(`ebt.scaling.curves.thinking_scores`, `ebt.scaling.gains`).
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ebt.checks import check_choice, check_int, check_real
from ebt.commands.common import MAX_SEED, device_field, directory, json_field, option, pick, required, seed_field
from ebt.errors import ConfigError, Interrupted
from ebt.files import standard_json
from ebt.plots import plot_scaling, plot_thinking_gains
from ebt.scaling import gains
from ebt.scaling.curves import METRICS, X_LABELS, Measured, collect, curves, thinking_scores
from ebt.scaling.fit import PAPER_RATIOS, fit_scaling, report
from ebt.scaling.running import print_commands, run_sweep, summary
from ebt.scaling.sweep import SWEEP_FILE, Sweep


def comma_values(text: str) -> list[str]:
    """'64,96,128' → ['64', '96', '128']; nothing between the commas is a ValueError."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("give comma-separated values, e.g. 64,96,128,192")
    return values


@dataclass
class ScaleRunArgs:
    """`ebt scale run`: a sweep over one axis for the EBT and the Transformer++ (ebt.scaling.sweep).

    With `out` already holding a sweep, fields left None are taken from its sweep.json, and any
    given must match it. `print_commands`: write sweep.json and print the `ebt train` line of
    every point not finished, instead of running them."""

    out: Path = required("sweep directory", parse=directory)
    axis: str | None = option(None, "data, width, depth, batch or params (required for a new sweep)")
    size: str | None = option(None, "base size of the text presets: tiny (default), 4xs, 3xs, xxs, ...")
    recipe: str | None = option(None, "the EBT's thinking recipe: s1 (default, text-ebt-SIZE) or s2 "
                                      "(text-ebt-s2-SIZE)")
    values: list[str] | None = option(None, "comma-separated axis values (default: around the base size), e.g. "
                                            "64,96,128,192; params: LAYERSxWIDTH, e.g. 1x128,2x128", parse=comma_values)
    seeds: int | None = option(None, "seeds per point (default 1): 0 … N−1")
    steps: int | None = option(None, "training steps of every run (default: the preset's)")
    data: str | None = option(None, "corpus name or path for every run (sets data.corpus)")
    windows: int | None = option(None, "validation windows per point, the same for all (default 256)")
    overrides: list[tuple[str, str]] = field(default_factory=list)  # applied to every point
    jobs: int = option(1, "points run side by side, one thread each (default 1)")
    print_commands: bool = option(False, "write sweep.json and print one `ebt train` line per point to run, instead "
                                         "of running them")

    def __post_init__(self) -> None:
        check_int("jobs", self.jobs, 1, 256)

    def sweep(self) -> Sweep:
        """The sweep these arguments name: the one saved in `out` with the fields given replacing
        its own, or a new one."""
        given = {"axis": self.axis, "size": self.size, "recipe": self.recipe, "values": self.values,
                 "seeds": self.seeds, "steps": self.steps, "data": self.data, "windows": self.windows,
                 "overrides": self.overrides or None}
        if (self.out / SWEEP_FILE).is_file():
            saved = Sweep.load(self.out)
            return Sweep(**{k: getattr(saved, k) if v is None else v for k, v in given.items()})
        if self.axis is None:
            raise ConfigError(f"axis is required to start a sweep ({self.out} holds none yet); "
                              "one of data, width, depth, batch, params", field="axis")
        return Sweep(**{k: v for k, v in given.items() if v is not None})


def scale_run_command(args: ScaleRunArgs) -> int:
    sweep = args.sweep()
    if args.print_commands:
        n = print_commands(sweep, args.out)
        print(f"# {n} point(s) to run; each line trains the weights `ebt scale run` would when it runs on as many "
              "torch threads (OMP_NUM_THREADS=1 as with --jobs > 1); then: "
              f"{shlex.join(['ebt', 'scale', 'fit', str(args.out)])}", file=sys.stderr)
        return 0
    try:
        result = run_sweep(sweep, args.out, jobs=args.jobs)
    except Interrupted as e:
        print(f"ebt scale run: {e}", file=sys.stderr)
        return e.exit_code
    print(summary(result))
    failed = [r["name"] for r in result["points"] if r["state"] != "finished"]
    if failed:
        print(f"ebt scale run: error: {len(failed)} point(s) failed: {', '.join(failed)} (their logs are in "
              f"{args.out / 'logs'}); fix the cause and run again: "
              f"{shlex.join(['ebt', 'scale', 'run', '--out', str(args.out)])}", file=sys.stderr)
        return 2
    print(f"fit it with: {shlex.join(['ebt', 'scale', 'fit', str(args.out)])}")
    return 0


@dataclass
class ScaleFitArgs:
    """`ebt scale fit`: the scaling rate of each model kind over the finished points of one or
    more sweep directories, its bootstrap interval, and their ratio (ebt.scaling.fit)."""

    dirs: list[Path] = required("sweep directories (e.g. a width and a depth sweep for --axis params)",
                                positional=True)
    axis: str | None = option(None, "refit on another axis: params (width/depth sweeps) or flops (any sweep)")
    json: bool = json_field()
    plots: Path | None = option(None, "write DIR/scale-AXIS.png: loss against x, fitted lines and bands")
    thinking: bool = option(False, "also score each EBT point at the paper suite's thinking budgets (think longer, "
                                   "best-of-M): the gains along the axis with intervals, and their trend")
    thinking_windows: int | None = option(None, "with --thinking: validation windows each budget scores (default: all "
                                                "of each point's)")
    skip_failed: bool = option(False, "fit without unfinished or failed points (listed)")
    replicates: int = option(2000, "bootstrap replicates (default 2000)")
    seed: int = seed_field("seed of the bootstrap")
    device: str = device_field(help="with --thinking: auto, cpu, cuda, ...")
    metric: str = option("loss", "what to fit: loss (nats per token) or bpb (bits per byte, text runs)")
    min_x: float | None = option(None, "fit only points with x ≥ this (e.g. past the start of a data curve)")
    max_x: float | None = option(None, "fit only points with x ≤ this")

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, METRICS)
        check_real("min_x", self.min_x, 0, low_open=True, optional=True)
        check_real("max_x", self.max_x, 0, low_open=True, optional=True)
        if self.min_x is not None and self.max_x is not None and self.min_x >= self.max_x:
            raise ConfigError(f"min_x = {self.min_x:g} must be below max_x = {self.max_x:g}", field="min_x")
        if not self.dirs:
            raise ConfigError("ebt scale fit needs at least one sweep directory", field="dirs")
        self.dirs = list({Path(d).resolve(): Path(d) for d in self.dirs}.values())  # a directory given twice counts once
        check_int("replicates", self.replicates, 100, 1_000_000)
        check_int("thinking_windows", self.thinking_windows, 1, 10**9, optional=True, unset="all of each point's")
        if self.thinking_windows is not None and not self.thinking:
            raise ConfigError(f"thinking_windows = {self.thinking_windows} applies only with thinking; set thinking "
                              "or leave thinking_windows unset", field="thinking_windows")
        check_int("seed", self.seed, 0, MAX_SEED)
        pick(self.device)


def scale_fit_command(args: ScaleFitArgs) -> int:
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result, used = _fit(args)
    if args.thinking:
        scores = thinking_scores(used, pick(args.device), windows=args.thinking_windows, say=say)
        result["thinking"] = {**gains.fit_gains(scores["x"], scores["budgets"], scores["losses"], scores["tokens"],
                                                reps=args.replicates, seed=args.seed),
                              "forward_passes": scores["forward_passes"]}
    if args.plots is not None:
        path = args.plots / f"scale-{result['axis']}.png"
        plot_scaling(result, path, axis=result["axis"], x_label=result["x_label"])
        result["plots"] = [str(path)]
        if args.thinking:
            path = args.plots / f"thinking-{result['axis']}.png"
            plot_thinking_gains(result["thinking"], path, x_label=result["x_label"], paper=gains.PAPER_BON5_GAIN_PCT)
            result["plots"].append(str(path))
    if args.json:
        print(standard_json(result))
    else:
        _print_fit(args, result, used)
    return 0


def _fit(args: ScaleFitArgs) -> tuple[dict, list[Measured]]:
    """The fit of the finished points in [min_x, max_x], and those points."""
    axis, measured, excluded = collect(args.dirs, args.axis, args.skip_failed, args.metric)
    low, high = args.min_x or 0.0, args.max_x or math.inf
    in_range = [m for m in measured if low <= m.x <= high]
    points = curves(in_range)
    for kind, name in (("ebt", "EBT"), ("transformer", "Transformer++")):
        xs = sorted(m.x for m in measured if m.kind == kind)
        if kind not in points and xs:
            raise ConfigError(f"no {name} point has x in [{low:g}, {high:g}] (min_x, max_x); "
                              f"its x run from {xs[0]:g} to {xs[-1]:g}", field="min_x")
        if kind not in points:
            raise ConfigError(f"{', '.join(map(str, args.dirs))}: no finished {name} point to fit"
                              + (f" ({len(excluded)} point(s) left out: {excluded[0]['run']}: {excluded[0]['why']}, …)"
                                 if excluded else ""))
    try:
        result = fit_scaling(points, reps=args.replicates, seed=args.seed)
    except ValueError as e:
        raise ConfigError(f"cannot fit {', '.join(map(str, args.dirs))}: {e}") from None
    return {"axis": axis, "metric": args.metric, "x_label": X_LABELS[axis], "sweeps": [str(d) for d in args.dirs],
            "x_range": [args.min_x, args.max_x], "paper_ratio": PAPER_RATIOS.get(axis), **result,
            "points_used": [{"run": str(m.run), "kind": m.kind, "seed": m.seed, "step": m.step, "x": m.x}
                            for m in in_range],
            "excluded": excluded}, in_range


def _print_fit(args: ScaleFitArgs, result: dict, used: list[Measured]) -> None:
    print(report(result, result["axis"]))
    if args.thinking:
        print()
        print(gains.report(result["thinking"], result["x_label"]))
    for e in result["excluded"]:
        print(f"left out: {e['run']}{' step ' + str(e['step']) if 'step' in e else ''}: {e['why']}")
    low, high = args.min_x or 0.0, args.max_x or math.inf
    print(f"points used: {len(used)} ({len({str(m.run) for m in used})} runs)"
          + (f"; x in [{low:g}, {high:g}]" if args.min_x or args.max_x else ""))
    if args.plots is not None:
        print(f"plot{'s' if len(result['plots']) > 1 else ''}: {', '.join(result['plots'])}")
