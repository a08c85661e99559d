"""Figures for System 2 thinking results (SPEC §4), drawn from plain numbers.

Every function takes dicts, lists or numpy arrays, writes one PNG atomically (a temporary file in
the same directory, then a rename) and returns its path. Nothing here reads files or touches a
model or torch: evaluation code computes the numbers, these functions only draw them. Figures are
built on `matplotlib.figure.Figure` directly, so no pyplot state or interactive backend is used.

- `plot_thinking_curves`: perplexity against forward passes per token (2 = no extra thinking,
  3 = think longer, 6/15/30 = best-of-2/5/10 at 3 steps), one line per dataset, with the
  Transformer++ perplexity as a flat dashed line since it cannot spend more compute per token.
  Mirrors the paper's "thinking longer and self-verification" perplexity curves.
- `plot_gain_vs_shift`: % perplexity improvement from thinking against distribution shift
  (dataset ppl / in-distribution ppl), with a least-squares line. Mirrors the paper's figure
  whose gain grows linearly with shift (about +12% at shift 1.0 to +23% at shift 4.4).
- `plot_thinking_gains`: the gains from thinking longer and from best-of-M against a scaling
  axis (e.g. training tokens), with intervals and trend lines, beside the paper's figure (SPEC §4:
  self-verification gains grow with training data).
- `plot_energy_heatmap`: per-token energy at every thinking step for one sample text. Mirrors the
  paper's uncertainty heatmaps: hard or unfamiliar tokens keep a higher energy.
- `plot_energy_vs_loss`: per-token energy against per-token loss. The paper has no such figure;
  it quantifies the heatmaps' claim that energy tracks difficulty (see `spearman`).
- `plot_energy_by_frame`: video; the mean energy of each predicted frame along a clip and around
  the frame where a new digit appears (the paper: energy is high where frames are uncertain).

Read next: `ebt/evaluate.py`, which produces the numbers these figures draw.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ebt.files import atomic_write
from ebt.packages import import_package

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# SPEC §4: the paper's gain from thinking at two distribution shifts, (shift, % improvement).
PAPER_GAIN_VS_SHIFT = ((1.0, 12.0), (4.4, 23.0))

# One panel for all datasets only while their perplexities stay within this factor of each other;
# beyond it a shared log axis flattens every curve and the thinking gain becomes invisible.
_SHARED_AXES_MAX_RATIO = 4.0

_DPI = 120


def _figure(**kwargs) -> Figure:
    """A matplotlib Figure. matplotlib is imported when a plot is first drawn, so that a broken
    install of it stops only a command that draws, in one line (`ebt.packages`)."""
    return import_package("matplotlib.figure", needed_for="drawing plots").Figure(**kwargs)


def _ticker():
    return import_package("matplotlib.ticker", needed_for="drawing plots")


def plot_thinking_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    baselines: Mapping[str, float] | None = None,
    title: str = "Thinking: perplexity vs forward passes per token",
) -> Path:
    """Perplexity against forward passes per token (log x, ticked at the measured counts).

    `curves` maps a dataset name to its (forward_passes, perplexity) points; `baselines` maps a
    dataset name to the Transformer++ perplexity, drawn as a dashed line in the dataset's colour.
    Datasets share one panel (log y) while their perplexities stay within 4x of each other;
    otherwise each gets its own panel (linear y, values labelled).
    """
    baselines = dict(baselines or {})
    points = _thinking_points(curves, baselines)
    every_ppl = np.concatenate([p[:, 1] for p in points.values()] + [np.asarray(list(baselines.values()), float)])
    shared = every_ppl.max() / every_ppl.min() <= _SHARED_AXES_MAX_RATIO
    passes = sorted({float(x) for p in points.values() for x in p[:, 0]})

    n_panels = 1 if shared else len(points)
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = _figure(figsize=(5.0 * cols + (1.5 if shared else 0.0), 3.8 * rows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for i, (name, curve) in enumerate(points.items()):
        _draw_thinking_curve(axes[0 if shared else i], name, curve, f"C{i % 10}", baselines.get(name), shared)
    for ax in axes[:n_panels]:
        _thinking_axes(ax, passes, shared)
    fig.suptitle(title)
    return _save(fig, path)


def _thinking_points(curves: Mapping[str, Sequence[tuple[float, float]]],
                     baselines: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Each dataset's points as an array (P, 2) sorted by forward passes; ValueError for no
    dataset, a baseline without a curve, or points that are not finite positive pairs."""
    if not curves:
        raise ValueError("plot_thinking_curves: `curves` is empty; give at least one dataset")
    unknown = sorted(set(baselines) - set(curves))
    if unknown:
        raise ValueError(f"plot_thinking_curves: baselines {unknown} have no curve; datasets are {sorted(curves)}")
    points = {}
    for name, curve in curves.items():
        array = np.asarray(curve, dtype=float)
        well_formed = array.ndim == 2 and array.shape[1] == 2 and len(array) > 0
        if not well_formed or np.any(array <= 0) or not np.all(np.isfinite(array)):
            raise ValueError(
                f"plot_thinking_curves: dataset {name!r} needs (forward_passes, ppl) pairs of finite positive "
                f"numbers, got {list(curve)!r}"
            )
        points[name] = array[np.argsort(array[:, 0])]
    return points


