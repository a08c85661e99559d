"""The paper's "scaling rate" (SPEC §7): log–log slopes of validation loss, their ratio and its uncertainty.

For each model kind, ordinary least squares of ln(loss) on ln(x), where loss is the mean validation
cross-entropy in nats (= ln perplexity) and x an axis value (tokens, width, depth, ...). The slope k
is negative when loss falls; the paper's "EBT scales X% faster" is `k_ebt / k_transformer − 1`.
The paper never defines it; this reading reproduces its printed figures from the plotted endpoints.

Uncertainty comes from a paired bootstrap: every replicate resamples the validation windows once and
applies that resample to every point, seed and kind (all are scored on the same windows), and, for a
kind with several seeds, resamples its seeds too. Pairing cancels window difficulty shared by both
kinds, which would otherwise swamp a slope difference of a few percent.

- `fit_line`: one OLS fit in log–log space.
- `fit_scaling`: fits, bootstrap intervals, per-seed fits, an offset power law, where the lines cross.
- `report`: the result as text. `ebt.plots.plot_scaling` draws it.
- `resample_counts`, `percentile_interval`: the bootstrap's pieces, shared with `ebt.scaling.gains`.

numpy only; scipy is imported for the offset power law alone. Read next: `ebt/scaling/sweep.py`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np

from ebt.packages import PackageError, import_package

# The paper's printed EBT gains in scaling rate (figure titles), as fractions; SPEC §7.
PAPER_RATIOS = {"data": 0.3598, "batch": 0.2846, "depth": 0.0529, "params": 0.0291, "flops": 0.0292, "width": 0.0002}

_MIN_POINTS = 3  # a line through 2 points has no residual, so no interval either
_OFFSET_MIN_POINTS = 4  # E, A and alpha: 3 parameters
_CHUNK = 256  # bootstrap replicates computed at once (bounds memory: chunk × windows counts)
_CROSSING_MARGIN = 10.0  # a crossing farther than this factor outside the measured x is not reported
_KIND_NAMES = {"ebt": "EBT", "transformer": "Transformer++"}


def fit_line(x: Any, loss: Any) -> tuple[float, float]:
    """(slope, intercept) of ln(loss) = intercept + slope·ln(x), by `np.polyfit`.

    x, loss: shape (P,), positive, at least 2 distinct x. ValueError otherwise.
    """
    x = np.asarray(x, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if x.shape != loss.shape or x.ndim != 1 or len(np.unique(x)) < 2:
        raise ValueError(
            f"fit_line: needs two (P,) arrays with at least 2 distinct x, got shapes {x.shape}, {loss.shape}"
        )
    if not (np.all(x > 0) and np.all(loss > 0) and np.all(np.isfinite(x)) and np.all(np.isfinite(loss))):
        raise ValueError(f"fit_line: x and loss must be finite and positive (log–log fit), got x={x}, loss={loss}")
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    return float(slope), float(intercept)


def fit_scaling(
    curves: Mapping[str, tuple[Any, Any]], *, reps: int = 2000, seed: int = 0, band_points: int = 50
) -> dict:
    """Fit ln(loss) against ln(x) per kind, with a paired bootstrap over windows (and seeds).

    curves: kind ("ebt", "transformer", ...) → (x, window_losses); x has shape (P,), positive, any
        order; window_losses has shape (S, P, W): per-window mean loss in nats for S seeds, P points
        and the W validation windows shared by every point, seed and kind. A missing (seed, point) is
        all-NaN along W; the point's loss is the mean over the seeds present.
    reps: bootstrap replicates; seed: their random seed; band_points: x values of the fitted band.

    Returns a JSON-ready dict (None where a number is undefined, never NaN): "models" (per kind:
    points, slope and its 95% interval, intercept, per-seed slopes, offset power law, band),
    "scaling_rate_ratio" (k_ebt / k_transformer − 1) with its interval and per-seed values,
    "crossing" of the two fitted lines, and "bootstrap" (what was resampled).

    ValueError: no kinds; a kind with fewer than 3 points, a non-positive or repeated x, windows not
    (S, P, W), a partly missing or negative or non-finite row, a point missing in every seed, a
    non-positive mean loss; kinds with different W; reps < 1 or band_points < 2.
    """
    if not curves:
        raise ValueError("fit_scaling: `curves` is empty; give (x, window_losses) for at least one kind")
    if reps < 1 or band_points < 2:
        raise ValueError(
            f"fit_scaling: needs reps >= 1 and band_points >= 2, got reps={reps}, band_points={band_points}"
        )
    data = {kind: _validated(kind, x, losses) for kind, (x, losses) in curves.items()}
    windows = {kind: d["windows"].shape[2] for kind, d in data.items()}
    if len(set(windows.values())) > 1:
        raise ValueError(f"fit_scaling: every kind must be scored on the same windows, got window counts {windows}")

    boot = _bootstrap(data, reps, np.random.default_rng(seed))
    models = {kind: _model(d, boot[kind], band_points) for kind, d in data.items()}

    result: dict[str, Any] = {
        "models": models,
        "scaling_rate_ratio": None,
        "scaling_rate_ratio_ci": None,
        "scaling_rate_ratio_by_seed": [],
        "crossing": None,
        "bootstrap": {
            "replicates": int(reps),
            "over": ["windows", "seeds"] if any(d["windows"].shape[0] > 1 for d in data.values()) else ["windows"],
            "seed": int(seed),
        },
    }
    if "ebt" in models and "transformer" in models:
        ebt, tpp = models["ebt"], models["transformer"]
        result["scaling_rate_ratio"] = _ratio(ebt["slope"], tpp["slope"])
        k_ebt, k_tpp = boot["ebt"][0], boot["transformer"][0]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = k_ebt / k_tpp - 1.0
        result["scaling_rate_ratio_ci"] = percentile_interval(ratios)
        result["scaling_rate_ratio_by_seed"] = [
            _ratio(a, b) for a, b in zip(ebt["slope_by_seed"], tpp["slope_by_seed"])
        ]
        x_all = np.concatenate([data["ebt"]["x"], data["transformer"]["x"]])
        result["crossing"] = _crossing(ebt, tpp, x_all.min(), x_all.max())
    return result


def report(result: dict, axis: str) -> str:
    """`fit_scaling`'s result as text: per kind the points, slope, intercept and offset power law;
    then the scaling-rate ratio with its interval, the paper's figure for `axis`, whether the
    interval can decide anything, and where the fitted lines cross."""
    boot = result["bootstrap"]
    bpb = result.get("metric") == "bpb"  # the same fit of bits per byte (`collect(metric="bpb")`); no ppl then
    name, unit = ("bpb", "bits per byte") if bpb else ("loss", "nats")
    lines = [f"Scaling fit, axis {axis!r}: ln({name}) = intercept + slope·ln(x), {name} in {unit}; "
             f"95% intervals from {boot['replicates']} paired bootstrap replicates over "
             f"{' and '.join(boot['over'])} (seed {boot['seed']})"]
    for kind, model in result["models"].items():
        lines += ["", f"{_KIND_NAMES.get(kind, kind)} ({kind})",
                  f"  {'x':>10}  {name:>8}  {'' if bpb else 'ppl':>9}  seeds"]
        lines += [f"  {p['x']:>10.4g}  {p['loss']:>8.4f}  {'' if bpb else format(p['ppl'], '.4g'):>9}  {p['seeds']:>5}"
                  for p in model["points"]]
        lines.append(f"  slope {model['slope']:+.4f} (95% CI {_span(model['slope_ci'], '{:+.4f}')}), "
                     f"intercept {model['intercept']:.4f}")
        if len(model["slope_by_seed"]) > 1:
            lines.append("  slope by seed: " + ", ".join(_or_na(k, "{:+.4f}") for k in model["slope_by_seed"]))
        offset = model["offset_power_law"]
        if "error" in offset:
            lines.append(f"  offset power law E + A·x^(−alpha): not fitted ({offset['error']})")
        else:
            fitted = f"{offset['E']:.4g} + {offset['A']:.4g}·x^(−{offset['alpha']:.4g})"
            lines.append(f"  offset power law: loss = {fitted} (E and alpha are poorly identified over a short range)")

    lines.append("")
    ratio, ci = result["scaling_rate_ratio"], result["scaling_rate_ratio_ci"]
    if ratio is None:
        missing = [k for k in ("ebt", "transformer") if k not in result["models"]]
        why = f"no {' or '.join(missing)} curve" if missing else "the Transformer++ slope is 0"
        lines.append(f"scaling rate ratio (EBT / Transformer++ − 1): undefined ({why})")
    else:
        lines.append(f"scaling rate ratio (EBT / Transformer++ − 1): {_percent(ratio)} "
                     f"(95% CI {_span(ci, None)}); positive = EBT's loss falls faster")
        by_seed = result["scaling_rate_ratio_by_seed"]
        if len(by_seed) > 1:
            lines.append("  by seed: " + ", ".join(_percent(r) if r is not None else "n/a" for r in by_seed))
        if axis in PAPER_RATIOS:
            lines.append(f"  paper ({axis} axis, one seed, no interval): {_percent(PAPER_RATIOS[axis], 2)}")
        if any(result["models"][k]["slope"] >= 0 for k in ("ebt", "transformer")):
            lines.append("  a slope is not negative (loss does not fall with x): "
                         "the ratio does not measure faster scaling")
        if ci is not None:
            if ci[0] <= 0.0 <= ci[1]:
                lines.append("  the interval includes 0: this sweep cannot tell which kind scales faster")
            elif ci[1] - ci[0] > 1.0:
                width = 100 * (ci[1] - ci[0])
                faster = "EBT" if ci[0] > 0 else "Transformer++"
                lines.append(f"  the interval excludes 0 ({faster} scales faster) but is {width:.0f} percentage "
                             "points wide: too wide to size the difference")
            else:
                faster = "EBT" if ci[0] > 0 else "Transformer++"
                lines.append(f"  the interval excludes 0: the {faster}'s loss falls faster on this axis at this scale")
        crossing = result["crossing"]
        if crossing is None:
            lines.append("fitted lines: no crossing within 10× of the measured x")
        else:
            where = "extrapolated, outside the measured x" if crossing["extrapolated"] else "within the measured x"
            lines.append(f"fitted lines cross at x = {crossing['x']:.4g}, loss {crossing['loss']:.4f} nats ({where})")
    return "\n".join(lines)


def _validated(kind: str, x: Any, losses: Any) -> dict:
    """x sorted ascending (P,), windows (S, P, W) in the same order, present (S, P) bool."""
    x = np.asarray(x, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"fit_scaling: kind {kind!r}: x must have shape (P,), got {x.shape}")
    if len(x) < _MIN_POINTS:
        raise ValueError(f"fit_scaling: kind {kind!r} has {len(x)} points; a fit needs at least {_MIN_POINTS}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ValueError(f"fit_scaling: kind {kind!r}: x must be finite and positive (log axis), got {x.tolist()}")
    if len(np.unique(x)) != len(x):
        raise ValueError(f"fit_scaling: kind {kind!r}: x values must be distinct, got {x.tolist()}")
    if losses.ndim != 3 or losses.shape[1] != len(x) or losses.shape[2] < 1 or losses.shape[0] < 1:
        raise ValueError(
            f"fit_scaling: kind {kind!r}: window_losses must have shape (seeds, {len(x)} points, windows), "
            f"got {losses.shape}"
        )
    order = np.argsort(x)
    x, losses = x[order], losses[:, order]
    present = ~np.all(np.isnan(losses), axis=2)  # (S, P)
    for s, p in zip(*np.nonzero(present)):
        row = losses[s, p]
        if not (np.all(np.isfinite(row)) and np.all(row >= 0)):
            raise ValueError(
                f"fit_scaling: kind {kind!r}, x={x[p]:.6g}, seed {s}: window losses must be finite and >= 0 "
                "(or all NaN for a missing run)"
            )
    absent = np.nonzero(~present.any(axis=0))[0]
    if absent.size:
        raise ValueError(
            f"fit_scaling: kind {kind!r}, x={x[absent[0]]:.6g}: every seed is missing (all NaN); drop the point"
        )
    window_mean = losses.mean(axis=2)  # (S, P), NaN where missing
    mean = np.nanmean(window_mean, axis=0)  # (P,)
    bad = np.nonzero(mean <= 0)[0]
    if bad.size:
        raise ValueError(
            f"fit_scaling: kind {kind!r}, x={x[bad[0]]:.6g}: mean loss is {mean[bad[0]]:g}; a log fit needs loss > 0"
        )
    return {"x": x, "windows": losses, "present": present, "window_mean": window_mean, "mean": mean}


def _bootstrap(data: dict, reps: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind → (slopes, intercepts), each (reps,), NaN where a replicate lost a point of that kind."""
    n_windows = next(iter(data.values()))["windows"].shape[2]
    out = {kind: (np.full(reps, np.nan), np.full(reps, np.nan)) for kind in data}
    flat = {}
    for kind, d in data.items():
        s, p, w = d["windows"].shape
        flat[kind] = np.where(d["present"][..., None], d["windows"], 0.0).reshape(s * p, w).T  # (W, S·P)
    for start in range(0, reps, _CHUNK):
        r = min(_CHUNK, reps - start)
        # One window resample per replicate, shared by every point, seed and kind: the pairing.
        window_counts = resample_counts(rng.integers(0, n_windows, (r, n_windows)), n_windows)  # (R, W)
        for kind, d in data.items():
            s, p = d["present"].shape
            means = (window_counts @ flat[kind] / n_windows).reshape(r, s, p)  # (R, S, P)
            seed_counts = resample_counts(rng.integers(0, s, (r, s)), s) if s > 1 else np.ones((r, 1))  # (R, S)
            weight = seed_counts[:, :, None] * d["present"][None]  # (R, S, P)
            total = weight.sum(axis=1)  # (R, P)
            with np.errstate(divide="ignore", invalid="ignore"):
                curve = (weight * means).sum(axis=1) / total  # (R, P): mean over the resampled seeds present
            ok = np.all(total > 0, axis=1) & np.all(curve > 0, axis=1)
            if ok.any():
                slope, intercept = np.polyfit(np.log(d["x"]), np.log(curve[ok]).T, 1)
                out[kind][0][start:start + r][ok] = slope
                out[kind][1][start:start + r][ok] = intercept
    return out


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(R, n) counts of each index in every row of `indices` (R, k)."""
    rows = indices.shape[0]
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)


def _model(d: dict, boot: tuple[np.ndarray, np.ndarray], band_points: int) -> dict:
    x, mean = d["x"], d["mean"]
    slope, intercept = fit_line(x, mean)
    by_seed = []
    for row in d["window_mean"]:  # (P,) per seed, NaN where missing
        keep = np.isfinite(row) & (row > 0)
        by_seed.append(fit_line(x[keep], row[keep])[0] if keep.sum() >= 2 else None)
    slopes, intercepts = boot
    ok = np.isfinite(slopes)
    band_x = np.geomspace(x[0], x[-1], band_points)
    fitted = np.exp(intercepts[ok, None] + slopes[ok, None] * np.log(band_x)[None])  # (R, band_points)
    low, high = (np.percentile(fitted, [2.5, 97.5], axis=0) if ok.any() else np.full((2, band_points), np.nan))
    return {
        "points": [
            {"x": float(xi), "loss": float(li), "ppl": float(math.exp(li)), "seeds": int(n)}
            for xi, li, n in zip(x, mean, d["present"].sum(axis=0))
        ],
        "slope": slope,
        "slope_ci": percentile_interval(slopes),
        "intercept": intercept,
        "slope_by_seed": by_seed,
        "offset_power_law": offset_power_law(x, mean),
        "band": {"x": band_x.tolist(), "low": [_finite(v) for v in low], "high": [_finite(v) for v in high]},
    }


def offset_power_law(x: np.ndarray, loss: np.ndarray) -> dict:
    """L(x) = E + A·x^(−alpha) by `scipy.optimize.curve_fit`: {"E", "A", "alpha"} or {"error": why}.

    x, loss: (P,) with P >= 4. Bounds: 0 <= E < min loss, A > 0, 0 < alpha <= 5. Fitted in x / x_min
    for conditioning, A converted back to raw x. Over a short range E and alpha trade off freely.
    """
    x = np.asarray(x, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if len(x) < _OFFSET_MIN_POINTS:
        return {"error": f"needs at least {_OFFSET_MIN_POINTS} points, got {len(x)}"}
    try:
        # scipy only for this optional offset fit (it reports its absence instead of failing).
        optimize = import_package("scipy.optimize", needed_for="the offset fit")
    except PackageError as e:
        return {"error": str(e)}
    OptimizeWarning, curve_fit = optimize.OptimizeWarning, optimize.curve_fit
    x_min = x.min()
    u = x / x_min
    upper_e = loss.min() * (1 - 1e-9)
    lower, upper = [0.0, 1e-12, 1e-6], [upper_e, np.inf, 5.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(
                lambda u, e, a, alpha: e + a * u ** -alpha, u, loss,
                p0=_offset_start(u, loss, lower, upper), bounds=(lower, upper), maxfev=20000,
            )
    except (RuntimeError, ValueError, OptimizeWarning) as error:
        return {"error": str(error) or type(error).__name__}
    e, a_scaled, alpha = (float(v) for v in params)
    a = a_scaled * x_min ** alpha  # A·x^-alpha = A·x_min^-alpha · u^-alpha
    if not all(math.isfinite(v) for v in (e, a, alpha)):
        return {"error": f"non-finite parameters E={e}, A={a}, alpha={alpha}"}
    return {"E": e, "A": a, "alpha": alpha}


def _offset_start(u: np.ndarray, loss: np.ndarray, lower: list, upper: list) -> list[float]:
    """Starting (E, A, alpha) for curve_fit: for each alpha on a grid, E and A solve a linear least
    squares exactly; the best admissible one wins (the curve_fit objective is very flat in alpha)."""
    best, best_error = None, np.inf
    for alpha in np.linspace(0.05, 5.0, 100):
        design = np.stack([np.ones_like(u), u ** -alpha], axis=1)  # (P, 2)
        (e, a), *_ = np.linalg.lstsq(design, loss, rcond=None)
        if lower[0] <= e < upper[0] and a > lower[1]:
            error = float(np.sum((design @ (e, a) - loss) ** 2))
            if error < best_error:
                best, best_error = [float(e), float(a), float(alpha)], error
    if best is None:
        e = 0.5 * upper[0]
        best = [e, max(float(loss[0] - e), 1e-6), 0.5]
    return best


def _crossing(ebt: dict, tpp: dict, x_min: float, x_max: float) -> dict | None:
    """Where the two fitted lines meet, within a factor 10 of the measured x, else None."""
    dk = ebt["slope"] - tpp["slope"]
    if dk == 0 or abs(dk) <= 1e-12 * max(abs(ebt["slope"]), abs(tpp["slope"])):
        return None
    log_x = (tpp["intercept"] - ebt["intercept"]) / dk
    if not math.log(x_min / _CROSSING_MARGIN) <= log_x <= math.log(x_max * _CROSSING_MARGIN):
        return None
    x = math.exp(log_x)
    return {
        "x": x,
        "loss": math.exp(ebt["intercept"] + ebt["slope"] * log_x),
        "extrapolated": not x_min <= x <= x_max,
    }


def _ratio(k_ebt: float | None, k_tpp: float | None) -> float | None:
    if k_ebt is None or k_tpp is None or k_tpp == 0:
        return None
    return _finite(k_ebt / k_tpp - 1.0)


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """The 2.5/97.5 percentiles of the finite values, None if there are none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _percent(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:+.{digits}f}%"


def _span(interval: list[float] | None, fmt: str | None) -> str:
    if interval is None:
        return "n/a"
    show = (lambda v: fmt.format(v)) if fmt else _percent
    return f"{show(interval[0])} … {show(interval[1])}"


def _or_na(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)
