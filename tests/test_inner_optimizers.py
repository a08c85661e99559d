"""Thinking's inner optimizers (`ebt.options.InnerOptimizer`) on analytic energies: an ill-conditioned
quadratic E(p) = ½ Σ_c λ_c p_c² per position, whose Hessian is diag(λ)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import run_cli
from ebt.config import RunConfig, ThinkConfig
from ebt.errors import ConfigError, ThinkingDiverged
from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.think import lambda_max, think

CURVATURE = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)  # λ_max = 100: fixed α diverges past 0.02


def quadratic(curvature: torch.Tensor = CURVATURE):
    def energy(p: torch.Tensor, step: int) -> torch.Tensor:  # p (B, S, C) → (B, S)
        return 0.5 * (curvature * p * p).sum(dim=-1)
    return energy


def start(batch: int = 2, positions: int = 3) -> torch.Tensor:
    return torch.randn(batch, positions, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def final_energy(thought, energy=quadratic()) -> float:
    return float(energy(thought.y, 0).max())


def steps_to(tolerance: float, **kwargs) -> int:
    """Steps until every position's energy is below `tolerance` (at most 2000)."""
    thought = think(quadratic(), start(), steps=2000, score_final=False, **kwargs)
    energy = quadratic()
    for i, y in enumerate(thought.candidates):
        if float(energy(y, 0).max()) < tolerance:
            return i + 1
    return 2001


