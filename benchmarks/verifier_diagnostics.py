"""How well a text EBT's energy verifies its own candidates, and how its descent behaves step by
step (`ebt.verifier.diagnose`; docs/results.md, "Which System 2 recipe thinks best"): for each
run and set, best-of-M on the first N windows with every candidate kept, and the descent traced
past the pick's steps.

    .venv/bin/python benchmarks/verifier_diagnostics.py RUN [RUN ...] [--windows 16] [--samples 10] \\
        [--sets validation,kjv,austen] > verifier.jsonl

One JSON line per (run, set): "run", "set", then `CandidateScores.summary()`'s figures at the
pick's steps (losses in nats per token): "spearman" (rank correlation of energy and loss across
the M candidates, mean over positions), "pick_is_best", "picked_loss" / "mean_loss" /
"oracle_loss", "gap_closed" (the share of the mean → oracle gap the energy's pick closes),
"soft_loss" per temperature and "ensemble_loss", "argmax_agreement", "energy_spread"; and
"trace", per step 1 … trace_steps, the candidates' mean energy and loss and the pick's figures
had it been made after that step. The sets are the paper suite's (the run's validation split,
kjv, austen, dyck, arithmetic), read as `ebt eval --suite paper` reads them. Each run thinks at
its own train.precision on --device.

This replaces benchmarks/thinking_trace.py: its per-step energy and loss at the trained α are the
trace here (`--trace-steps 10` for its 10 steps; a mean over the M candidates, not one sample);
its trace at α/2 is dropped (`--step-size` gives any α).
"""

import argparse
import sys
from pathlib import Path

import ebt
from ebt.commands.common import pick
from ebt.data.probes import OOD_SETS
from ebt.errors import EBTError
from ebt.evaluate import Scoring
from ebt.files import standard_json
from ebt.models import is_energy_based
from ebt.suite import IN_DISTRIBUTION, suite_datasets
from ebt.verifier import diagnose

SETS = (IN_DISTRIBUTION, *OOD_SETS)


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="text EBT run directories")
    parser.add_argument("--windows", type=int, default=16, help="windows per set (default 16)")
    parser.add_argument("--samples", type=int, default=10, help="candidates per position, M (default 10)")
    parser.add_argument("--sets", default="validation,kjv,austen",
                        help=f"comma-separated, of {', '.join(SETS)} (default validation,kjv,austen)")
    parser.add_argument("--steps", type=int, default=None, help="thinking steps before the pick (default: as trained)")
    parser.add_argument("--trace-steps", type=int, default=None, help="steps traced (default: twice --steps)")
    parser.add_argument("--step-size", type=float, default=None, help="α (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows thought about at once (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args(argv)
    args.sets = tuple(name.strip() for name in args.sets.split(","))
    unknown = [name for name in args.sets if name not in SETS]
    if unknown or not args.sets:
        parser.error(f"--sets {','.join(args.sets)}: {', '.join(unknown) or 'none'} not known; choose from "
                     f"{', '.join(SETS)}")
    for path in args.runs:
        if not (path / "config.json").is_file():
            parser.error(f"{path} is not a run directory (no config.json)")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse(argv)
    flags = {"samples": "--samples", "max_windows": "--windows", "trace_steps": "--trace-steps", "steps": "--steps",
             "step_size": "--step-size", "batch_size": "--batch-size", "seed": "--seed", "device": "--device"}
    try:
        scoring = Scoring(pick(args.device), precision=None, batch_size=args.batch_size, seed=args.seed)
        for path in args.runs:
            run = ebt.load_run(path, scoring.device)
            if run.config.model.task != "text" or not is_energy_based(run.model):
                parser.exit(2, f"{parser.prog}: error: {path} is a {run.config.model.task} {run.config.model.kind} "
                               "run; the verifier diagnostics read text EBT runs\n")
            mine = scoring.for_run(run)
            for name, tokens in suite_datasets(run, args.sets).items():
                figures = diagnose(run.model, tokens, scoring=mine, max_windows=args.windows, samples=args.samples,
                                   trace_steps=args.trace_steps, steps=args.steps, step_size=args.step_size).summary()
                print(standard_json({"run": str(path), "set": name, **figures}), flush=True)
    except EBTError as error:
        flag = flags.get(error.field or "")
        parser.exit(2, f"{parser.prog}: error: {error}{f' ({flag})' if flag else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
