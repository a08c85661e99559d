"""The `ebt` command: train, eval, generate, bench.

    ebt train --preset text-ebt-tiny --out runs/ebt [--data PATH] [--section.key=value ...] [--resume]
    ebt eval runs/ebt [--data NAME_OR_PATH] [--steps N] [--samples M] [--json]
    ebt generate runs/ebt --prompt "ROMEO." --max-new-tokens 200 [--temperature T] [--steps N] [--samples M]
    ebt generate runs/video --frames 4 --length 12 [--clip I] [--out PATH]      (video runs)
    ebt denoise runs/image-ebt --noise 0.1,0.2 [--steps N] [--json] [--vs runs/image-dit --plots DIR]
    ebt bench [--size tiny] [--json]

Errors a user can fix (bad keys, missing data, corrupt runs) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ebt.errors import ConfigError, EBTError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers: train, evaluate, think, generate.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model from a preset",
                            description="Train a model. Any config field can be set with --section.key=value "
                                        "(e.g. --train.steps=500 --model.dim=256).")
    p.add_argument("--preset", required=True, help="e.g. text-ebt-tiny, text-transformer-tiny, text-ebt-xxs")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument("--data", help="corpus name or path to a UTF-8 .txt file or directory (sets data.corpus)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or config print-out")

    p = commands.add_parser("eval", help="loss and perplexity of a trained run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", help="corpus name or path (default: the run's validation split)")
    _thinking_args(p)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--suite", choices=["paper"], help="the paper's thinking / OOD / uncertainty evaluation")
    p.add_argument("--baseline", type=Path, help="with --suite: a Transformer++ run scored alongside")
    p.add_argument("--plots", type=Path, help="with --suite: where to write the plots (default: RUN/suite); "
                                              "video EBT runs: write the energy along clips there")

    p = commands.add_parser("generate", help="continue a prompt (text) or a clip (video)")
    p.add_argument("run", type=Path)
    p.add_argument("--prompt", help="text runs: the text to continue")
    p.add_argument("--frames", type=int, default=4, help="video runs: conditioning frames of a validation clip")
    p.add_argument("--length", type=int, default=None, help="video runs: frames to predict (default: to the clip's end)")
    p.add_argument("--clip", type=int, default=0, help="video runs: which validation clip")
    p.add_argument("--out", type=Path, help="video runs: PNG strip path (a GIF is written beside it; default RUN/generated.png)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token")
    _thinking_args(p)
    p.add_argument("--seed", type=int, default=0)

    p = commands.add_parser("denoise", help="image runs: PSNR of denoising at several noise levels (SPEC §5)")
    p.add_argument("run", type=Path)
    p.add_argument("--noise", default="0.1,0.2", help="comma-separated noise levels λ in (0, 1] (timestep λ·1000 − 1)")
    p.add_argument("--vs", type=Path, help="a second image run (e.g. the DiT) scored side by side, with plots")
    p.add_argument("--plots", type=Path, help="with --vs: where to write the plots (default: RUN/denoise)")
    p.add_argument("--images", type=int, default=256, help="validation images scored (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="DiT: run DDIM this many times, each on the last output")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per noise level")
    _thinking_args(p)

    p = commands.add_parser("bench", help="training step time, EBT vs Transformer++, side by side", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own small parser, in ebt.bench
        from ebt.bench import main as bench

        return bench(argv[1:])
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and args.command != "train":
            raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
        return {"train": _train, "eval": _eval, "generate": _generate, "denoise": _denoise}[args.command](args, extra)
    except EBTError as e:
        print(f"ebt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ebt {args.command}: interrupted", file=sys.stderr)
        return 130


def _thinking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=None, help="EBT thinking steps (default: as trained)")
    p.add_argument("--samples", type=int, default=1, help="EBT self-verification: best of M candidates")
    p.add_argument("--step-size", type=float, default=None, help="EBT: override the trained step size α")
    p.add_argument("--langevin-std", type=float, default=0.0, help="EBT: noise σ added before each step")
    p.add_argument("--tolerance", type=float, default=None,
                   help="EBT adaptive thinking: a position stops when its energy changes by less than this")


def _thinking(args) -> dict:
    """The thinking options of an eval/generate command line, checked."""
    checks = [("--steps", args.steps, args.steps is None or args.steps >= 1, "≥ 1"),
              ("--samples", args.samples, args.samples >= 1, "≥ 1"),
              ("--step-size", args.step_size, args.step_size is None or args.step_size > 0, "> 0"),
              ("--langevin-std", args.langevin_std, args.langevin_std >= 0, "≥ 0"),
              ("--tolerance", args.tolerance, args.tolerance is None or args.tolerance >= 0, "≥ 0")]
    for flag, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{flag} = {value} is not allowed; it must be {allowed}")
    return {"steps": args.steps, "samples": args.samples, "step_size": args.step_size,
            "langevin_std": args.langevin_std, "tolerance": args.tolerance}


def _device(request: str):
    from ebt.distributed import Distributed, pick_device

    return pick_device(request, Distributed())[0]


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """`--section.key=value` or `--section.key value` pairs from the arguments argparse left over."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {arg!r}; config overrides look like --train.steps=500")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"override {arg!r} has no value; write --{key}=VALUE")
            value, i = extra[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


def _train(args, extra) -> int:
    from ebt.checkpoint import load_config
    from ebt.presets import preset
    from ebt.train import train

    config = load_config(args.out) if args.resume else preset(args.preset)
    if args.data is not None:
        config = config.override("data.corpus", args.data)
    for key, value in parse_overrides(extra):
        config = config.override(key, value)
    result = train(config, args.out, resume=args.resume, quiet=args.quiet)
    if result:  # the main process of a distributed run reports for all
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"validation {shown}; run saved in {args.out}")
    return 0


