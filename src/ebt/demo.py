"""`make demo`: train the tiny EBT and Transformer++ on Shakespeare side by side, then compare.

Prints their validation perplexities, the EBT's mean energy after each thinking step (two
trained steps, then two more: thinking longer) and a generated sample from each. Takes a few
minutes on 2 CPU cores. Runs go to runs/demo-ebt and runs/demo-transformer.

    python -m ebt.demo [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ebt.data.tokens import sequential_windows
from ebt.evaluate import evaluate
from ebt.files import atomic_write, standard_json
from ebt.generate import generate
from ebt.presets import preset
from ebt.rundata import load_data
from ebt.runs import load_run
from ebt.think import ThinkingOptions
from ebt.train import train

PROMPT = "HAMLET\nTo be, or not to be"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)

    runs, seconds = {}, {}
    for kind in ("transformer", "ebt"):
        config = preset(f"text-{kind}-tiny")
        config.train.steps = args.steps
        config.train.eval_every = 0
        print(f"\n=== training text-{kind}-tiny for {args.steps} steps ===")
        start = time.perf_counter()
        train(config, args.out / f"demo-{kind}", overwrite=True)  # `make demo` can be run again
        seconds[kind] = time.perf_counter() - start
        runs[kind] = load_run(args.out / f"demo-{kind}")

    data = load_data(runs["ebt"].config, runs["ebt"].path)
    windows = 128
    print(f"\n=== validation: {windows} windows of held-out plays ===")
    print(f"{'model':<24}{'train time':>12}{'val loss':>11}{'val ppl':>10}{'passes/token':>14}")
    results = {}
    for kind, run in runs.items():
        r = evaluate(run.model, data.validation, max_windows=windows)
        results[kind] = r
        print(f"{'text-' + kind + '-tiny':<24}{seconds[kind]:>11.0f}s{r['loss']:>11.4f}{r['ppl']:>10.3f}{r['forward_passes']:>14}")
    think_longer = evaluate(runs["ebt"].model, data.validation, ThinkingOptions(steps=4), max_windows=windows)
    print(f"{'text-ebt-tiny, 4 steps':<24}{'':>12}{think_longer['loss']:>11.4f}{think_longer['ppl']:>10.3f}"
          f"{think_longer['forward_passes']:>14}")

    batch = next(sequential_windows(data.validation, runs["ebt"].config.model.context_len + 1, 16))
    thought = runs["ebt"].model.think(batch[:, :-1], steps=4, score_final=True,
                                      generator=torch.Generator().manual_seed(0))
    energies = [float(e.mean()) for e in thought.energies]
    print("\n=== EBT thinking: mean energy of the candidate (validation batch) ===")
    print("  before step 1 (random start): " + f"{energies[0]:.4f}")
    for i, e in enumerate(energies[1:], start=1):
        note = " (trained steps)" if i == 2 else (" (thinking longer)" if i == 4 else "")
        print(f"  after step {i}: {e:.4f}{note}")

    print("\n=== samples (temperature 0.8) ===")
    prompt = runs["ebt"].tokenizer.encode(PROMPT)
    for kind, run in runs.items():
        text = run.tokenizer.decode(generate(run.model, prompt, 160, temperature=0.8, seed=0))
        print(f"--- {kind} ---\n{PROMPT}{text}\n")
    summary = {"steps": args.steps, "seconds": seconds, "validation": results,
               "ebt_4_steps": think_longer, "ebt_energy_per_step": energies}
    atomic_write(args.out / "demo.json", lambda p: p.write_text(standard_json(summary, indent=2) + "\n"))
    print(f"summary written to {args.out / 'demo.json'}")


if __name__ == "__main__":
    main()
