"""`make demo`: train a tiny Transformer++ and a tiny System 2 EBT on Shakespeare, then let the EBT think.

Both train for the same steps on the same bytes. The EBT is then scored at the paper's thinking
budgets (`ebt.suite.BUDGETS`: 2 steps as trained, 3 steps, best-of-2/5/10 at 3 steps) on held-out
plays and on Austen's novels (out of distribution), beside the Transformer++; then its mean energy
and loss after each thinking step, and a sample from each model. The last line says whether
thinking helped, measured. About 5 minutes on 2 CPU cores; runs go to runs/demo-ebt and
runs/demo-transformer, the figures to runs/demo.json.

    python -m ebt.demo [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ebt.data.corpus import load_corpus
from ebt.data.tokens import encode_split, sequential_windows
from ebt.evaluate import evaluate
from ebt.files import atomic_write, standard_json
from ebt.generate import generate
from ebt.presets import preset
from ebt.rundata import load_data
from ebt.runs import load_run
from ebt.suite import thinking_budgets
from ebt.train import train

PROMPT = "HAMLET\nTo be, or not to be"
RECIPE = "text-ebt-s2-tiny"  # the recommended thinking recipe (docs/results.md, "Which System 2 recipe thinks best")
OOD = "austen"  # prose out of distribution (the paper suite's shift ≈ 1.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model")
    parser.add_argument("--windows", type=int, default=64, help="validation windows of 128 bytes per set")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.windows < 1:
        parser.error(f"--steps and --windows must be ≥ 1, got {args.steps} and {args.windows}")

    runs, seconds = {}, {}
    for kind, name in (("transformer", "text-transformer-tiny"), ("ebt", RECIPE)):
        config = preset(name)
        config.train.steps = args.steps
        config.train.eval_every = 0
        print(f"\n=== training {name} for {args.steps} steps ===")
        start = time.perf_counter()
        train(config, args.out / f"demo-{kind}", overwrite=True)  # `make demo` can be run again
        seconds[kind] = time.perf_counter() - start
        runs[kind] = load_run(args.out / f"demo-{kind}")
    ebt, transformer = runs["ebt"], runs["transformer"]
    print(f"\ntrain time: Transformer++ {seconds['transformer']:.0f} s, EBT {seconds['ebt']:.0f} s")

    streams = {"validation": load_data(ebt.config, ebt.path).validation}
    corpus = load_corpus(OOD)
    streams[OOD] = encode_split(corpus.train + corpus.validation, ebt.tokenizer, ebt.config.data.layout, OOD)
    results = {}
    for name, tokens in streams.items():
        entry = thinking_budgets(ebt.model, tokens, max_windows=args.windows)
        entry["transformer_ppl"] = evaluate(transformer.model, tokens, max_windows=args.windows)["ppl"]
        results[name] = entry
    print(f"\n=== perplexity: {args.windows} windows of held-out plays (validation) and of Austen's novels "
          "(out of distribution) ===")
    print(f"{'model':<34}{'passes/token':>13}" + "".join(f"{n:>14}" for n in streams))
    print(f"{'Transformer++':<34}{1:>13}" + "".join(f"{r['transformer_ppl']:>14.3f}" for r in results.values()))
    for i, b in enumerate(results["validation"]["budgets"]):
        label = f"EBT, {b['steps']} steps" + (f", best of {b['samples']}" if b["samples"] > 1 else "")
        label += " (as trained)" if i == 0 else ""
        cells = ""
        for r in results.values():
            ppl = r["budgets"][i]["ppl"]
            cells += f"{ppl:>8.3f}" + (f"{100 * (ppl / r['budgets'][0]['ppl'] - 1):>+5.1f}%" if i else " " * 6)
        print(f"{label:<34}{b['forward_passes']:>13}{cells}")

    batch = next(sequential_windows(streams["validation"], ebt.config.model.context_len + 1, 16))
    thought = ebt.model.think(batch[:, :-1], steps=6, score_final=True, generator=torch.Generator().manual_seed(0))
    energies = [float(e.mean()) for e in thought.energies]
    losses = [float(ebt.model.task.loss(c, batch[:, 1:])) for c in thought.candidates]  # c: (B, S, V)
    trained, fewest = ebt.config.think.steps, ebt.config.think.min_steps or ebt.config.think.steps
    span = f"{fewest}–{trained}" if fewest < trained else f"{trained}"
    print("\n=== EBT thinking on 16 validation windows: mean energy and loss (nats/byte) after each step ===")
    print(f"  start (random logits): energy {energies[0]:8.3f}")
    for i, (e, loss) in enumerate(zip(energies[1:], losses), start=1):
        note = f"  (trained with {span} steps)" if i == trained else ("  (thinking longer)" if i == trained + 1 else "")
        print(f"  after step {i}:          energy {e:8.3f}   loss {loss:.4f}{note}")

    print("\n=== samples (temperature 0.8) ===")
    prompt = ebt.tokenizer.encode(PROMPT)
    for kind, run in runs.items():
        text = run.tokenizer.decode(generate(run.model, prompt, 160, temperature=0.8, seed=0))
        print(f"--- {kind} ---\n{PROMPT}{text}\n")

    print(verdict(results))
    summary = {"steps": args.steps, "windows": args.windows, "recipe": RECIPE, "seconds": seconds,
               "thinking": results, "energy_per_step": energies, "loss_per_step": losses}
    atomic_write(args.out / "demo.json", lambda p: p.write_text(standard_json(summary, indent=2) + "\n"))
    print(f"summary written to {args.out / 'demo.json'}")


def verdict(results: dict[str, dict]) -> str:
    """What the figures say, in two lines: how much the best thinking budget lowered the EBT's
    perplexity against 2 steps on each set, and where that leaves it against the Transformer++."""
    gains = {name: r["gain_best_pct"] for name, r in results.items()}
    said = ", ".join(f"{g:.1f}% on {name}" for name, g in gains.items())
    if all(g >= 1 for g in gains.values()):
        first = f"Thinking helped: its best budget lowered the EBT's perplexity by {said}, against 2 steps."
    else:
        first = (f"Thinking did not help much at this size (best budget against 2 steps: {said}); docs/results.md, "
                 "\"Which System 2 recipe thinks best\", says what was tried and what limits it.")
    r = results["validation"]
    best, theirs = min(b["ppl"] for b in r["budgets"]), r["transformer_ppl"]
    side = "above" if best > theirs else "below"
    return (f"{first}\nAt its best the EBT's validation perplexity is {abs(best / theirs - 1):.0%} {side} the "
            f"Transformer++'s ({best:.3f} against {theirs:.3f}); the paper's EBTs trail at small scale too and "
            "overtake with data (SPEC §7).")


if __name__ == "__main__":
    main()
