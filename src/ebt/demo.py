"""`make demo`: train a tiny Transformer++ and a tiny System 2 EBT on Shakespeare, then let the EBT think.

Both train for the same steps on the same bytes. The EBT is then scored at the paper's thinking
budgets (`ebt.suite.BUDGETS`: 2 steps, 3 steps, best-of-2/5/10 at 3 steps) on held-out
plays and on Austen's novels (out of distribution), beside the Transformer++; then its mean energy
and loss after each thinking step, and a sample from each model. The image act (`ebt.demo_images`)
then trains the image EBT and the DiT on Fashion-MNIST and scores their denoising (PSNR and forward
passes) at the training noise level and a higher one. The last lines say whether thinking helped
and whether the EBT denoised better, from those figures. About 2 minutes for the text act and 1½
for the image act on 2 idle CPU cores; runs go to runs/demo-ebt, runs/demo-transformer,
runs/demo-image-ebt and runs/demo-image-dit, the figures to runs/demo.json, the images to
runs/demo-images.png.

    python -m ebt.demo [--steps N] [--windows N] [--image-steps N] [--images N] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ebt.data.corpus import load_corpus
from ebt.data.tokens import encode_split, sequential_windows
from ebt.demo_images import image_act
from ebt.demo_images import verdict as image_verdict
from ebt.errors import EBTError, Interrupted
from ebt.evaluate import evaluate
from ebt.files import atomic_write, standard_json
from ebt.generate import generate
from ebt.presets import preset
from ebt.rundata import load_data
from ebt.runs import Run, load_run
from ebt.suite import thinking_budgets
from ebt.train import train
from ebt.verifier import diagnose

PROMPT = "HAMLET\nTo be, or not to be"
RECIPE = "text-ebt-s2-tiny"  # the recommended thinking recipe (docs/results.md, "Which System 2 recipe thinks best")
OOD = "austen"  # prose out of distribution (the paper suite's shift ≈ 1.1)


def main(argv: list[str] | None = None) -> int:
    """`make demo`: 0, or 130 / 143 after Ctrl-C / SIGTERM and 2 after an error, each in one line
    (the runs' resume hints do not apply: `make demo` starts again from the beginning)."""
    args = _arguments(argv)
    try:
        demo(args)
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"make demo: interrupted; running `make demo` again starts it from the beginning (it retrains both "
              f"models, replacing the runs in {args.out})", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except EBTError as e:
        print(f"make demo: error: {e}", file=sys.stderr)
        return 2
    return 0


def demo(args: argparse.Namespace) -> None:
    """The text act, then the image act (`--image-steps 0` skips it), printed and saved to OUT/demo.json."""
    runs, seconds = train_both(args.steps, args.out)
    ebt, transformer = runs["ebt"], runs["transformer"]
    print(f"\ntrain time: Transformer++ {seconds['transformer']:.0f} s, EBT {seconds['ebt']:.0f} s")
    streams = {"validation": load_data(ebt.config, ebt.path).validation}
    corpus = load_corpus(OOD)
    streams[OOD] = encode_split(corpus.train + corpus.validation, ebt.tokenizer, ebt.config.data.layout, OOD)
    results = {}
    for name, tokens in streams.items():
        entry = thinking_budgets(ebt.model, tokens, max_windows=args.windows)
        summary = evaluate(transformer.model, tokens, max_windows=args.windows).summary()
        entry.update(transformer_ppl=summary["ppl"], transformer_bpb=summary["bpb"])
        results[name] = entry
    print_budgets(results, ebt.config.think, args.windows)
    verifier = verifier_figures(ebt, streams, args.windows)
    energies, losses = thinking_trace(ebt, streams["validation"], args.windows)
    print("\n=== samples (temperature 0.8) ===")
    prompt = ebt.tokenizer.encode(PROMPT)
    for kind, run in runs.items():
        text = run.tokenizer.decode(generate(run.model, prompt, 160, temperature=0.8, seed=0))
        print(f"--- {kind} ---\n{PROMPT}{text}\n")
    images = image_act(args.image_steps, args.images, args.out) if args.image_steps else None
    print(verdict(results, args.windows, verifier))
    if images:
        print(image_verdict(images))
    summary = {"steps": args.steps, "windows": args.windows, "recipe": RECIPE, "seconds": seconds,
               "thinking": results, "verifier": verifier, "energy_per_step": energies, "loss_per_step": losses, "images": images}
    atomic_write(args.out / "demo.json", lambda p: p.write_text(standard_json(summary, indent=2) + "\n"))
    print(f"summary written to {args.out / 'demo.json'}")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ebt.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model (default 300)")
    parser.add_argument("--windows", type=int, default=64,
                        help=f"windows of 128 bytes scored per set (default 64; below {FEW_WINDOWS} the verdict "
                             "says the figures are too few to tell)")
    parser.add_argument("--image-steps", type=int, default=100,
                        help="training steps of the image EBT and the DiT (default 100; 0 skips the image act)")
    parser.add_argument("--images", type=int, default=64,
                        help="held-out Fashion-MNIST images the image act scores (default 64)")
    parser.add_argument("--out", type=Path, default=Path("runs"),
                        help="directory of the runs (demo-ebt, demo-transformer, demo-image-ebt, demo-image-dit), "
                             "demo.json and demo-images.png (default runs)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.windows < 1:
        parser.error(f"--steps and --windows must be ≥ 1, got {args.steps} and {args.windows}")
    if args.image_steps < 0:
        parser.error(f"--image-steps must be ≥ 0 (0 skips the image act), got {args.image_steps}")
    if not 1 <= args.images <= 10_000:
        parser.error(f"--images must be in 1 … 10000 (Fashion-MNIST's test images), got {args.images}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a directory (it holds the runs and demo.json)")
    return args


def train_both(steps: int, out: Path) -> tuple[dict[str, Run], dict[str, float]]:
    """The Transformer++ and the EBT trained `steps` steps into OUT/demo-KIND (replacing earlier
    ones: `make demo` can be run again); the runs and their training seconds, by kind."""
    runs, seconds = {}, {}
    for kind, name in (("transformer", "text-transformer-tiny"), ("ebt", RECIPE)):
        config = preset(name)
        config.train.steps = steps
        config.train.eval_every = 0
        print(f"\n=== training {name} for {steps} steps ===")
        start = time.perf_counter()
        train(config, out / f"demo-{kind}", overwrite=True)
        seconds[kind] = time.perf_counter() - start
        runs[kind] = load_run(out / f"demo-{kind}")
    return runs, seconds


def print_budgets(results: dict[str, dict], think, windows: int) -> None:
    """The perplexity table: the Transformer++, then the EBT at each thinking budget, per set
    (perplexity, bits per byte, and the change in perplexity against 2 steps)."""
    print(f"\n=== perplexity on {windows} windows of held-out plays (validation) and of Austen's novels (out of "
          f"distribution); the EBT trained with {think.min_steps or think.steps}–{think.steps} steps ===")
    print(f"{'model':<28}{'passes/token':>13}" + "".join(f"{n:>12}{'bits/byte':>10}{'vs 2 steps':>12}" for n in results))
    print(f"{'Transformer++':<28}{1:>13.1f}"
          + "".join(f"{r['transformer_ppl']:>12.3f}{r['transformer_bpb']:>10.3f}{'':>12}" for r in results.values()))
    for i, b in enumerate(results["validation"]["budgets"]):
        label = f"EBT, {b['steps']} steps" + (f", best of {b['samples']}" if b["samples"] > 1 else "")
        cells = ""
        for r in results.values():
            ppl = r["budgets"][i]["ppl"]
            cells += f"{ppl:>12.3f}{r['budgets'][i]['bpb']:>10.3f}" + (f"{100 * (ppl / r['budgets'][0]['ppl'] - 1):>+11.1f}%" if i else f"{'':>12}")
        print(f"{label:<28}{b['forward_passes']:>13.1f}{cells}")
    print("(best of M: M candidates think, the lowest final energy is kept; passes count its scoring pass too)")


VERIFIER_SAMPLES = 10


def verifier_figures(ebt: Run, streams: dict, windows: int) -> dict[str, dict]:
    """How well the EBT's energy picks among its own candidates (`ebt.verifier.diagnose`: best of
    10 at 3 steps, on up to 16 windows per set), printed one line per set, and returned."""
    print(f"\n=== the energy as a verifier: best of {VERIFIER_SAMPLES} at 3 steps, per position (chance picks the "
          f"best 1 time in {VERIFIER_SAMPLES}) ===")
    figures = {}
    for name, tokens in streams.items():
        f = diagnose(ebt.model, tokens, steps=3, samples=VERIFIER_SAMPLES, max_windows=min(16, windows),
                     trace_steps=3).summary()
        figures[name] = {k: f[k] for k in ("pick_is_best", "gap_closed", "spearman", "picked_loss", "mean_loss",
                                            "oracle_loss", "positions")}
        print(f"  {name:<11} picks the best candidate at {f['pick_is_best']:.0%} of positions; closes "
              f"{f['gap_closed']:.0%} of the gap from the mean candidate ({f['mean_loss']:.3f} nats) to the best "
              f"({f['oracle_loss']:.3f}); rank correlation of energy and loss ρ = {f['spearman']:.2f}")
    return figures


def thinking_trace(ebt: Run, tokens, windows: int) -> tuple[list[float], list[float]]:
    """The EBT's mean energy after each of 6 thinking steps (and at the start) and its loss after
    each, on up to 16 validation windows; printed, and returned."""
    think = ebt.config.think
    batch = next(sequential_windows(tokens, ebt.config.model.context_len + 1, min(16, windows)))
    thought = ebt.model.think(batch[:, :-1], steps=6, score_final=True, generator=torch.Generator().manual_seed(0))
    energies = [float(e.mean()) for e in thought.energies]
    losses = [float(ebt.model.task.loss(c, batch[:, 1:])) for c in thought.candidates]  # c: (B, S, V)
    print(f"\n=== EBT thinking on {batch.shape[0]} validation windows: mean energy and loss (nats per byte) after "
          "each step ===")
    print(f"  start (random logits): energy {energies[0]:8.3f}")
    for i, (e, loss) in enumerate(zip(energies[1:], losses), start=1):
        note = "  (the most steps it trained with)" if i == think.steps else (
            "  (thinking longer)" if i == think.steps + 1 else "")
        print(f"  after step {i}:          energy {e:8.3f}   loss {loss:.4f}{note}")
    return energies, losses


FEW_WINDOWS = 16  # fewer windows than this (2,048 bytes) per set: too few to read a gain of a few %


def verdict(results: dict[str, dict], windows: int = 64, verifier: dict[str, dict] | None = None) -> str:
    """What the figures say: whether thinking longer (3 steps) and thinking longer with
    self-verification (the best budget, named with its cost) lowered the EBT's perplexity against
    2 steps on each set, how well the energy picked among its candidates (`verifier`, from
    `verifier_figures`), and where that leaves the EBT against the Transformer++."""
    def said(key: str) -> str:
        return ", ".join(f"{-r[key]:+.1f}% on {name}" for name, r in results.items())

    r = results["validation"]
    best = min(r["budgets"], key=lambda b: b["ppl"])
    budget = f"{best['steps']} steps" + (f" × best of {best['samples']}" if best["samples"] > 1 else "")
    helped = all(e["gain_best_pct"] >= 1 for e in results.values())
    lines = [f"Thinking longer (3 steps against 2): perplexity {said('gain_think_longer_pct')}.",
             f"Best budget ({budget} on validation, {best['forward_passes']:.0f} passes per token): "
             f"{said('gain_best_pct')}."]
    if windows < FEW_WINDOWS:
        lines.append(f"Only {windows} window(s) per set: too few to tell a gain of a few % from noise "
                     f"(use --windows {FEW_WINDOWS} or more).")
    elif helped:
        lines.append("So thinking helped this EBT, at the cost of the passes above.")
    else:
        lines.append("So thinking did not help much at this size; docs/results.md, \"Which System 2 recipe thinks "
                     "best\", says what was tried and what limits it.")
    if verifier:
        picks = ", ".join(f"{v['pick_is_best']:.0%} on {name}" for name, v in verifier.items())
        gaps = [v["gap_closed"] for v in verifier.values() if v["gap_closed"] == v["gap_closed"]]  # not NaN
        closed = (f", closing at least {min(gaps):.0%} of the gap to an oracle's pick"
                  + (": a weak verifier still" if min(gaps) < 0.3 else "")) if gaps else ""
        lines.append(f"As a verifier the energy picked the best of {VERIFIER_SAMPLES} candidates at {picks} of "
                     f"positions (chance: {1 / VERIFIER_SAMPLES:.0%}){closed}.")
    theirs = r["transformer_ppl"]
    side = "above" if best["ppl"] > theirs else "below"
    lines.append(f"At its best the EBT's validation perplexity is {abs(best['ppl'] / theirs - 1):.0%} {side} the "
                 f"Transformer++'s ({best['ppl']:.3f} against {theirs:.3f}); the paper's EBTs trail at small scale "
                 "too and overtake with data (SPEC §7).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
