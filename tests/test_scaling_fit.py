"""Scaling-rate fits recover known slopes, ratios and crossings from synthetic per-window losses;
the bootstrap pairs windows across points and kinds; bad input is a ValueError naming it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ebt.plots import plot_scaling
from ebt.scaling.fit import fit_line, fit_scaling, report

X = np.geomspace(1e5, 1.6e6, 9)  # 16× range, 9 log-spaced points (the data axis of the CPU study)


def window_losses(slope: float, *, level: float = 3.0, seeds: int = 2, windows: int = 256, noise: float = 0.3,
                  seed_sd: float = 0.005, shared: np.ndarray | None = None, x: np.ndarray = X,
                  rng: np.random.Generator) -> np.ndarray:
    """(seeds, P, windows) losses around level·(x/x_min)^slope: Gaussian noise per window, a small
    offset per seed, and `shared` (broadcast to the same shape) added on top."""
    mean = level * (x / x[0]) ** slope  # (P,)
    losses = (mean[None, :, None] + rng.normal(0, noise, (seeds, len(x), windows))
              + rng.normal(0, seed_sd, (seeds, 1, 1)))
    return losses if shared is None else losses + shared


def ratio_ci_width(result: dict) -> float:
    low, high = result["scaling_rate_ratio_ci"]
    return high - low


def test_fit_line_exact():
    slope, intercept = fit_line(X, 2.0 * X ** -0.1)
    assert slope == pytest.approx(-0.1) and intercept == pytest.approx(math.log(2.0))


def test_recovers_known_slope():
    rng = np.random.default_rng(0)
    result = fit_scaling({"ebt": (X, window_losses(-0.1, rng=rng))}, reps=1000)
    model = result["models"]["ebt"]
    low, high = model["slope_ci"]
    assert low < -0.1 < high and 0 < high - low < 0.05
    assert model["slope"] == pytest.approx(-0.1, abs=0.01)
    assert [p["x"] for p in model["points"]] == pytest.approx(X.tolist())
    assert all(p["seeds"] == 2 and p["ppl"] == pytest.approx(math.exp(p["loss"])) for p in model["points"])
    assert all(k == pytest.approx(-0.1, abs=0.02) for k in model["slope_by_seed"])
    band = model["band"]
    assert len(band["x"]) == 50 and band["x"][0] == pytest.approx(X[0]) and band["x"][-1] == pytest.approx(X[-1])
    assert all(lo < hi for lo, hi in zip(band["low"], band["high"]))
    assert result["scaling_rate_ratio"] is None and result["crossing"] is None  # one kind: no ratio
    assert result["bootstrap"] == {"replicates": 1000, "over": ["windows", "seeds"], "seed": 0}


def test_unsorted_x_is_sorted_with_its_losses():
    rng = np.random.default_rng(1)
    losses = window_losses(-0.1, rng=rng, noise=0.0)
    order = rng.permutation(len(X))
    shuffled = fit_scaling({"ebt": (X[order], losses[:, order])}, reps=50)
    assert shuffled["models"]["ebt"]["slope"] == pytest.approx(-0.1, abs=1e-3)


def test_ratio_of_known_slopes():
    rng = np.random.default_rng(2)
    curves = {"ebt": (X, window_losses(-0.13, rng=rng)), "transformer": (X, window_losses(-0.10, rng=rng))}
    result = fit_scaling(curves)
    low, high = result["scaling_rate_ratio_ci"]
    assert low < 0.3 < high
    assert result["scaling_rate_ratio"] == pytest.approx(0.3, abs=0.08)
    assert len(result["scaling_rate_ratio_by_seed"]) == 2
    assert all(r == pytest.approx(0.3, abs=0.15) for r in result["scaling_rate_ratio_by_seed"])


def test_bootstrap_pairs_windows_across_points_and_kinds():
    # Large window difficulty shared by every point, seed and kind (the same windows are scored
    # everywhere) cancels in the ratio only if each replicate resamples the windows once for all.
    # Resampling per kind instead widens this interval about 5× (to ~0.15); per point, ~15×.
    rng = np.random.default_rng(3)
    size = 1.5
    shared = rng.uniform(-size, size, 256)
    paired = fit_scaling({"ebt": (X, window_losses(-0.13, noise=0.05, shared=shared, rng=rng)),
                          "transformer": (X, window_losses(-0.10, noise=0.05, shared=shared, rng=rng))})
    independent = fit_scaling({
        kind: (X, window_losses(k, noise=0.05, shared=rng.uniform(-size, size, (2, len(X), 256)), rng=rng))
        for kind, k in (("ebt", -0.13), ("transformer", -0.10))
    })
    assert ratio_ci_width(paired) < ratio_ci_width(independent) / 5
    assert paired["scaling_rate_ratio"] == pytest.approx(0.3, abs=0.03)


def test_missing_seed_at_one_point_is_tolerated():
    rng = np.random.default_rng(4)
    losses = window_losses(-0.1, rng=rng)
    losses[1, 3] = np.nan
    model = fit_scaling({"ebt": (X, losses)}, reps=200)["models"]["ebt"]
    assert [p["seeds"] for p in model["points"]] == [2, 2, 2, 1, 2, 2, 2, 2, 2]
    assert model["points"][3]["loss"] == pytest.approx(losses[0, 3].mean())
    assert all(k is not None for k in model["slope_by_seed"])  # seed 1 fits its 8 points


def test_seed_with_too_few_points_has_no_slope():
    rng = np.random.default_rng(5)
    losses = window_losses(-0.1, rng=rng)
    losses[1, 1:] = np.nan
    result = fit_scaling({"ebt": (X, losses), "transformer": (X, window_losses(-0.1, rng=rng))}, reps=100)
    assert result["models"]["ebt"]["slope_by_seed"][1] is None
    assert result["scaling_rate_ratio_by_seed"][1] is None and result["scaling_rate_ratio_by_seed"][0] is not None
    json.dumps(result, allow_nan=False)


def test_point_missing_in_every_seed_raises():
    losses = window_losses(-0.1, rng=np.random.default_rng(6))
    losses[:, 4] = np.nan
    with pytest.raises(ValueError, match=r"'ebt', x=400000: every seed is missing"):
        fit_scaling({"ebt": (X, losses)})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, l: (x[:2], l[:, :2]), "kind 'ebt' has 2 points; a fit needs at least 3"),
        (lambda x, l: (np.r_[0.0, x[1:]], l), "finite and positive"),
        (lambda x, l: (np.r_[-1.0, x[1:]], l), "finite and positive"),
        (lambda x, l: (np.r_[x[:-1], x[0]], l), "distinct"),
        (lambda x, l: (x, l[0]), "shape"),
        (lambda x, l: (x, np.where(np.arange(256) == 7, np.nan, l)), "x=100000, seed 0: window losses"),
        (lambda x, l: (x, np.where(np.arange(256) == 7, -1.0, l)), "must be finite and >= 0"),
        (lambda x, l: (x, np.where(np.arange(256) == 7, np.inf, l)), "must be finite and >= 0"),
        (lambda x, l: (x, np.zeros_like(l)), "a log fit needs loss > 0"),
    ],
)
def test_bad_input_raises(change, message):
    x, losses = change(X, window_losses(-0.1, rng=np.random.default_rng(7), noise=0.01))
    with pytest.raises(ValueError, match=message):
        fit_scaling({"ebt": (x, losses)}, reps=10)


def test_kinds_must_share_windows():
    rng = np.random.default_rng(8)
    curves = {"ebt": (X, window_losses(-0.1, rng=rng)), "transformer": (X, window_losses(-0.1, windows=128, rng=rng))}
    with pytest.raises(ValueError, match="same windows"):
        fit_scaling(curves, reps=10)


def crossing_of(level_ebt: float, x: np.ndarray = X) -> dict:
    """EBT steeper (−0.13) but starting at `level_ebt` against a Transformer++ at 3.0 (−0.10)."""
    rng = np.random.default_rng(9)
    curves = {"ebt": (x, window_losses(-0.13, level=level_ebt, noise=0.01, rng=rng, x=x)),
              "transformer": (x, window_losses(-0.10, noise=0.01, rng=rng, x=x))}
    return fit_scaling(curves, reps=100)


def test_crossing_inside_the_range():
    crossing = crossing_of(3.2)["crossing"]
    true_x = X[0] * (3.2 / 3.0) ** (1 / 0.03)  # 3.2·u^−0.13 = 3.0·u^−0.10, u = x / x_min
    assert crossing["x"] == pytest.approx(true_x, rel=0.1)
    assert crossing["loss"] == pytest.approx(3.0 * (true_x / X[0]) ** -0.10, rel=0.01)
    assert crossing["extrapolated"] is False


def test_crossing_extrapolated_far_or_parallel():
    near = crossing_of(3.2 * 1.08)["crossing"]  # beyond max x, within 10×
    assert near is not None and near["extrapolated"] is True and near["x"] > X[-1]
    assert crossing_of(6.0)["crossing"] is None  # crosses at ~10^10 x_min
    rng = np.random.default_rng(10)
    parallel = fit_scaling({"ebt": (X, window_losses(-0.1, level=3.2, noise=0.0, seed_sd=0.0, rng=rng)),
                            "transformer": (X, window_losses(-0.1, noise=0.0, seed_sd=0.0, rng=rng))}, reps=10)
    assert parallel["crossing"] is None


def test_offset_power_law():
    x = np.geomspace(1e6, 1e8, 8)
    e, a, alpha = 1.5, 400.0, 0.4
    losses = (e + a * x ** -alpha)[None, :, None] * np.ones((1, 1, 4))
    offset = fit_scaling({"ebt": (x, losses)}, reps=10)["models"]["ebt"]["offset_power_law"]
    assert offset["E"] == pytest.approx(e, rel=0.02)
    assert offset["alpha"] == pytest.approx(alpha, rel=0.02)
    assert offset["A"] == pytest.approx(a, rel=0.1)
    three = fit_scaling({"ebt": (x[:3], losses[:, :3])}, reps=10)["models"]["ebt"]["offset_power_law"]
    assert "needs at least 4 points" in three["error"]


def test_result_is_json_without_nan():
    rng = np.random.default_rng(11)
    ebt = window_losses(-0.13, rng=rng)
    ebt[0, 2] = np.nan
    result = fit_scaling({"ebt": (X, ebt), "transformer": (X, window_losses(-0.10, seeds=1, rng=rng)),
                          "other": (X[:3], window_losses(-0.2, seeds=1, rng=rng, x=X[:3]))}, reps=200)
    assert json.loads(json.dumps(result, allow_nan=False))["models"]["other"]["offset_power_law"]["error"]
    assert len(result["scaling_rate_ratio_by_seed"]) == 1


def test_plot_scaling_writes_png(tmp_path):
    rng = np.random.default_rng(12)
    result = fit_scaling({"ebt": (X, window_losses(-0.13, rng=rng)),
                          "transformer": (X, window_losses(-0.10, rng=rng))}, reps=200)
    path = tmp_path / "sub" / "scaling.png"
    assert plot_scaling(result, path, axis="data", x_label="training tokens") == path
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 1000


def test_report_mentions_slope_ratio_and_undecided_interval():
    rng = np.random.default_rng(13)
    result = fit_scaling({"ebt": (X, window_losses(-0.1, rng=rng)),
                          "transformer": (X, window_losses(-0.1, rng=rng))}, reps=500)
    low, high = result["scaling_rate_ratio_ci"]
    assert low < 0 < high
    text = report(result, "data")
    assert f"{result['models']['ebt']['slope']:+.4f}" in text
    assert f"{100 * result['scaling_rate_ratio']:+.1f}%" in text
    assert "+35.98%" in text  # the paper's data-axis figure
    assert "cannot tell which kind scales faster" in text