def test_lambda_max_matches_the_quadratic_to_one_percent():
    per_position = torch.tensor([[1.0, 10.0, 100.0], [3.0, 0.5, 7.0]], dtype=torch.float64)  # (S=2, C=3)

    def energy(p, step):
        return 0.5 * (per_position * p * p).sum(dim=-1)

    lam = lambda_max(energy, start(2, 2), 0, iterations=3, generator=torch.Generator().manual_seed(1))
    assert lam.shape == (2, 2)
    # the ill-conditioned position (λ 1, 10, 100) in 3 iterations; power iteration converges as
    # (λ₂/λ₁)^2k, so the other (3, 0.5, 7: a ratio of 0.43) takes more
    assert torch.allclose(lam[:, 0], torch.tensor(100.0, dtype=torch.float64), rtol=0.01)
    lam = lambda_max(energy, start(2, 2), 0, iterations=8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(lam, per_position.max(dim=-1).values.expand(2, 2), rtol=0.01)


def test_spectral_step_converges_where_a_fixed_step_past_two_over_lambda_diverges():
    with pytest.raises(ThinkingDiverged):  # α = 0.03 > 2/100: the stiff direction grows ×2 per step
        think(quadratic(), start(), steps=2000, step_size=0.03)
    thought = think(quadratic(), start(), steps=400, step_size=0.03,
                    optimizer=InnerOptimizer(spectral_step=1.0), generator=torch.Generator().manual_seed(0))
    assert final_energy(thought) < 1e-3 * float(quadratic()(start(), 0).max())
    assert thought.spectral_fallbacks == 0
    # every step: one energy pass, and the estimate's re-evaluation plus its 3 Hessian-vector products
    assert thought.forward_passes == 400 * (1 + 1 + 3)


def test_nesterov_and_momentum_reach_a_tolerance_in_fewer_steps_than_plain_descent():
    alpha = 1.0 / 100  # the best fixed step for λ_max = 100; the λ = 1 direction shrinks by 0.99 a step
    plain = steps_to(1e-6, step_size=alpha)
    heavy_ball = steps_to(1e-6, step_size=alpha, optimizer=InnerOptimizer(momentum=0.8))
    nesterov = steps_to(1e-6, step_size=alpha, optimizer=InnerOptimizer(momentum=0.8, nesterov=True))
    assert plain > 500 and nesterov < plain / 4 and heavy_ball < plain / 4, (plain, heavy_ball, nesterov)  # 737, 107, 116


def test_max_step_norm_bounds_every_positions_step():
    y = start()
    thought = think(quadratic(), y, steps=1, step_size=5.0, optimizer=InnerOptimizer(max_step_norm=0.25))
    moved = (thought.y - y).norm(dim=-1)
    assert float(moved.max()) <= 0.25 + 1e-12 and float(moved.min()) > 0
    small = think(quadratic(), y, steps=1, step_size=1e-4, optimizer=InnerOptimizer(max_step_norm=0.25))
    assert torch.allclose(small.y, think(quadratic(), y, steps=1, step_size=1e-4).y)  # under the bound: unchanged


def test_a_spectral_estimate_that_is_not_positive_falls_back_to_the_given_step():
    def concave(p, step):  # λ_max < 0 everywhere: no curvature to scale by
        return -0.5 * (p * p).sum(dim=-1)

    thought = think(concave, start(), steps=2, step_size=0.1, optimizer=InnerOptimizer(spectral_step=1.0))
    plain = think(concave, start(), steps=2, step_size=0.1)
    assert thought.spectral_fallbacks == 2 * 2 * 3  # every position of every step
    assert torch.allclose(thought.y, plain.y) and bool(torch.isfinite(thought.y).all())


def test_the_default_optimizer_is_plain_descent_bit_for_bit():
    y = start()
    assert torch.equal(think(quadratic(), y, steps=5, step_size=0.01, optimizer=InnerOptimizer()).y,
                       think(quadratic(), y, steps=5, step_size=0.01).y)


def test_training_through_the_optimizers_reaches_the_energy_parameters():
    """With create_graph, a loss on the result trains θ (here the curvature) through every optimizer."""
    for optimizer in (InnerOptimizer(momentum=0.5, nesterov=True), InnerOptimizer(spectral_step=0.5),
                      InnerOptimizer(max_step_norm=0.1), InnerOptimizer(mirror_descent=True)):
        curvature = CURVATURE.clone().requires_grad_()
        thought = think(quadratic(curvature), start(), steps=3, step_size=0.005, create_graph=True,
                        optimizer=optimizer)
        (grad,) = torch.autograd.grad(thought.y.pow(2).sum(), curvature)
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, optimizer


@pytest.mark.parametrize("fields, message", [
    (dict(momentum=1.0), "momentum = 1.0 is not allowed; it must be a finite number in \\[0, 1\\)"),
    (dict(momentum=-0.1), "momentum"),
    (dict(spectral_step=math.nan), "spectral_step = nan"),
    (dict(max_step_norm=-1.0), "max_step_norm = -1.0"),
    (dict(power_iterations=0), "power_iterations = 0"),
    (dict(nesterov=True), "nesterov = true needs a momentum > 0"),
    (dict(mirror_descent=1), "mirror_descent = 1 is not allowed; it must be true or false"),
    (dict(momentum=0.5, nesterov="no"), "nesterov = 'no' is not allowed; it must be true or false"),
])
def test_bad_optimizer_fields_are_clear_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as error:
        InnerOptimizer(**fields)
    assert error.value.field in fields


@pytest.mark.parametrize("fields, message", [
    (dict(momentum=1.5), r"ThinkingOptions.momentum = 1.5 is not allowed; it must be a finite number in \[0, 1\)"),
    (dict(momentum=math.inf), r"ThinkingOptions.momentum = inf"),
    (dict(momentum=-0.5), r"ThinkingOptions.momentum = -0.5 is not allowed; it must be a finite number in \[0, 1\)"),
    (dict(steps=-1), r"ThinkingOptions.steps = -1 is not allowed; .* or left unset \(None: as trained\)"),
    (dict(spectral_step=-2.0), r"ThinkingOptions.spectral_step = -2.0"),
    (dict(max_step_norm=math.nan), r"ThinkingOptions.max_step_norm = nan"),
    (dict(nesterov="yes"), r"ThinkingOptions.nesterov = 'yes'"),
    (dict(mirror_descent="no"), r"ThinkingOptions.mirror_descent = 'no' is not allowed; it must be true or false"),
])
def test_bad_thinking_options_are_clear_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as error:
        ThinkingOptions(**fields)
    assert error.value.field == next(iter(fields))  # the command line maps it to its flag


def test_each_knob_is_declared_once_and_derived_everywhere():
    """An InnerOptimizer field is the whole declaration of a knob: the config trains with it (same
    default, same check, under its think.* key), inference overrides it (None: as trained) unless
    declared `inference=False`, and the trained value reaches the optimizer."""
    for f in dataclasses.fields(InnerOptimizer):
        assert getattr(ThinkConfig(), f.name) == f.default
        overridable = f.metadata.get("inference", True)
        assert (f.name in {g.name for g in dataclasses.fields(ThinkingOptions)}) == overridable
        if overridable:
            assert getattr(ThinkingOptions(), f.name) is None and ThinkingOptions.__dataclass_fields__[f.name].metadata["help"]
    config = RunConfig()
    config.think.momentum = 1.0
    with pytest.raises(ConfigError, match=r"think.momentum = 1.0 is not allowed; it must be a finite number in \[0, 1\)") \
            as error:
        config.validated()
    assert error.value.field == "think.momentum"
    config.think.momentum, config.think.power_iterations = 0.5, 7
    assert InnerOptimizer.of(config.think) == InnerOptimizer(momentum=0.5, power_iterations=7)


def test_options_override_what_the_model_trained_with():
    trained = InnerOptimizer(momentum=0.5)
    assert ThinkingOptions().optimizer(trained) == trained
    assert ThinkingOptions(momentum=0.9, nesterov=True).optimizer(trained) == InnerOptimizer(0.9, True)
    assert ThinkingOptions(spectral_step=1.0).optimizer(trained).spectral_step == 1.0


def test_the_options_reach_a_trained_model_from_the_command_line(trained_runs, capsys):
    run = trained_runs["ebt"]["dir"]
    code, plain, err = run_cli(["eval", run, "--json", "--max-examples", "2"], capsys)
    assert code == 0, err
    code, spectral, err = run_cli(["eval", run, "--json", "--max-examples", "2", "--spectral-step", "1",
                                   "--momentum", "0.5", "--nesterov", "--max-step-norm", "10"], capsys)
    assert code == 0, err
    import json

    plain, spectral = json.loads(plain), json.loads(spectral)
    assert spectral["forward_passes"] == plain["forward_passes"] + 2 * 4  # 2 steps × (1 + 3) extra passes
    assert spectral["loss"] != plain["loss"]
    code, _, err = run_cli(["eval", run, "--momentum", "1"], capsys)
    assert code == 2 and "ThinkingOptions.momentum = 1.0 is not allowed" in err and "(flag --momentum)" in err
    code, _, err = run_cli(["eval", trained_runs["transformer"]["dir"], "--momentum", "0.5"], capsys)
    assert code == 2 and "cannot think" in err
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--out", "/tmp/never", "--think.nesterov=true"],
                           capsys)
    assert code == 2 and "think.nesterov" in err


