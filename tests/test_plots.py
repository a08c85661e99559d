"""Plots write real PNGs from small synthetic numbers; `spearman` matches hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ebt.plots import (
    plot_energy_heatmap,
    plot_energy_vs_loss,
    plot_gain_vs_shift,
    plot_thinking_curves,
    printable_token,
    spearman,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PASSES = (2, 3, 6, 15, 30)


def assert_png(path: Path, returned: Path) -> None:
    assert Path(returned) == path
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def falling_curve(start: float) -> list[tuple[float, float]]:
    return [(p, start * (1 - 0.06 * i)) for i, p in enumerate(PASSES)]


def test_thinking_curves_one_panel(tmp_path):
    curves = {"in-distribution": falling_curve(30.0), "ood-a": falling_curve(45.0), "ood-b": falling_curve(60.0)}
    baselines = {"in-distribution": 28.0, "ood-a": 50.0}
    path = tmp_path / "thinking.png"
    assert_png(path, plot_thinking_curves(curves, path, baselines=baselines))


def test_thinking_curves_panel_per_dataset_when_scales_differ(tmp_path):
    curves = {"shakespeare": falling_curve(5.0), "code": falling_curve(400.0), "random": falling_curve(2000.0)}
    path = tmp_path / "sub" / "thinking.png"  # a missing parent directory is created
    assert_png(path, plot_thinking_curves(curves, path, baselines={"code": 380.0}))


def test_thinking_curves_reject_baseline_without_curve(tmp_path):
    with pytest.raises(ValueError, match="no curve"):
        plot_thinking_curves({"a": falling_curve(10.0)}, tmp_path / "x.png", baselines={"b": 9.0})


@pytest.mark.parametrize("paper_reference", [True, False])
def test_gain_vs_shift(tmp_path, paper_reference):
    points = {"in-distribution": (1.0, 3.0), "ood-a": (1.6, 5.5), "ood-b": (2.9, 8.0)}
    path = tmp_path / "gain.png"
    assert_png(path, plot_gain_vs_shift(points, path, paper_reference=paper_reference))


def test_gain_vs_shift_with_far_out_of_distribution_probes(tmp_path):
    """Shifts of 10⁴ and gains of −2000% (docs/results.md) next to ±1% at shift 1: log axes."""
    points = {"validation": (1.0, 1.2), "kjv": (0.89, -0.1), "dyck": (18549.0, -2190.0), "arithmetic": (71638.0, -1229.0)}
    path = tmp_path / "gain.png"
    assert_png(path, plot_gain_vs_shift(points, path))


def test_gain_vs_shift_single_point(tmp_path):
    path = tmp_path / "gain.png"
    assert_png(path, plot_gain_vs_shift({"only": (1.2, 4.0)}, path))


def test_energy_heatmap(tmp_path):
    tokens = list("to be or\nnot to be, that is the question.\n") * 3  # ~120 tokens
    energies = np.random.default_rng(0).normal(size=(4, len(tokens))).cumsum(axis=0)
    path = tmp_path / "heatmap.png"
    assert_png(path, plot_energy_heatmap(energies, tokens, path))


def test_energy_heatmap_rejects_mismatched_tokens(tmp_path):
    with pytest.raises(ValueError, match="3 token columns but 2 tokens"):
        plot_energy_heatmap(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")


def test_printable_token():
    assert printable_token(" the\n") == "␣the⏎"
    assert printable_token("\x00") == "\\x00"


def test_energy_vs_loss(tmp_path):
    rng = np.random.default_rng(0)
    energy = rng.normal(size=2000)
    loss = np.exp(0.5 * energy + rng.normal(scale=0.5, size=2000))
    path = tmp_path / "scatter.png"
    assert_png(path, plot_energy_vs_loss(energy, loss, path, spearman=spearman(energy, loss)))


def test_spearman_monotone_and_reversed():
    x = np.linspace(-3, 3, 50)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_spearman_independent_is_near_zero():
    rng = np.random.default_rng(0)
    assert abs(spearman(rng.normal(size=5000), rng.normal(size=5000))) < 0.05


def test_spearman_ties_use_average_ranks():
    # ranks of a: 1, 2.5, 2.5, 4; of b: 1, 3, 2, 4. Centred: (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5),
    # so r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


def test_spearman_constant_input_is_nan_and_bad_input_raises():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equally long"):
        spearman([1, 2, 3], [1, 2])
