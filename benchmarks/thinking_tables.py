"""Markdown tables of the thinking experiment (benchmarks/thinking_experiment.sh) or of the recipe
study (benchmarks/thinking_recipes.sh) from their JSON files.

    python benchmarks/thinking_tables.py runs/thinking
    python benchmarks/thinking_tables.py --recipes runs/recipes
"""

import json
import sys
from pathlib import Path

ABLATION = [("s2-full", "full S2"), ("s2-no-random-alpha", "without random α"),
            ("s2-no-random-steps", "without random step count"), ("s2-no-langevin", "without Langevin noise"),
            ("s2-langevin-1", "Langevin σ = 1 instead of 3"),
            ("s2-no-replay", "without replay buffer")]


def samples(budget: dict) -> str:
    return f" × {budget['samples']}" if budget["samples"] > 1 else ""


def main(out: Path) -> None:
    full = json.loads((out / "s2-full.json").read_text())
    budgets = next(iter(full["datasets"].values()))["budgets"]
    head = " | ".join(f"{b['budget']} ({b['steps']} steps{samples(b)})" for b in budgets)
    print(f"| dataset | tokens | OOD shift | Transformer++ | {head} | think longer | + self-verify |")
    print("|---|---|---|---|" + "---|" * len(budgets) + "---|---|")
    for name, e in full["datasets"].items():
        ppl = " | ".join(f"{b['ppl']:.3f}" for b in e["budgets"])
        print(f"| {name} | {e['tokens']:,} | {e['ood_shift']:.2f} | {e.get('transformer_ppl', float('nan')):.3f} | {ppl} "
              f"| {e['gain_think_longer_pct']:+.1f}% | {e['gain_self_verify_pct']:+.1f}% |")
    u = full["uncertainty"]
    print(f"\nUncertainty: Spearman(energy, loss) = {u['spearman_energy_loss']:.3f} over {u['tokens']} tokens; "
          f"mean energy {u['mean_energy_real_text']:.4f} (real text) vs {u['mean_energy_random_characters']:.4f} (random characters).\n")
    datasets = list(full["datasets"])
    print("Ablation (each variant trained for the ablation's own step count, scored on fewer windows):\n")
    print("| variant | " + " | ".join(f"{d}: longer / verify" for d in datasets) + " | validation ppl @2 |")
    print("|---|" + "---|" * (len(datasets) + 1))
    for name, label in ABLATION:
        path = out / "ablation" / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())["datasets"]
        cells = " | ".join(f"{r[d]['gain_think_longer_pct']:+.1f}% / {r[d]['gain_self_verify_pct']:+.1f}%" for d in datasets)
        print(f"| {label} | {cells} | {r['validation']['budgets'][0]['ppl']:.3f} |")


PROSE = ("validation", "kjv", "austen")


def recipes(out: Path) -> None:
    """Two tables of the recipe study, one row per cell (by name), then one
    per recipe run with several seeds (cells NAME, NAME-seed1, …: their mean): 2-pass perplexity and
    the % gains from thinking longer (3 steps) and from thinking longer + self-verification
    (best-of-10 at 3 steps, 30 passes) on validation and the prose OOD sets; then the perplexity at
    3 and at 30 passes, what each recipe reaches for that compute."""
    cells = {p.stem: json.loads(p.read_text())["datasets"]
             for p in sorted(out.glob("*.json"))}
    groups: dict[str, list[str]] = {}
    for name in cells:
        groups.setdefault(name.split("-seed")[0], []).append(name)
    rows = [(name, [cells[name]]) for name in cells]
    rows += [(f"{base}, mean of {len(names)} seeds", [cells[n] for n in names])
             for base, names in groups.items() if len(names) > 1]

    def mean(runs, d, value) -> float:
        return sum(value(r[d]) for r in runs) / len(runs)

    print("| cell | " + " | ".join(f"{d}: ppl @2 | longer | + verify" for d in PROSE) + " |")
    print("|---|" + "---|---|---|" * len(PROSE))
    for label, runs in rows:
        print(f"| {label} | " + " | ".join(
            f"{mean(runs, d, lambda e: e['budgets'][0]['ppl']):.3f} | "
            f"{mean(runs, d, lambda e: e['gain_think_longer_pct']):+.1f}% | "
            f"{mean(runs, d, lambda e: e['gain_self_verify_pct']):+.1f}%" for d in PROSE) + " |")
    print("\n| cell | " + " | ".join(f"{d}: ppl @3 | @30" for d in PROSE) + " |")
    print("|---|" + "---|---|" * len(PROSE))
    for label, runs in rows:
        print(f"| {label} | " + " | ".join(
            f"{mean(runs, d, lambda e: e['budgets'][1]['ppl']):.3f} | {mean(runs, d, lambda e: e['budgets'][-1]['ppl']):.3f}"
            for d in PROSE) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--recipes"]:
        recipes(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/recipes"))
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/thinking"))
