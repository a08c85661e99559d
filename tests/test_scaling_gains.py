"""Thinking gains along an axis (`ebt.scaling.gains`): known gains and trends are recovered from
synthetic per-window losses with intervals that hold them; window difficulty shared by every
budget cancels (the bootstrap is paired); a flat gain has a trend interval holding 0; bad input is
a ValueError naming it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ebt.plots import plot_thinking_gains
from ebt.scaling.gains import GAINS, PAPER_BON5_GAIN_PCT, fit_gains, report
from ebt.suite import BUDGETS

X = np.geomspace(2.5e5, 3.9e6, 9)  # the data axis of the CPU study: 9 points over 16×


def synthetic(slopes: dict[tuple[int, int], float], *, start: float = 0.02, seeds: int = 2, windows: int = 64,
              shared_sd: float = 0.5, noise: float = 0.01, rng: np.random.Generator) -> np.ndarray:
    """(seeds, P, B, windows) losses: a falling curve, minus at each budget a loss cut of
    start + slope·ln(x/x₀) nats (0 at 2 steps), plus window difficulty (sd `shared_sd`) shared by
    every point, seed and budget, and independent noise."""
    base = 3.0 * (X / X[0]) ** -0.15
    difficulty = rng.normal(0, shared_sd, windows)
    losses = np.empty((seeds, len(X), len(BUDGETS), windows))
    for b, budget in enumerate(BUDGETS):
        cut = np.zeros(len(X)) if budget == (2, 1) else start + slopes.get(budget, 0.0) * np.log(X / X[0])
        losses[:, :, b] = (base - cut)[None, :, None] + difficulty + rng.normal(0, noise, (seeds, len(X), windows))
    return losses


def expected_gain(cut: np.ndarray) -> np.ndarray:
    return 100 * (1 - np.exp(-cut))


def test_known_gains_and_a_growing_trend_are_recovered_with_intervals_that_hold_them() -> None:
    rng = np.random.default_rng(0)
    slope = 0.01  # nats of loss cut per e-fold of tokens, at 3 steps and at best-of-M
    losses = synthetic({b: slope for b in BUDGETS}, rng=rng)
    result = fit_gains(X, BUDGETS, losses, np.full(64, 128.0), reps=1000)
    truth = expected_gain(0.02 + slope * np.log(X / X[0]))  # think_longer and self_verify alike; verify_only 0
    held = []  # 95% intervals: about one in twenty misses its truth
    for p, point in enumerate(result["points"]):
        assert point["seeds"] == 2 and point["x"] == pytest.approx(X[p])
        for name in ("think_longer", "self_verify"):
            gain = point["gains"][name]
            held.append(gain["ci"][0] < truth[p] < gain["ci"][1])
            assert abs(gain["pct"] - truth[p]) < 0.5 and 0 < gain["ci"][1] - gain["ci"][0] < 2.0
            assert gain["pct"] == pytest.approx(np.mean(gain["by_seed"]))
        assert point["gains"]["verify_only"]["ci"][0] < 0 < point["gains"]["verify_only"]["ci"][1]
        assert point["ppl"][0] > point["ppl"][1]  # 2 steps worse than 3
    assert sum(held) >= 0.8 * len(held)
    trend = result["trend"]["think_longer"]
    true_slope = np.polyfit(np.log(X), truth, 1)[0]  # points per unit ln x (≈ 100·slope while gains are small)
    assert trend["ci"][0] < true_slope < trend["ci"][1] and trend["ci"][0] > 0
    assert all(k == pytest.approx(true_slope, rel=0.3) for k in trend["by_seed"])
    assert result["trend"]["verify_only"]["ci"][0] < 0 < result["trend"]["verify_only"]["ci"][1]
    assert result["bootstrap"] == {"replicates": 1000, "seed": 0, "over": ["windows", "seeds"]}
    assert result["windows"] == 64 and [b["budget"] for b in result["budgets"]] == [2, 3, 6, 15, 30]
    text = report(result, "training tokens")
    assert "grows with x" in text and "no trend this sweep can tell" in text
    assert f"{PAPER_BON5_GAIN_PCT['most data'][0]:g}–{PAPER_BON5_GAIN_PCT['most data'][1]:g}%" in text


def test_window_difficulty_shared_by_the_budgets_cancels() -> None:
    """The same windows at every budget: a gain's interval does not grow with how much windows differ."""
    widths = []
    for shared_sd in (0.0, 1.0):
        losses = synthetic({(3, 1): 0.0}, shared_sd=shared_sd, rng=np.random.default_rng(3))
        ci = fit_gains(X, BUDGETS, losses, np.full(64, 128.0), reps=500)["points"][4]["gains"]["think_longer"]["ci"]
        widths.append(ci[1] - ci[0])
    assert widths[1] < 1.5 * widths[0]


