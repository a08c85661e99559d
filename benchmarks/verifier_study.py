"""The verifier study (issue 22; docs/results.md, "Thinking that verifies"): scores and tables of
the cells that `benchmarks/verifier_study.sh` trains.

    python benchmarks/verifier_study.py score RUN [--windows 32]   # RUN.score.json beside RUN
    python benchmarks/verifier_study.py table DIR [--json]         # every DIR/*.score.json
    python benchmarks/verifier_study.py cost DIR [--repeats 6]     # seconds per training step, side by side

`score`: on WINDOWS windows of validation, KJV and Austen (the prose sets of the paper suite), the
perplexity at 2 steps (2 passes), 3 steps, best-of-10 at 3 steps, 6 steps (twice the trained 3)
and best-of-10 at 6 steps; the same with step acceptance (`accept_steps`) at 6 steps, and
best-of-10 at 3 steps scored at the decoded token (`score_decoded`); and the verifier diagnostics
(`ebt.verifier.diagnose`: best-of-10 at 3 steps, traced to 6, which also gives soft selection's
loss at each temperature). A model that starts at zero (think.start_std = 0) samples with its
trained Langevin σ at every budget (its samples would be identical without noise).

`table`: one markdown table of perplexities and gains (the issue's goal: ≥ 10% from the 2-pass
figure with thinking longer plus best-of-10; the best budget ≥ 7% below the paper recipe's 2-pass;
twice the steps never worse; best-of-10 ≥ 2% better than best-of-1 at the same steps; the pick
closing ≥ 30% of the mean→oracle gap), one of the verifier and selection figures. Seeds of a
cell (NAME-seedN) are averaged.

`cost`: the seconds of one training step of each cell's config, the cells interleaved step by
step in one process on the same batches (`ebt.train.train_step`), as ratios to the `ours` cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

import ebt.errors
from ebt.checkpoint import load_config
from ebt.data.batches import Batch
from ebt.evaluate import Scoring, evaluate
from ebt.files import standard_json
from ebt.models import build_model, is_energy_based
from ebt.objectives import make_objective
from ebt.options import ThinkingOptions
from ebt.parallel import Parallel
from ebt.rundata.text import TextData
from ebt.runs import load_run
from ebt.schedule import BETAS, lr_scheduler, parameter_groups
from ebt.precision import grad_scaler
from ebt.suite import suite_datasets
from ebt.train import train_step
from ebt.verifier import diagnose

SETS = ("validation", "kjv", "austen")
# (label, steps, samples, extra options)
BUDGETS = (("2", 2, 1, {}), ("3", 3, 1, {}), ("3x10", 3, 10, {}), ("6", 6, 1, {}), ("6x10", 6, 10, {}),
           ("6+accept", 6, 1, {"accept_steps": True}), ("6x10+accept", 6, 10, {"accept_steps": True}),
           ("3x10+decoded", 3, 10, {"score_decoded": True}))


def score(path: Path, windows: int, only: set[str] | None = None, previous: dict | None = None) -> dict:
    """The cell's figures; with `only`, those budgets recomputed into `previous` (a score file's)."""
    run = load_run(path)
    if run.config.model.task != "text" or not is_energy_based(run.model):
        raise SystemExit(f"verifier_study.py: error: {path} is not a text EBT run")
    think = run.config.think
    noise = think.langevin_std if think.start_std == 0 else 0.0
    streams = suite_datasets(run)
    result = previous or {"run": str(path), "windows": windows, "langevin_std": noise, "sets": {}}
    for name in SETS:
        entry = result["sets"].setdefault(name, {})
        for label, steps, samples, extra in BUDGETS:
            if only is None or label in only:
                options = ThinkingOptions(steps=steps, samples=samples, langevin_std=noise, **extra)
                entry[label] = evaluate(run.model, streams[name], options, scoring=Scoring(),
                                        max_windows=windows).summary()
        if only is None or "verifier" in only:
            entry["verifier"] = diagnose(run.model, streams[name], ThinkingOptions(steps=3, langevin_std=noise),
                                         max_windows=windows, samples=10, trace_steps=6).summary()
        result["sets"][name] = entry
        print(f"  {path.name} {name}: " + ", ".join(f"{k} {v['ppl']:.3f}" for k, v in entry.items() if "ppl" in v),
              file=sys.stderr)
    return result


def cell_rows(directory: Path) -> dict[str, list[dict]]:
    """Score files by cell name (seeds of one cell, NAME-seedN, together)."""
    cells: dict[str, list[dict]] = {}
    for f in sorted(directory.glob("*.score.json")):
        name = re.sub(r"-seed\d+$", "", f.name[: -len(".score.json")])
        cells.setdefault(name, []).append(json.loads(f.read_text()))
    return cells


def figures(scores: list[dict], paper_2pass: dict[str, float] | None) -> dict:
    """The goal's figures of one cell, averaged over its seeds."""
    def mean(get) -> float:
        return statistics.fmean(get(s) for s in scores)

    out = {"seeds": len(scores)}
    for name in SETS:
        ppl = {label: mean(lambda s: s["sets"][name][label]["ppl"]) for label, *_ in BUDGETS}
        ver = lambda key: mean(lambda s: s["sets"][name]["verifier"][key])  # noqa: E731
        soft = {tau: math.exp(mean(lambda s: s["sets"][name]["verifier"]["soft_loss"][tau]))
                for tau in scores[0]["sets"][name]["verifier"]["soft_loss"]}
        best = min(ppl.values())
        out[name] = {
            "ppl": ppl, "soft_ppl": soft,
            "gain_think_pct": 100 * (ppl["2"] - ppl["3x10"]) / ppl["2"],
            "best": min(ppl, key=ppl.get), "gain_best_pct": 100 * (ppl["2"] - best) / ppl["2"],
            "vs_paper_2pass_pct": 100 * (paper_2pass[name] - best) / paper_2pass[name] if paper_2pass else math.nan,
            "twice_steps_worse_pct": 100 * (max(ppl["6"] / ppl["3"], ppl["6x10"] / ppl["3x10"]) - 1),
            "best_of_10_vs_1_pct": 100 * (ppl["3"] - ppl["3x10"]) / ppl["3"],
            "gap_closed": ver("gap_closed"), "pick_is_best": ver("pick_is_best"), "spearman": ver("spearman"),
            "argmax_agreement": ver("argmax_agreement"),
        }
    return out