def _draw_thinking_curve(ax, name: str, points: np.ndarray, colour: str, baseline: float | None,
                         shared: bool) -> None:
    """One dataset's EBT curve, and its Transformer++ perplexity as a dashed line; on a panel of
    its own, the values labelled and the dataset's name as the title."""
    xs, ys = points[:, 0], points[:, 1]
    ax.plot(xs, ys, marker="o", color=colour, label=f"{name} EBT")
    if not shared:
        for x, y in zip(xs, ys):
            ax.annotate(_short_number(y), (x, y), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7, color=colour)
        ax.margins(y=0.12)  # room for the value labels
    if baseline is not None:
        ax.axhline(baseline, color=colour, linestyle="--", linewidth=1.2, label=f"{name} Transformer++")
    if not shared:
        ax.set_title(name, fontsize=10)


def _thinking_axes(ax, passes: list[float], shared: bool) -> None:
    """Log x ticked at the measured budgets; log y on a shared panel, else log y only where the
    values span decades; grid, labels and legend."""
    ax.set_xscale("log")
    # Ticks at the budgets actually measured (2, 3, 6, 15, 30), not at powers of ten.
    ax.xaxis.set_major_locator(_ticker().FixedLocator(passes))
    ax.xaxis.set_major_formatter(_ticker().ScalarFormatter())
    ax.xaxis.set_minor_locator(_ticker().NullLocator())
    if shared:
        # Log y so that equal relative gains look alike across datasets; the span is under a
        # decade, so the minor ticks (1.5..9 x 10^k) are the informative ones to label.
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(_ticker().LogLocator(subs=(1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
        ax.yaxis.set_major_formatter(_ticker().FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(_ticker().FormatStrFormatter("%g"))
    elif _spans_decades(ax):  # far-OOD perplexities can span many decades: log y
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_formatter(_ticker().ScalarFormatter(useOffset=False))
    if len(passes) > 1:
        ax.set_xlim(passes[0] / 1.15, passes[-1] * 1.15)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("forward passes per token")
    ax.set_ylabel("perplexity")
    if shared:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=8, loc="best")


def plot_gain_vs_shift(
    points: Mapping[str, tuple[float, float]],
    path: str | os.PathLike,
    paper_reference: bool = True,
) -> Path:
    """% perplexity improvement from thinking (y) against distribution shift (x), one point per dataset.

    `points` maps a dataset name to (shift, gain %): shift = the dataset's perplexity without
    thinking / the in-distribution perplexity without thinking. With two or more points a
    least-squares line is drawn with its slope in the legend; `paper_reference` adds SPEC §4's
    two reference points in grey. Shifts spanning more than a decade (far-OOD probes reach 10⁴)
    go on a log axis, the line then fitted against log₁₀ shift; gains beyond ±100% go on a
    symmetric-log axis, linear within ±10%, so that a few % and a few thousand % both show.
    """
    if not points:
        raise ValueError("plot_gain_vs_shift: `points` is empty; give at least one dataset")
    data = np.asarray([points[name] for name in points], dtype=float).reshape(-1, 2)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"plot_gain_vs_shift: (shift, gain %) pairs must be finite, got {dict(points)!r}")
    xs, ys = data[:, 0], data[:, 1]

    fig = _figure(figsize=(6.4, 4.6), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="0.6", linewidth=0.8, label="Transformer++ (no thinking gain)")
    ax.scatter(xs, ys, s=40, color="C0", zorder=3, label="EBT (this run)")
    for name, x, y in zip(points, xs, ys):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)

    x_span = list(xs)
    if paper_reference:
        ref = np.asarray(PAPER_GAIN_VS_SHIFT)
        ax.plot(ref[:, 0], ref[:, 1], linestyle="--", color="0.5", marker="o", markerfacecolor="none",
                markeredgecolor="0.5", markersize=8, label="paper (SPEC §4)")
        x_span += list(ref[:, 0])
    log_x = min(x_span) > 0 and max(x_span) / min(x_span) > 10
    if log_x:
        ax.set_xscale("log")
    if np.abs(ys).max() > 100:
        ax.set_yscale("symlog", linthresh=10.0)
    if len(xs) >= 2 and np.ptp(xs) > 0:
        fit_x = np.log10(xs) if log_x else xs
        slope, intercept = np.polyfit(fit_x, ys, deg=1)
        line_x = np.geomspace(min(x_span), max(x_span), 50) if log_x else np.linspace(min(x_span), max(x_span), 50)
        ax.plot(line_x, slope * (np.log10(line_x) if log_x else line_x) + intercept, color="C0", linewidth=1.2,
                label=f"least-squares fit: {slope:+.2f} % per {'10× shift' if log_x else 'unit shift'}")

    ax.set_xlabel("distribution shift (ppl / in-distribution ppl, no thinking)")
    ax.set_ylabel("perplexity improvement from thinking (%)")
    ax.set_title("Thinking gain vs distribution shift")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_energy_heatmap(
    energies: np.ndarray,
    tokens: Sequence[str],
    path: str | os.PathLike,
    title: str = "Per-token energy across thinking steps",
) -> Path:
    """Energy of each token (columns, labelled with the token text) at each thinking step (rows).

    `energies` has shape (steps, tokens); row i is the energy after i steps (row 0 = the initial
    candidate). Newlines show as "⏎" and spaces as "␣". The width grows with the token count, so
    ~120 tokens stay legible.
    """
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or energies.size == 0:
        raise ValueError(
            f"plot_energy_heatmap: energies must be a non-empty (steps, tokens) array, got shape {energies.shape}"
        )
    if energies.shape[1] != len(tokens):
        raise ValueError(
            f"plot_energy_heatmap: energies has {energies.shape[1]} token columns but {len(tokens)} tokens were given"
        )
    steps, n_tokens = energies.shape
    labels = [printable_token(t) for t in tokens]
    longest = max(len(label) for label in labels)

    width = min(max(6.0, 2.2 + 0.17 * n_tokens), 40.0)
    rotation = 0 if longest <= 1 else 90  # single characters read best upright
    height = 1.6 + 0.32 * steps + (0.08 * min(longest, 16) if rotation else 0.0)
    fig = _figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(energies, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(n_tokens), labels, rotation=rotation, fontsize=8, family="DejaVu Sans Mono")
    ax.set_yticks(range(steps), [str(i) for i in range(steps)], fontsize=8)
    ax.set_xlabel("token")
    ax.set_ylabel("thinking step")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="energy", fraction=0.05 if n_tokens < 40 else 0.015, pad=0.01)
    return _save(fig, path)