def test_a_gain_is_the_token_weighted_perplexity_ratio_and_one_seed_resamples_windows_only() -> None:
    rng = np.random.default_rng(5)
    losses = rng.uniform(1.0, 3.0, (1, 3, len(BUDGETS), 8))
    tokens = rng.integers(1, 129, 8).astype(float)
    result = fit_gains(X[:3], BUDGETS, losses, tokens, reps=200)
    for p, point in enumerate(result["points"]):
        ppl = np.exp((losses[0, p] * tokens).sum(axis=1) / tokens.sum())  # (B,)
        assert point["ppl"] == pytest.approx(ppl.tolist())
        for name, (b, a) in GAINS.items():
            expected = 100 * (1 - ppl[BUDGETS.index(b)] / ppl[BUDGETS.index(a)])
            assert point["gains"][name]["pct"] == pytest.approx(expected)
    assert result["bootstrap"]["over"] == ["windows"]


def test_a_seed_missing_at_a_point_and_fewer_than_three_points() -> None:
    rng = np.random.default_rng(2)
    losses = synthetic({}, rng=rng)
    losses[1, 4] = np.nan  # seed 1 was not scored at the fifth point
    result = fit_gains(X[::-1], BUDGETS, losses[:, ::-1], np.full(64, 128.0), reps=200)  # any order
    assert [p["x"] for p in result["points"]] == pytest.approx(X.tolist())
    point = result["points"][4]
    assert point["seeds"] == 1 and point["gains"]["think_longer"]["by_seed"][1] is None
    assert point["gains"]["think_longer"]["pct"] == pytest.approx(point["gains"]["think_longer"]["by_seed"][0])
    two = fit_gains(X[:2], BUDGETS, losses[:, :2], np.full(64, 128.0), reps=100)
    assert two["trend"]["self_verify"] is None and "needs at least 3 points" in report(two)


@pytest.mark.parametrize("change, words", [
    (lambda a: {**a, "budgets": BUDGETS[:2]}, "lack"),
    (lambda a: {**a, "losses": a["losses"][:, :, :, :3]}, r"got losses \(2, 9, 5, 3\), tokens \(4,\)"),
    (lambda a: {**a, "x": np.r_[X[:8], X[0]]}, "distinct"),
    (lambda a: {**a, "tokens": np.zeros(4)}, "tokens must be positive"),
    (lambda a: {**a, "losses": np.where(np.arange(4) == 0, np.nan, a["losses"])}, "finite at every budget"),
    (lambda a: {**a, "losses": np.full_like(a["losses"], np.nan)}, "no scored seed"),
])
def test_bad_input_is_a_value_error_naming_it(change, words) -> None:
    good = {"x": X, "budgets": BUDGETS, "losses": np.ones((2, len(X), len(BUDGETS), 4)), "tokens": np.ones(4)}
    with pytest.raises(ValueError, match=words):
        fit_gains(**change(good), reps=10)


def test_the_plot_draws_the_gains_beside_the_paper(tmp_path) -> None:
    result = fit_gains(X, BUDGETS, synthetic({(3, 1): 0.01}, rng=np.random.default_rng(1)), np.full(64, 128.0),
                       reps=100)
    path = plot_thinking_gains(result, tmp_path / "gains.png", x_label="training tokens", paper=PAPER_BON5_GAIN_PCT)
    assert path.is_file() and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no points"):
        plot_thinking_gains({"points": []}, tmp_path / "none.png", x_label="x")
    assert math.isfinite(result["trend"]["think_longer"]["slope"])