def table(directory: Path, as_json: bool) -> None:
    cells = cell_rows(directory)
    if not cells:
        raise SystemExit(f"verifier_study.py: error: no *.score.json in {directory}")
    paper = figures(cells["paper"], None) if "paper" in cells else None
    paper_2pass = {n: paper[n]["ppl"]["2"] for n in SETS} if paper else None
    rows = {name: figures(scores, paper_2pass) for name, scores in cells.items()}
    if as_json:
        print(standard_json(rows, indent=1))  # NaN (no paper cell) as null
        return
    short = {"validation": "val", "kjv": "KJV", "austen": "Austen"}
    print("| cell | seeds | set | 2 | 3 | 3×10 | 6 | 6×10 | 6 acc | 6×10 acc | 3×10 dec | soft τ=1 | gain 2→3×10 "
          "| best vs paper 2-pass | 6 vs 3 (+ = worse) | bo10 vs bo1 | gap closed | pick best | ρ |")
    print("|" + "---|" * 19)
    for name, row in rows.items():
        for s in SETS:
            r = row[s]
            p = r["ppl"]
            print(f"| {name} | {row['seeds']} | {short[s]} | " + " | ".join(f"{p[k]:.3f}" for k, *_ in BUDGETS) +
                  f" | {r['soft_ppl'].get('1', math.nan):.3f} | {r['gain_think_pct']:+.1f}% | {r['vs_paper_2pass_pct']:+.1f}% "
                  f"| {r['twice_steps_worse_pct']:+.1f}% | {r['best_of_10_vs_1_pct']:+.1f}% | {100 * r['gap_closed']:.0f}% "
                  f"| {100 * r['pick_is_best']:.0f}% | {r['spearman']:.2f} |")


def cost(directory: Path, repeats: int, warmup: int = 2) -> None:
    """Median seconds per training step of each cell's config, interleaved on the same batches."""
    torch.manual_seed(0)
    setups = {}
    for run_dir in sorted(p for p in directory.iterdir() if (p / "config.json").is_file() and "-seed" not in p.name):
        config = load_config(run_dir)
        if config.model.task != "text":
            print(f"{run_dir.name}: skipped, a {config.model.task} run", file=sys.stderr)
            continue
        model = build_model(config)
        optimizer = torch.optim.AdamW(parameter_groups(model, config.train, config.think.step_size_lr_mult), betas=BETAS)
        setups[run_dir.name] = partial(train_step, Parallel(make_objective(model), model, torch.device("cpu")),
                                       optimizer, lr_scheduler(optimizer, config.train, config.train.steps),
                                       grad_scaler("fp32", "cpu"), data=TextData, tc=config.train)
        b, s, v = config.train.batch_size, config.model.context_len, config.text.vocab_size
    if not setups:
        raise SystemExit(f"verifier_study.py: error: no text run directories in {directory}")
    times: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(warmup + repeats):
        batch = [Batch(torch.randint(0, v, (b, s + 1)), torch.randint(0, 2**62, (b,)))]
        for name, step in setups.items():
            start = time.perf_counter()
            step(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    reference = "ours" if "ours" in times else next(iter(times))
    base = statistics.median(times[reference])
    for name, t in times.items():
        print(f"{name}: {statistics.median(t):.3f} s per step, {statistics.median(t) / base:.2f}× {reference}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score one cell's run")
    s.add_argument("run", type=Path)
    s.add_argument("--windows", type=int, default=32)
    s.add_argument("--only", help="comma-separated budget labels (or 'verifier') to recompute into the existing "
                                  "score file, e.g. 6+accept,6x10+accept")
    t = sub.add_parser("table", help="the tables of a study directory")
    t.add_argument("dir", type=Path)
    t.add_argument("--json", action="store_true")
    c = sub.add_parser("cost", help="seconds per training step of each cell, side by side")
    c.add_argument("dir", type=Path)
    c.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            if args.windows < 1:
                parser.error(f"--windows must be ≥ 1, got {args.windows}")
            out = args.run.parent / f"{args.run.name}.score.json"
            only = set(args.only.split(",")) if args.only else None
            known = {label for label, *_ in BUDGETS} | {"verifier"}
            if only and (only - known or not out.is_file()):
                parser.error(f"--only takes labels of {sorted(known)} and an existing {out.name}")
            previous = json.loads(out.read_text()) if only else None
            if previous and previous["windows"] != args.windows:
                parser.error(f"{out.name} was scored on {previous['windows']} windows; give --windows "
                             f"{previous['windows']} so that its budgets stay comparable")
            result = score(args.run, args.windows, only, previous)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            tmp.replace(out)
        elif args.command == "table":
            table(args.dir, args.json)
        else:
            if args.repeats < 1:
                parser.error(f"--repeats must be ≥ 1, got {args.repeats}")
            cost(args.dir, args.repeats)
    except ebt.errors.EBTError as error:
        parser.exit(2, f"verifier_study.py: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