def _eval(args, extra) -> int:
    from ebt.checkpoint import load_run
    from ebt.tasks import task_module

    thinking = _thinking(args)
    device = _device(args.device)
    run = load_run(args.run, device)
    if args.suite:
        return _suite(args, run, thinking, device)
    result, line = task_module(run.config.model.task).evaluate_run(run, args, thinking, device)
    print(json.dumps(result) if args.json else line)
    return 0


def _suite(args, run, thinking, device) -> int:
    from ebt.checkpoint import load_run
    from ebt.models import NOT_THINKING
    from ebt.suite import BUDGETS, paper_suite

    fixed = {k: v for k, v in thinking.items() if k in ("steps", "samples", "tolerance") and v != NOT_THINKING[k]}
    if fixed or args.data:
        raise ConfigError("--suite paper sets its own data and budgets; drop --data, --steps, --samples and --tolerance")
    baseline = load_run(args.baseline, device) if args.baseline else None
    plots = args.plots or args.run / "suite"
    result = paper_suite(run, baseline=baseline, out=plots, max_windows=args.max_windows or 64,
                         batch_size=args.batch_size, seed=args.seed, device=device,
                         step_size=thinking["step_size"], langevin_std=thinking["langevin_std"])
    if args.json:
        print(json.dumps(result))
        return 0
    head = "".join(f"{f'{s}x{m}' if m > 1 else f'{s} steps':>11}" for s, m in BUDGETS)
    print(f"perplexity by thinking budget (forward passes: {', '.join(str(s * m) for s, m in BUDGETS)})")
    print(f"{'dataset':<12}{'shift':>10}{head}{'longer':>10}{'verify':>10}{'T++':>11}")
    for name, e in result["datasets"].items():
        ppl = "".join(f"{b['ppl']:>11.5g}" for b in e["budgets"])
        tpp = f"{e['transformer_ppl']:>11.5g}" if "transformer_ppl" in e else f"{'':>11}"
        print(f"{name:<12}{e['ood_shift']:>10.4g}{ppl}{e['gain_think_longer_pct']:>9.3g}%"
              f"{e['gain_self_verify_pct']:>9.3g}%{tpp}")
    u = result["uncertainty"]
    print(f"uncertainty: Spearman(energy, loss) = {u['spearman_energy_loss']:.3f} over {u['tokens']} tokens; "
          f"mean energy real text {u['mean_energy_real_text']:.4f} vs random characters {u['mean_energy_random_characters']:.4f}")
    print(f"plots in {plots}")
    return 0


def _generate(args, extra) -> int:
    from ebt.checkpoint import load_run
    from ebt.tasks import task_module

    thinking = _thinking(args)
    device = _device(args.device)
    run = load_run(args.run, device)
    print(task_module(run.config.model.task).generate_run(run, args, thinking, device))
    return 0


def _denoise(args, extra) -> int:
    from ebt.checkpoint import load_run
    from ebt.denoise import noise_report, parse_levels, validation_images, write_plots

    levels = parse_levels(args.noise)
    if args.images < 1 or args.batch_size < 1 or args.repeats < 1:
        raise ConfigError(f"--images, --batch-size and --repeats must be ≥ 1; got {args.images}, {args.batch_size}, "
                          f"{args.repeats}")
    options = {k: v for k, v in _thinking(args).items() if v is not None}
    if args.repeats != 1:
        options["repeats"] = args.repeats
    device = _device(args.device)
    runs = [load_run(args.run, device)] + ([load_run(args.vs, device)] if args.vs else [])
    for run in runs:
        if getattr(run.model, "denoise", None) is None:
            raise ConfigError(f"{run.path} is a {run.config.model.task} run; ebt denoise scores image runs")
    images = validation_images(runs[0], args.images)
    reports = []
    for run in runs:
        # Thinking options are for the first run; the --vs run is scored as trained.
        own = options if run is runs[0] else {}
        reports.append(noise_report(run, images, levels, batch_size=args.batch_size, seed=args.seed, device=device,
                                    **own))
    if args.json:
        print(json.dumps(reports[0] if len(runs) == 1 else
                         [{"run": str(r.path), "kind": r.config.model.kind, "levels": rep} for r, rep in zip(runs, reports)]))
    else:
        print(f"{len(images)} validation images; PSNR and MSE on 0–255 pixels after clamping")
        head = "".join(f"{f'{r.config.model.kind} PSNR':>12}{'passes':>8}" for r in runs)
        print(f"{'noise':>6}{'noisy PSNR':>12}{head}")
        for i, level in enumerate(levels):
            cells = "".join(f"{rep[i]['psnr']:>12.2f}{rep[i]['forward_passes']:>8g}" for rep in reports)
            print(f"{level:>6g}{reports[0][i]['noisy_psnr']:>12.2f}{cells}")
    if args.vs:
        plots = args.plots or args.run / "denoise"
        write_plots(runs, images, plots, seed=args.seed, device=device, batch_size=args.batch_size)
        if not args.json:
            print(f"plots in {plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