def plot_energy_vs_loss(
    energy: np.ndarray,
    loss: np.ndarray,
    path: str | os.PathLike,
    spearman: float | None = None,
) -> Path:
    """Scatter of per-token energy (x) against per-token loss (y), Spearman's ρ in the title if given."""
    energy = np.asarray(energy, dtype=float).ravel()
    loss = np.asarray(loss, dtype=float).ravel()
    if energy.shape != loss.shape or energy.size == 0:
        raise ValueError(
            "plot_energy_vs_loss: energy and loss must be non-empty and equally long, "
            f"got {energy.size} and {loss.size}"
        )
    fig = _figure(figsize=(5.6, 4.4), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    alpha = float(np.clip(30.0 / math.sqrt(energy.size), 0.05, 0.6))
    # Rasterized: tens of thousands of points cost nothing in a PNG but keep any vector export small.
    ax.scatter(energy, loss, s=5, alpha=alpha, color="C0", linewidths=0, rasterized=True)
    ax.set_xlabel("energy")
    ax.set_ylabel("loss")
    title = f"Per-token energy vs loss (n = {energy.size})"
    if spearman is not None:
        title += f"\nSpearman ρ = {spearman:.3f}"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_energy_by_frame(profile: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Video uncertainty (SPEC §6): the EBT's mean final energy of each predicted frame, with its
    Smooth-L1 error on a second axis, and the energy around the frame where a new digit appears.

    `profile` is what `ebt.evaluate.energy_by_frame` returns. The paper's claim: energy is
    high where the next frame is hard to foresee and falls once the content is known.
    """
    fig = _figure(figsize=(10, 3.8), dpi=_DPI)
    left, right = fig.subplots(1, 2)
    left.plot(profile["frame"], profile["energy"], "o-", color="C0", label="energy")
    left.set_xlabel("predicted frame")
    left.set_ylabel("mean final energy", color="C0")
    twin = left.twinx()
    twin.plot(profile["frame"], profile["smooth_l1"], "s--", color="C1", label="Smooth-L1")
    twin.set_ylabel("Smooth-L1 of the prediction", color="C1")
    left.set_title("Energy along a clip")
    right.plot(profile["offset"], profile["energy_by_offset"], "o-", color="C2")
    right.axvline(0, color="0.6", linestyle=":")
    right.set_xlabel("predicted frame − frame where the second digit appears")
    right.set_ylabel("mean final energy")
    right.set_title("Energy around a new digit")
    fig.tight_layout()
    return _save(fig, path)


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (`scipy.stats.spearmanr`: Pearson's r of the ranks, tied values
    sharing their mean rank). NaN when either input is constant (the correlation is undefined)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman: needs two equally long inputs of at least 2 values, got {a.size} and {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("spearman: inputs contain NaN or Inf; drop those positions first")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    stats = import_package("scipy.stats", needed_for="Spearman's rank correlation")
    return float(np.clip(stats.spearmanr(a, b)[0], -1.0, 1.0))


def printable_token(token: str) -> str:
    """A token's text with whitespace made visible: "\\n" → "⏎", " " → "␣", "\\t" → "⇥"."""
    text = token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥").replace("\r", "␍")
    # Other control characters (bytes of a byte-level tokenizer) print as escapes.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _spans_decades(ax) -> bool:
    """Whether the lines drawn on `ax` (curve and baseline) range over more than a factor of 20."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()])
    return bool(values.min() > 0 and values.max() / values.min() > 20)


def _short_number(value: float) -> str:
    """3 significant digits without scientific notation for the usual perplexity range."""
    if abs(value) >= 1e6:
        return f"{value:.2g}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG to `path` atomically (`ebt.files.atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


_SCALING_KINDS = {"ebt": ("EBT", "C0"), "transformer": ("Transformer++", "C1")}


def plot_scaling(result: Mapping, path: str | os.PathLike, *, axis: str, x_label: str) -> Path:
    """Validation loss (nats) against an axis value, log–log, from `ebt.scaling.fit.fit_scaling`'s result.

    Each kind gets its mean points as markers, the fitted line exp(intercept)·x^slope over its
    measured range, and its 95% bootstrap band shaded; the legend gives the slopes, the title the
    scaling-rate ratio (EBT / Transformer++ − 1) with its interval.
    """
    models = result.get("models") or {}
    if not models:
        raise ValueError("plot_scaling: the result has no models; pass what fit_scaling returned")
    fig = _figure(figsize=(6.4, 4.6), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    for i, (kind, model) in enumerate(models.items()):
        label, colour = _SCALING_KINDS.get(kind, (kind, f"C{(i + 2) % 10}"))
        xs = np.asarray([p["x"] for p in model["points"]], dtype=float)
        losses = np.asarray([p["loss"] for p in model["points"]], dtype=float)
        band = model["band"]
        line_x = np.asarray(band["x"], dtype=float)
        ax.plot(line_x, np.exp(model["intercept"] + model["slope"] * np.log(line_x)), color=colour, linewidth=1.4,
                label=f"{label}: slope {model['slope']:+.4f}")
        if None not in band["low"] and None not in band["high"]:
            ax.fill_between(line_x, band["low"], band["high"], color=colour, alpha=0.2, linewidth=0)
        ax.plot(xs, losses, linestyle="none", marker="o", color=colour, markersize=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Losses rarely span a decade, so label the minor ticks too (as in plot_thinking_curves).
    ax.yaxis.set_minor_locator(_ticker().LogLocator(subs=(1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
    ax.yaxis.set_major_formatter(_ticker().FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(_ticker().FormatStrFormatter("%g"))
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation loss (nats, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    ratio, ci = result.get("scaling_rate_ratio"), result.get("scaling_rate_ratio_ci")
    if ratio is None:
        title = f"{axis}: log–log fits (no EBT vs Transformer++ scaling rate)"
    else:
        interval = f" (95% CI {_signed_percent(ci[0])} … {_signed_percent(ci[1])})" if ci else ""
        title = f"{axis}: EBT scaling rate {_signed_percent(ratio)}{interval} vs Transformer++"
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_thinking_gains(result: Mapping, path: str | os.PathLike, *, x_label: str,
                        paper: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """% perplexity gains from thinking against an axis value (log x), from
    `ebt.scaling.gains.fit_gains`' result: each gain's points with their 95% bootstrap intervals as
    error bars and its least-squares line against ln(x), the slope per doubling in the legend.
    `paper` ({label: (low %, high %)}) adds the paper's figure as grey bands across the plot,
    labelled as the paper's at its own scale (its x is not this plot's)."""
    points = result.get("points") or []
    if not points:
        raise ValueError("plot_thinking_gains: the result has no points; pass what fit_gains returned")
    fig = _figure(figsize=(6.8, 5.6), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    xs = np.asarray([p["x"] for p in points], dtype=float)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    for j, (label, (low, high)) in enumerate((paper or {}).items()):
        ax.axhspan(low, high, color="0.5", alpha=0.12 + 0.1 * j, linewidth=0,
                   label=f"paper, best-of-5, {label}: {low:g}–{high:g}% (its scale, not this x)")
    for i, (name, label) in enumerate(result["gain_names"].items()):
        gains = [p["gains"][name] for p in points]
        y = np.asarray([g["pct"] for g in gains], dtype=float)
        ci = np.asarray([g["ci"] if g["ci"] else (math.nan, math.nan) for g in gains], dtype=float)  # (P, 2)
        shift = xs * 1.03 ** (i - 1)  # side by side at each x
        ax.errorbar(shift, y, yerr=np.abs(np.stack([y - ci[:, 0], ci[:, 1] - y])), fmt="o", color=f"C{i}",
                    markersize=4, capsize=3, linewidth=1)
        trend = result["trend"].get(name)
        if trend is not None:
            per = math.log(2)
            span = f" ({trend['ci'][0] * per:+.2f} … {trend['ci'][1] * per:+.2f})" if trend["ci"] else ""
            line_x = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(line_x, trend["intercept"] + trend["slope"] * np.log(line_x), color=f"C{i}", linewidth=1.2,
                    label=f"{label}: {trend['slope'] * per:+.2f}{span} points per doubling")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("% lower perplexity (95% interval)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center")  # below the axes: the bands fill their width
    ax.set_title("EBT thinking gains against " + x_label, fontsize=10)
    return _save(fig, path)


def _signed_percent(fraction: float) -> str:
    """+12% / −30% (a true minus sign) from a fraction; one decimal below 10%."""
    value = 100 * fraction
    text = f"{value:+.1f}%" if abs(value) < 10 else f"{value:+.0f}%"
    return text.replace("-", "−")
