"""Thinking gains along a scaling axis, with intervals: the paper's "self-verification gains grow
with training data" as a number (SPEC §4; issue 22).

Each EBT point of a sweep (on the data axis: the weights kept at each validation step) is scored
at the paper's thinking budgets (`ebt.suite.BUDGETS`: 2 steps, 3 steps, best-of-2/5/10 at 3
steps) on the same validation windows (`ebt.scaling.curves.thinking_scores`). `fit_gains` turns
those per-window losses into the % perplexity gains (positive: thinking helped)

    think_longer   3 steps against 2 steps
    self_verify    best-of-10 at 3 steps against 2 steps (thinking longer and self-verification)
    verify_only    best-of-10 against 1 sample, both at 3 steps (what the energy's pick adds)

at every point, each 100·(1 − ppl_b / ppl_a) per seed and averaged over the seeds, with 95%
intervals; and the trend of each gain against ln(x): the least-squares slope of the gain (in
percentage points) on ln(x), with its interval (× ln 2: points per doubling of x). The bootstrap
is the scaling fit's (`ebt.scaling.fit`): a replicate resamples the windows once for every point,
seed and budget (paired: a hard window is hard at every budget) and, with several seeds, the seeds.

numpy only. `report` gives the result as text; `ebt.plots.plot_thinking_gains` draws it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ebt.scaling.fit import percentile_interval, resample_counts

# name → (budget, the budget it is measured against), budgets as (steps, samples).
GAINS = {"think_longer": ((3, 1), (2, 1)), "self_verify": ((3, 10), (2, 1)), "verify_only": ((3, 10), (3, 1))}
GAIN_NAMES = {"think_longer": "think longer (3 vs 2 steps)", "self_verify": "best-of-10 vs 2 steps",
              "verify_only": "best-of-10 vs 1 sample at 3 steps"}
# SPEC §4, the paper's figure at its scale (RedPajama-v2; its smallest to its largest training
# data): the best-of-5 self-verification gain, in %, about 4–8 with the least data and 12–14 with the most.
PAPER_BON5_GAIN_PCT = {"least data": (4.0, 8.0), "most data": (12.0, 14.0)}
_MIN_TREND_POINTS = 3
_CHUNK = 256  # replicates at once


def fit_gains(x: Any, budgets: Sequence[tuple[int, int]], losses: Any, tokens: Any, *,
              reps: int = 2000, seed: int = 0) -> dict:
    """The thinking gains at each x, their 95% intervals and their trend against ln(x).

    x: (P,) positive, distinct, any order. budgets: B (steps, samples) pairs, holding every budget
    of GAINS. losses: (S, P, B, W), the mean loss (nats per token) of each of W windows for S seeds
    at P points and B budgets; a (seed, point) not scored is all NaN. tokens: (W,) the targets each
    window scores (its weight in a perplexity). reps, seed: the bootstrap's replicates and seed.

    Returns a JSON-ready dict (None where undefined): "budgets", "gain_names" (what each gain
    compares), "windows", "points" (per x: the
    seeds, the perplexity at each budget (mean over seeds), and per gain its % "pct", 95% "ci" and
    "by_seed"), "trend" (per gain: "slope" in percentage points per unit ln(x), its "ci",
    "intercept", "by_seed"; None below 3 points) and "bootstrap". ValueError for shapes that do not
    match, a missing budget, a non-positive or repeated x, a partly missing or non-finite row, a
    point with no seed, non-positive tokens, or reps < 1.
    """
    x, budgets, losses, tokens, present = _validated(x, budgets, losses, tokens, reps)
    pairs = {name: (budgets.index(b), budgets.index(a)) for name, (b, a) in GAINS.items()}
    mean_loss = np.einsum("spbw,w->spb", np.nan_to_num(losses), tokens) / tokens.sum()  # (S, P, B)
    by_seed = {name: np.where(present, _gain(mean_loss[..., b], mean_loss[..., a]), np.nan)
               for name, (b, a) in pairs.items()}  # (S, P) each
    gains = {name: np.nanmean(g, axis=0) for name, g in by_seed.items()}  # (P,)
    boot_gains, boot_slopes = _bootstrap(x, losses, tokens, present, pairs, reps, np.random.default_rng(seed))
    ppl = np.where(present[..., None], np.exp(mean_loss), np.nan)
    points = [{"x": float(x[p]), "seeds": int(present[:, p].sum()),
               "ppl": [float(v) for v in np.nanmean(ppl[:, p], axis=0)],
               "gains": {name: {"pct": float(gains[name][p]), "ci": percentile_interval(boot_gains[name][:, p]),
                                "by_seed": [_finite(v) for v in by_seed[name][:, p]]} for name in GAINS}}
              for p in range(len(x))]
    trend = {name: _trend(x, gains[name], by_seed[name], boot_slopes[name]) for name in GAINS}
    return {"budgets": [{"steps": s, "samples": m, "budget": s * m} for s, m in budgets], "gain_names": dict(GAIN_NAMES),
            "windows": int(losses.shape[3]), "points": points, "trend": trend,
            "bootstrap": {"replicates": int(reps), "seed": int(seed),
                          "over": ["windows", "seeds"] if losses.shape[0] > 1 else ["windows"]}}


def _validated(x, budgets, losses, tokens, reps):
    x, losses, tokens = (np.asarray(v, dtype=float) for v in (x, losses, tokens))
    budgets = [(int(s), int(m)) for s, m in budgets]
    missing = sorted({b for pair in GAINS.values() for b in pair} - set(budgets))
    if missing:
        raise ValueError(f"fit_gains: budgets {budgets} lack {missing} (steps, samples), which the gains compare")
    if x.ndim != 1 or losses.ndim != 4 or losses.shape[1:3] != (len(x), len(budgets)) or tokens.shape != losses.shape[3:]:
        raise ValueError(f"fit_gains: needs x (P,), losses (S, P, B, W) and tokens (W,) with P = {x.size}, "
                         f"B = {len(budgets)}; got losses {losses.shape}, tokens {tokens.shape}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)) or len(np.unique(x)) != len(x):
        raise ValueError(f"fit_gains: x must be finite, positive and distinct (a log axis), got {x.tolist()}")
    if not (np.all(np.isfinite(tokens)) and np.all(tokens > 0)) or reps < 1:
        raise ValueError(f"fit_gains: tokens must be positive and reps >= 1, got tokens {tokens.tolist()}, reps {reps}")
    present = ~np.all(np.isnan(losses), axis=(2, 3))  # (S, P)
    bad = present & ~np.all(np.isfinite(losses), axis=(2, 3))
    if bad.any():
        s, p = map(int, np.argwhere(bad)[0])
        raise ValueError(f"fit_gains: x={x[p]:.6g}, seed {s}: losses must be finite at every budget and window "
                         "(or all NaN for a point not scored)")
    if not present.any(axis=0).all():
        raise ValueError(f"fit_gains: x={x[~present.any(axis=0)][0]:.6g} has no scored seed; drop the point")
    order = np.argsort(x)
    return x[order], budgets, losses[:, order], tokens, present[:, order]


def _gain(loss_b: np.ndarray, loss_a: np.ndarray) -> np.ndarray:
    """% lower perplexity at b than at a: 100·(1 − exp(loss_b − loss_a))."""
    return 100.0 * -np.expm1(loss_b - loss_a)


def _bootstrap(x, losses, tokens, present, pairs, reps, rng):
    """Per gain: (R, P) gains and (R,) trend slopes over `reps` paired replicates; NaN where a
    replicate drew no seed of a point."""
    n_seeds, n_windows = losses.shape[0], losses.shape[3]
    filled = np.nan_to_num(losses)
    gains = {name: np.full((reps, len(x)), np.nan) for name in pairs}
    slopes = {name: np.full(reps, np.nan) for name in pairs}
    for start in range(0, reps, _CHUNK):
        r = min(_CHUNK, reps - start)
        weight = resample_counts(rng.integers(0, n_windows, (r, n_windows)), n_windows) * tokens  # (R, W)
        mean_loss = np.einsum("rw,spbw->rspb", weight, filled) / weight.sum(axis=1)[:, None, None, None]
        seeds = (resample_counts(rng.integers(0, n_seeds, (r, n_seeds)), n_seeds) if n_seeds > 1
                 else np.ones((r, 1)))[:, :, None] * present[None]  # (R, S, P)
        total = seeds.sum(axis=1)  # (R, P)
        for name, (b, a) in pairs.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                g = (seeds * _gain(mean_loss[..., b], mean_loss[..., a])).sum(axis=1) / total  # (R, P)
            gains[name][start:start + r] = g
            ok = np.all(np.isfinite(g), axis=1)
            if ok.any() and len(x) >= _MIN_TREND_POINTS:
                slopes[name][start:start + r][ok] = np.polyfit(np.log(x), g[ok].T, 1)[0]
    return gains, slopes


def _trend(x: np.ndarray, gain: np.ndarray, by_seed: np.ndarray, boot: np.ndarray) -> dict | None:
    if len(x) < _MIN_TREND_POINTS:
        return None
    slope, intercept = np.polyfit(np.log(x), gain, 1)
    seeds = []
    for row in by_seed:  # (P,), NaN where the seed lacks a point
        keep = np.isfinite(row)
        seeds.append(float(np.polyfit(np.log(x[keep]), row[keep], 1)[0]) if keep.sum() >= _MIN_TREND_POINTS else None)
    return {"slope": float(slope), "ci": percentile_interval(boot), "intercept": float(intercept), "by_seed": seeds}


def report(result: dict, x_label: str = "x") -> str:
    """`fit_gains`' result as text: a table of perplexities and gains by x, then each trend and
    what its interval can say."""
    boot, names = result["bootstrap"], list(GAINS)
    ppl_at = {(b["steps"], b["samples"]): i for i, b in enumerate(result["budgets"])}
    shown = [(2, 1), (3, 1), (3, 10)]
    lines = [f"Thinking gains of the EBT against {x_label} (% lower perplexity; 95% intervals from "
             f"{boot['replicates']} paired bootstrap replicates over {result['windows']} windows"
             f"{' and the seeds' if 'seeds' in boot['over'] else ''})",
             f"  {'x':>10}  {'ppl@2':>7}  {'ppl@3':>7}  {'bo10@3':>7}  " + "  ".join(f"{n:>25}" for n in names)]
    for point in result["points"]:
        ppl = "  ".join(f"{point['ppl'][ppl_at[b]]:>7.4g}" for b in shown)
        cells = "  ".join(f"{_with_ci(point['gains'][n]):>25}" for n in names)
        lines.append(f"  {point['x']:>10.4g}  {ppl}  {cells}")
    lines.append("  gains: " + "; ".join(f"{n} = {GAIN_NAMES[n]}" for n in names))
    for name in names:
        trend = result["trend"][name]
        if trend is None:
            lines.append(f"trend of {name}: needs at least {_MIN_TREND_POINTS} points")
            continue
        per = math.log(2)
        ci = trend["ci"]
        span = f"{ci[0] * per:+.2f} … {ci[1] * per:+.2f}" if ci else "n/a"
        verdict = ("n/a" if ci is None else "grows with x" if ci[0] > 0 else "shrinks with x" if ci[1] < 0
                   else "the interval includes 0: no trend this sweep can tell")
        seeds = ", ".join("n/a" if k is None else f"{k * per:+.2f}" for k in trend["by_seed"])
        lines.append(f"trend of {name} against ln(x): {trend['slope'] * per:+.2f} points per doubling of x "
                     f"(95% CI {span}; by seed {seeds}): {verdict}")
    least, most = PAPER_BON5_GAIN_PCT["least data"], PAPER_BON5_GAIN_PCT["most data"]
    lines.append(f"paper (SPEC §4, at its scale): best-of-5 self-verification gains about {least[0]:g}–{least[1]:g}% "
                 f"with its least training data, {most[0]:g}–{most[1]:g}% with its most")
    return "\n".join(lines)


def _with_ci(gain: dict) -> str:
    ci = gain["ci"]
    return f"{gain['pct']:+.2f}% ({ci[0]:+.1f} … {ci[1]:+.1f})" if ci else f"{gain['pct']:+.2f}% (n/a)"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