def linear_energy(costs: torch.Tensor):
    """E(p) = costs · p per position: on the simplex its minimum is the one-hot of the cheapest entry."""
    def energy(p: torch.Tensor, step: int) -> torch.Tensor:
        return (costs * p).sum(dim=-1)
    return energy


def test_mirror_descent_keeps_descending_where_the_papers_update_stops_at_a_fixed_point():
    """With p = softmax(y), mirror descent is exponentiated gradient: after k steps softmax(y_0 −
    kα·costs), so every step lowers E towards the simplex's minimum. The paper's p − α∇E restarts
    from probabilities each step: its prediction stops changing (a fixed point) short of it."""
    costs = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    y0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    softmax = lambda y: torch.softmax(y, dim=-1)  # noqa: E731
    kwargs = dict(steps=20, step_size=0.5, prepare=softmax, score_final=True)
    mirror = think(linear_energy(costs), y0, optimizer=InnerOptimizer(mirror_descent=True), **kwargs)
    paper = think(linear_energy(costs), y0, **kwargs)
    assert torch.allclose(softmax(mirror.y), softmax(y0 - 20 * 0.5 * costs))
    m = [float(e.mean()) for e in mirror.energies]
    assert all(b < a for a, b in zip(m, m[1:])) and m[-1] < 0.01  # every step lower, close to min E = 0
    p = [float(e.mean()) for e in paper.energies]
    assert abs(p[-1] - p[-2]) < 1e-9 and p[-1] > 0.3  # converged, far from the minimum


def test_mirror_descent_is_the_plain_update_when_prepare_is_the_identity():
    y = start()
    for optimizer in (InnerOptimizer(), InnerOptimizer(momentum=0.5)):
        mirrored = dataclasses.replace(optimizer, mirror_descent=True)
        assert torch.equal(think(quadratic(), y, steps=5, step_size=0.01, optimizer=optimizer).y,
                           think(quadratic(), y, steps=5, step_size=0.01, optimizer=mirrored).y)


def test_mirror_descent_reaches_a_trained_model_from_the_command_line(trained_runs, capsys):
    run = trained_runs["ebt"]["dir"]
    scores = []
    for flags in ([], ["--mirror-descent"], ["--no-mirror-descent"]):
        code, out, err = run_cli(["eval", run, "--json", "--max-examples", "2", *flags], capsys)
        assert code == 0, err
        scores.append(json.loads(out))
    assert scores[1]["loss"] != scores[0]["loss"] == scores[2]["loss"]  # S1 trained with the paper's update
    assert "thinking" not in scores[0] and scores[1]["thinking"] == {"mirror_descent": True}  # what was set
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--out", "/tmp/never",
                            "--think.mirror_descent=maybe"], capsys)
    assert code == 2 and "think.mirror_descent" in err


def test_nesterov_without_momentum_says_which_side_was_trained() -> None:
    from ebt.options import InnerOptimizer, ThinkingOptions

    trained = InnerOptimizer(momentum=0.5, nesterov=True)
    with pytest.raises(ConfigError, match=r"nesterov = true \(as trained\).*momentum = 0.0 \(given\).*nesterov = false") as e:
        ThinkingOptions(momentum=0.0).optimizer(trained)
    assert e.value.field == "momentum"
    with pytest.raises(ConfigError, match=r"nesterov = true \(given\).*momentum = 0.0 \(as trained\)") as e:
        ThinkingOptions(nesterov=True).optimizer(InnerOptimizer())
    assert e.value.field == "nesterov"
    assert ThinkingOptions(momentum=0.0, nesterov=False).optimizer(trained).momentum == 0.0
