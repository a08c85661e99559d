"""Issue 22's levers: selection that uses the energy better (soft selection, scoring at the decoded
token, step acceptance), the logit decay of the inner optimizer, a start that can be forgotten, and
the training terms that ask the energy to rank candidates and the descent to be monotone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import random_ids, run_cli, tiny_model
from ebt.config import ThinkConfig
from ebt.errors import ConfigError
from ebt.objectives import UnrolledThinking, monotone_penalty, ranking_loss
from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.tasks.text import IGNORE_INDEX, NextToken
from ebt.think import think

STIFF = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)


def stiff(p: torch.Tensor, step: int) -> torch.Tensor:  # (…, S, C) → (…, S); α > 0.02 overshoots
    return 0.5 * (STIFF * p * p).sum(dim=-1)


def start() -> torch.Tensor:
    return torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# --- step acceptance ----------------------------------------------------------------------------


def test_step_acceptance_never_raises_a_positions_energy_where_plain_descent_diverges():
    plain = think(stiff, start(), steps=8, step_size=0.05, score_final=True)
    accepted = think(stiff, start(), steps=8, step_size=0.05, accept_steps=True)
    assert float(plain.energies[-1].max()) > float(plain.energies[0].max())  # overshoots: E grows
    # energies[i]: of the candidate step i starts from; from the first prediction (energies[1]) on
    # they never rise (the first step, leaving the start, is always taken)
    for before, after in zip(accepted.energies[1:], accepted.energies[2:]):
        assert bool((after <= before).all())
    assert float(accepted.energies[-1].max()) < float(plain.energies[-1].max())
    assert float(accepted.energies[-1].max()) < float(accepted.energies[1].max())
    # the trace is consistent: the last energy is the final prediction's
    assert torch.allclose(stiff(accepted.y, 0), accepted.energies[-1])
    assert accepted.forward_passes == plain.forward_passes  # the checks use energies computed anyway


def test_step_acceptance_changes_nothing_where_every_step_lowers_the_energy():
    plain = think(stiff, start(), steps=4, step_size=0.005, score_final=True)
    accepted = think(stiff, start(), steps=4, step_size=0.005, accept_steps=True)
    assert torch.equal(plain.y, accepted.y)


def test_step_acceptance_never_returns_to_the_start():
    # an overshooting first step raises E (p − 0.05·100·p = −4p on the stiff coordinate), and is kept
    near = torch.full((2, 1, 3, 3), 0.1, dtype=torch.float64)
    thought = think(stiff, near, steps=1, step_size=0.05, accept_steps=True)
    assert float(thought.energies[-1].min()) > float(stiff(near, 0).max())
    assert torch.allclose(thought.y[..., 2], torch.full_like(thought.y[..., 2], -0.4))


def test_step_acceptance_is_for_inference():
    with pytest.raises(ConfigError, match="accept_steps is for inference") as e:
        think(stiff, start().requires_grad_(), steps=2, step_size=0.1, create_graph=True, accept_steps=True)
    assert e.value.field == "accept_steps"


# --- logit decay ----------------------------------------------------------------------------------


def test_logit_decay_forgets_the_start_geometrically():
    flat = lambda p, step: p.sum(dim=-1) * 0  # noqa: E731  (no gradient: only the decay acts)
    y0 = start()
    thought = think(flat, y0, steps=3, step_size=1.0, optimizer=InnerOptimizer(mirror_descent=True, logit_decay=0.5))
    assert torch.allclose(thought.y, y0 * 0.125)


def test_logit_decay_is_checked():
    with pytest.raises(ConfigError, match=r"logit_decay = 1 is not allowed; it must be a finite number in \[0, 1\)"):
        InnerOptimizer(logit_decay=1)
    from ebt.config import _check_think
    with pytest.raises(ConfigError, match=r"think.logit_decay = -0.1 is not allowed") as e:
        _check_think(dataclasses.replace(ThinkConfig(), logit_decay=-0.1))
    assert e.value.field == "think.logit_decay"


# --- selection ------------------------------------------------------------------------------------


def test_mixture_of_text_predictions_is_the_weighted_mean_of_their_distributions():
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    w = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64), dim=1)
    mixed = NextToken.mix(y, w)
    expected = (w.unsqueeze(-1) * torch.softmax(y, -1)).sum(1)
    assert torch.allclose(torch.softmax(mixed, -1), expected)


def test_soft_selection_goes_from_the_argmin_to_the_ensemble():
    model, x = tiny_model(), random_ids(2, 8)
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        hard = model.think(x, samples=4, generator=generator())
        cold = model.think(x, samples=4, selection_temperature=1e-9, generator=generator())
        hot = model.think(x, samples=4, selection_temperature=1e9, generator=generator())
    assert torch.allclose(torch.softmax(cold.y, -1), torch.softmax(hard.y, -1), atol=1e-9)
    from ebt.best_of import think_samples
    with torch.no_grad():
        samples = think_samples(model, model.landscapes(x, differentiable=False), x, ThinkingOptions(samples=4),
                                generator=generator())
    ensemble = torch.softmax(samples.y, -1).mean(1)
    assert torch.allclose(torch.softmax(hot.y, -1), ensemble, atol=1e-9)
    assert not torch.allclose(hot.y, hard.y)


def test_a_tiny_selection_temperature_is_the_argmin_not_nan():
    model, x = tiny_model().float(), random_ids(2, 8)
    with torch.no_grad():
        hard = model.think(x, samples=3, generator=torch.Generator().manual_seed(3))
        tiny = model.think(x, samples=3, selection_temperature=1e-300, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(tiny.y).all()
    assert torch.allclose(torch.softmax(tiny.y, -1), torch.softmax(hard.y, -1), atol=1e-6)


def test_a_tiny_ranking_temperature_stays_finite():
    task = NextToken(5)
    model = type("M", (), {"task": task})()
    targets = torch.tensor([[0, 1]])
    visited = [torch.randn(1, 1, 2, 5), torch.randn(1, 1, 2, 5)]
    energy = lambda p, step: p.sum(-1) * 0 + torch.arange(p.shape[1]).view(1, -1, 1).float()  # noqa: E731
    assert torch.isfinite(ranking_loss(model, energy, visited, targets, 1, temperature=1e-6))


def test_scoring_at_the_decoded_token_scores_one_hot_candidates():
    model, x = tiny_model(), random_ids(2, 8)
    from ebt.best_of import think_samples
    options = ThinkingOptions(samples=3, score_decoded=True)
    with torch.no_grad():
        t = think_samples(model, model.landscapes(x, differentiable=False), x, options,
                          generator=torch.Generator().manual_seed(0))
        one_hot = torch.nn.functional.one_hot(t.y.argmax(-1), t.y.shape[-1]).to(t.y.dtype)
        expected = model.landscapes(x, differentiable=False)(one_hot, model.think_config.steps)
    assert torch.allclose(t.energies[-1], expected)
    assert t.forward_passes == 3 * (model.think_config.steps + 1)


@pytest.mark.parametrize("given, field", [({"selection_temperature": 0.5}, "selection_temperature"),
                                          ({"score_decoded": True}, "score_decoded")])
def test_selection_options_need_samples_where_thinking_runs(given, field):
    options = ThinkingOptions(**given)  # a suite gives them for its best-of-M budgets only
    with pytest.raises(ConfigError, match="selects among samples; it needs samples ≥ 2") as e:
        tiny_model().think(random_ids(1, 8), options)
    assert e.value.field == field


@pytest.mark.parametrize("given, field, message", [
    ({"samples": 2, "selection_temperature": 0.0}, "selection_temperature", "must be a finite number > 0"),
    ({"samples": 2, "selection_temperature": float("nan")}, "selection_temperature", "finite number"),
    ({"accept_steps": True, "tolerance": 0.1}, "accept_steps", "cannot be combined with tolerance"),
    ({"accept_steps": "yes"}, "accept_steps", "true or false"),
])
def test_selection_options_are_checked(given, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        ThinkingOptions(**given)
    assert e.value.field == field


def test_score_decoded_is_refused_for_images():
    from test_images import tiny_image_model
    model = tiny_image_model()
    noisy = torch.zeros(2, 1, 12, 12, dtype=torch.float64)
    with pytest.raises(ConfigError, match="score_decoded = true") as e:
        model.think(noisy, samples=2, langevin_std=0.1, score_decoded=True)
    assert e.value.field == "score_decoded"


def test_the_cli_names_the_flags_of_selection_errors(trained_runs, capsys):
    code, _, err = run_cli(["eval", trained_runs["ebt"]["dir"], "--selection-temperature", "1"], capsys)
    assert code == 2 and "--selection-temperature" in err and "samples ≥ 2" in err
    # the suite applies them to its best-of-M budgets
    code, out, err = run_cli(["eval", trained_runs["ebt"]["dir"], "--suite", "paper", "--max-examples", "1",
                              "--selection-temperature", "1", "--json"], capsys)
    assert code == 0, err


# --- the start --------------------------------------------------------------------------------------


def test_a_zero_start_starts_at_the_uniform_distribution_and_needs_noise_for_samples():
    model = tiny_model(overrides={"think.start_std": 0.0})
    x = random_ids(2, 8)
    y = model.initial_candidate(x, 3, torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.zeros_like(y))
    with pytest.raises(ConfigError, match="identical candidates") as e:
        model.think(x, samples=3)
    assert e.value.field == "langevin_std"
    with torch.no_grad():
        model.think(x, samples=3, langevin_std=0.5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key, value, message", [
    ("start_std", -1.0, "think.start_std = -1.0 is not allowed"),
    ("ranking_weight", float("inf"), "think.ranking_weight = inf is not allowed"),
    ("ranking_temperature", 0.0, r"think.ranking_temperature = 0.0 is not allowed; it must be a finite number in \[1e-06, 1e\+06\]"),
    ("ranking_weight", 1e30, r"think.ranking_weight = 1e\+30 is not allowed"),
    ("start_std", 1e300, r"think.start_std = 1e\+300 is not allowed"),
    ("monotone_weight", -0.5, "think.monotone_weight = -0.5 is not allowed"),
    ("ranking_samples", 0, r"think.ranking_samples = 0 is not allowed; it must be an integer in \[1, 64\]"),
    ("ranking_samples", 4, "1 when think.ranking_weight is 0"),
])
def test_training_terms_are_checked(key, value, message):
    from ebt.config import _check_think
    with pytest.raises(ConfigError, match=message):
        _check_think(dataclasses.replace(ThinkConfig(), **{key: value}))


# --- training terms ----------------------------------------------------------------------------------


def test_ranking_loss_is_low_when_energies_order_candidates_as_their_losses():
    task = NextToken(5)
    targets = torch.tensor([[0, 1, IGNORE_INDEX]])
    good = torch.full((1, 1, 3, 5), -5.0, dtype=torch.float64)
    good[..., 0, 0] = good[..., 1, 1] = 5.0  # confident and right
    bad = -good  # confident and wrong
    visited = [bad, good]

    def energy_of(order):  # E = order · (loss-like score): agrees (+1) or disagrees (−1) with the losses
        def energy(p, step):
            losses = task.position_losses(torch.log(p.clamp_min(1e-12)), targets)
            return order * losses * 10
        return energy

    model = type("M", (), {"task": task})()
    agree = ranking_loss(model, energy_of(1.0), visited, targets, 1, temperature=0.1)
    disagree = ranking_loss(model, energy_of(-1.0), visited, targets, 1, temperature=0.1)
    assert float(agree) < 0.01 < 1.0 < float(disagree)


def test_ranking_loss_reaches_theta_to_first_order_only():
    model = tiny_model(overrides={"think.ranking_weight": 1.0})
    x, targets = random_ids(2, 8), random_ids(2, 8, seed=1)
    visited = [model.initial_candidate(x, 1, torch.Generator().manual_seed(0)).requires_grad_()]
    loss = ranking_loss(model, model.landscapes(x), visited + [visited[0] * 2], targets, 1, 0.1)
    loss.backward()
    assert visited[0].grad is None  # the candidates are detached
    assert model.energy_head.weight.grad is not None and bool(model.energy_head.weight.grad.abs().sum() > 0)


def test_monotone_penalty_counts_rises_and_skips_padding():
    task = NextToken(3)
    targets = torch.tensor([[0, IGNORE_INDEX]])
    right = torch.tensor([[[4.0, 0, 0], [0, 0, 0]]]).unsqueeze(1)
    wrong = torch.tensor([[[0, 4.0, 0], [9.0, 0, 0]]]).unsqueeze(1)
    falling = monotone_penalty(task, [wrong, right], targets)
    rising = monotone_penalty(task, [right, wrong], targets)
    assert float(falling) == 0 < float(rising)  # a hinge: nothing for a fall, the rise for a rise
    rise = float(task.position_losses(wrong.squeeze(1), targets)[0, 0] - task.position_losses(right.squeeze(1), targets)[0, 0])
    assert float(rising) == pytest.approx(rise, rel=1e-6)  # the padded position counts for nothing


def test_ranking_samples_need_starts_that_differ():
    from ebt.config import _check_think
    with pytest.raises(ConfigError, match="every start would be the same"):
        _check_think(dataclasses.replace(ThinkConfig(), ranking_weight=1.0, ranking_samples=3, start_std=0.0))


def test_other_starts_join_the_ranked_pool(monkeypatch):
    import ebt.objectives as objectives
    seen = []
    original = objectives.ranking_loss

    def spy(model, energy, visited, *args):
        seen.append(sum(c.shape[1] for c in visited))
        return original(model, energy, visited, *args)

    monkeypatch.setattr(objectives, "ranking_loss", spy)
    model = tiny_model(overrides={"think.ranking_weight": 1.0, "think.ranking_samples": 3})
    loss, _ = UnrolledThinking(model)(random_ids(2, 8), random_ids(2, 8, seed=1), torch.arange(2))
    loss.backward()
    assert seen == [3 * (model.think_config.steps + 1)]  # 3 descents: each start and its steps


@pytest.mark.parametrize("overrides", [
    {"think.ranking_weight": 1.0},
    {"think.ranking_weight": 1.0, "think.ranking_samples": 2},
    {"think.monotone_weight": 1.0},
    {"think.ranking_weight": 0.5, "think.monotone_weight": 0.5, "think.mirror_descent": True,
     "think.start_std": 0.0, "think.langevin_std": 0.5, "think.logit_decay": 0.2},
])
def test_training_terms_train_and_are_reported(overrides):
    model = tiny_model(overrides=overrides)
    objective = UnrolledThinking(model)
    x, targets = random_ids(4, 8), random_ids(4, 8, seed=1)
    loss, stats = objective(x, targets, torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    for key in ("ranking", "monotone"):
        assert (key in stats) == bool(overrides.get(f"think.{key}_weight"))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_without_the_terms_the_loss_is_the_papers():
    x, targets = random_ids(4, 8), random_ids(4, 8, seed=1)
    base, _ = UnrolledThinking(tiny_model())(x, targets, torch.arange(4))
    off, _ = UnrolledThinking(tiny_model(overrides={"think.ranking_weight": 0.0}))(x, targets, torch.arange(4))
    assert torch.equal(base, off)
