"""The verifier diagnostics (`ebt.verifier`): the figures on candidates built so that the answer
is known, agreement with best-of-M as `evaluate` scores it, argument checks, the paper suite's
entry and line, and `benchmarks/verifier_diagnostics.py`'s command line."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ebt.verifier
from conftest import random_ids, run_cli, tiny_model
from ebt.data.tokens import TokenSplit
from ebt.errors import ConfigError
from ebt.evaluate import evaluate
from ebt.options import ThinkingOptions
from ebt.plots import spearman
from ebt.think import Thought
from ebt.verifier import diagnose, rank_correlations

ROOT = Path(__file__).resolve().parents[1]
V, M, B = 11, 4, 2  # the tiny models' vocabulary; candidates per position; windows


# --- Built candidates: one-hot logits of known confidence, energies in a chosen order --------------


def built(confidence: torch.Tensor, energies: list[torch.Tensor], targets: torch.Tensor) -> Thought:
    """A trace of len(energies) steps whose every step's candidate m at (b, s) puts logit
    confidence[b, m, s] on the target and 0 elsewhere, energies (B, M, S) per step after it."""
    y = torch.zeros(*confidence.shape, V, dtype=torch.float64)  # (B, M, S, V)
    y.scatter_(-1, targets[:, None, :, None].expand(*confidence.shape, 1), confidence[..., None])
    start = torch.zeros_like(confidence)
    return Thought([y.clone() for _ in energies], [start, *energies], forward_passes=0)


def loss_of(confidence: torch.Tensor) -> torch.Tensor:
    """−log softmax at the target of those logits: −c + log(e^c + V − 1)."""
    return -confidence + torch.log(confidence.exp() + V - 1)


@pytest.fixture
def case(monkeypatch):
    """diagnose on 2 windows whose thinking is replaced by built candidates (steps=1, traced to 2):
    at step 1 energies run against the losses, at step 2 with them; position (0, 0) has all its
    candidates equal. Returns (summary, losses (P, M) as the test computes them, confidences (P, M))."""
    model = tiny_model()
    s = model.config.context_len
    tokens = random_ids(1, B * s + 1, seed=3)[0]  # two windows of s + 1 tokens, sharing one token
    confidence = torch.rand(B, M, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 6 + 0.5
    confidence[0, :, 0] = 2.0

    def fake_samples(model, energy, x, options, *, generator, score_final):
        assert options.samples == M and options.steps == 2 and score_final
        targets = tokens[1:].unfold(0, s, s)[: len(x)]  # (B, S): each window's next tokens
        return built(confidence, [confidence.clone(), -confidence], targets)

    monkeypatch.setattr(ebt.verifier, "think_samples", fake_samples)
    summary = diagnose(model, tokens, steps=1, samples=M, trace_steps=2, max_windows=B, batch_size=B).summary()
    rows = confidence.permute(0, 2, 1).reshape(-1, M)  # (P, M), windows in order
    return summary, loss_of(rows), rows


def test_energies_that_order_the_losses_pick_the_best(case) -> None:
    summary, losses, _ = case
    step = summary["trace"][1]  # energy −c: the most confident candidate (lowest loss) has the lowest energy
    assert step["step"] == 2 and step["pick_is_best"] == 1.0 and step["gap_closed"] == pytest.approx(1.0)
    assert step["picked_loss"] == pytest.approx(float(losses.min(1).values.mean()))
    assert step["oracle_loss"] == step["picked_loss"] and step["mean_loss"] == pytest.approx(float(losses.mean()))


def test_energies_against_the_losses_pick_the_worst(case) -> None:
    summary, losses, confidence = case
    p = len(losses)
    assert summary["positions"] == p == B * 8 and summary["steps"] == 1 and summary["trace_steps"] == 2
    assert summary["spearman"] == pytest.approx(-1.0) and summary["spearman_skipped"] == 1
    # Only the position of equal candidates picks a best one (ties count as best).
    assert summary["pick_is_best"] == pytest.approx(1 / p)
    mean, worst, best = float(losses.mean()), float(losses.max(1).values.mean()), float(losses.min(1).values.mean())
    assert summary["picked_loss"] == pytest.approx(worst)
    assert summary["gap_closed"] == pytest.approx((mean - worst) / (mean - best)) and summary["gap_closed"] < 0
    for key in ("picked_loss", "mean_loss", "oracle_loss", "pick_is_best", "gap_closed"):
        assert summary["trace"][0][key] == summary[key], key
    assert summary["trace"][0]["mean_energy"] == pytest.approx(float(confidence.mean()))
    assert summary["energy_spread"] == pytest.approx(float(confidence.std(dim=1).mean()))
    assert summary["argmax_agreement"] == 1.0  # every candidate's most likely token is its target


def test_soft_selection_runs_from_the_pick_to_the_plain_ensemble(case) -> None:
    summary, losses, _ = case
    probabilities = (-losses).exp()  # (P, M): each candidate's probability of the target
    ensemble = float(-probabilities.mean(1).log().mean())
    assert summary["ensemble_loss"] == pytest.approx(ensemble)
    assert summary["oracle_loss"] <= summary["ensemble_loss"] <= summary["mean_loss"]  # −log is convex
    soft = summary["soft_loss"]
    assert list(soft) == ["0.01", "0.1", "1", "10"]
    assert all(summary["oracle_loss"] <= v <= float(losses.max(1).values.mean()) + 1e-12 for v in soft.values())
    # soft_loss alone: energy −loss picks the worst as τ → 0; equal energies weigh all alike.
    for tau, expected in ((1e-9, float(losses.max(1).values.mean())), (1e9, ensemble), (math.inf, ensemble)):
        assert ebt.verifier.soft_loss(losses, -losses, tau) == pytest.approx(expected), tau
    assert ebt.verifier.soft_loss(losses, torch.zeros_like(losses), 1.0) == pytest.approx(ensemble)


def test_rank_correlations_match_scipys_definition() -> None:
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 4, size=(50, 6)).astype(float))  # many ties
    b = torch.from_numpy(rng.normal(size=(50, 6)))
    rho, skipped = rank_correlations(a, b)
    kept = [i for i in range(50) if len(set(a[i].tolist())) > 1]
    assert skipped == 50 - len(kept)
    assert rho.tolist() == pytest.approx([spearman(a[i].numpy(), b[i].numpy()) for i in kept])


# --- A real tiny model: the pick is best-of-M's ----------------------------------------------------


@pytest.mark.parametrize("langevin_std", [0.0, 0.5])
def test_every_step_picks_as_best_of_m_of_that_many_steps(langevin_std: float) -> None:
    """Step k of the trace is what `evaluate` scores for best-of-M at k steps (one batch: the same
    starts and Langevin draws), the step the pick is made at included, padding not scored."""
    model = tiny_model()
    tokens = random_ids(1, 60, seed=5)[0]
    split = TokenSplit([tokens], [np.array([[0, 20], [20, 27], [27, 60]])], layout="padded")
    common = dict(samples=3, langevin_std=langevin_std, batch_size=8, max_windows=8)
    summary = diagnose(model, split, steps=2, trace_steps=4, **common).summary()
    assert summary["steps"] == 2 and [t["step"] for t in summary["trace"]] == [1, 2, 3, 4]
    for k in (1, 2, 3, 4):
        scores = evaluate(model, split, steps=k, **common).summary()
        assert summary["trace"][k - 1]["picked_loss"] == pytest.approx(scores["loss"], rel=1e-9), k
        assert summary["positions"] == scores["tokens"] < 60
    assert summary["picked_loss"] == summary["trace"][1]["picked_loss"]
    assert math.isfinite(summary["spearman"]) and -1 <= summary["spearman"] <= 1


# --- Arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, field", [
    (dict(samples=1), "samples"), (dict(samples=True), "samples"), (dict(max_windows=0), "max_windows"),
    (dict(trace_steps=0), "trace_steps"), (dict(steps=3, trace_steps=2), "trace_steps"),
    (dict(tolerance=0.1), "tolerance"), (dict(steps=0), "steps"),
])
def test_bad_arguments_name_their_field(given: dict, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        diagnose(tiny_model(), random_ids(1, 40)[0], **given)
    assert error.value.field == field and field in str(error.value)


def test_options_samples_must_agree_with_samples() -> None:
    options = ebt.ThinkingOptions(samples=5)
    with pytest.raises(ConfigError, match="samples = 10") as error:
        diagnose(tiny_model(), random_ids(1, 40)[0], options, samples=10)
    assert error.value.field == "samples"
    assert diagnose(tiny_model(), random_ids(1, 40)[0], options, samples=5, max_windows=1).summary()["samples"] == 5


@pytest.mark.parametrize("model", [lambda: tiny_model("transformer"), lambda: torch.nn.Linear(2, 2)])
def test_a_model_without_an_energy_over_tokens_is_refused(model) -> None:
    with pytest.raises(ConfigError, match="need a text EBT") as error:
        diagnose(model(), random_ids(1, 40)[0])
    assert error.value.field == "model"


# --- The paper suite and the script --------------------------------------------------------------------


def test_the_paper_suite_reports_the_verifier(trained_runs, capsys) -> None:
    run = trained_runs["ebt"]["dir"]
    code, out, err = run_cli(["eval", run, "--suite", "paper", "--json", "--max-examples", "2", "--batch-size", "2",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    for name, entry in json.loads(out)["datasets"].items():
        v = entry["verifier"]
        assert v["samples"] == 10 and v["steps"] == 3 and [t["step"] for t in v["trace"]] == list(range(1, 7)), name
        assert v["positions"] == entry["tokens"] and 0 <= v["pick_is_best"] <= 1, name
        assert v["oracle_loss"] <= v["picked_loss"] and v["oracle_loss"] <= v["mean_loss"], name
    code, out, err = run_cli(["eval", run, "--suite", "paper", "--max-examples", "1", "--device", "cpu"], capsys)
    lines = [line for line in out.splitlines() if line.startswith("verifier on ")]
    assert code == 0 and len(lines) == 5, out
    assert "energy picks the best of 10 at" in lines[0] and "% of positions" in lines[0] and "ρ = " in lines[0]


@pytest.fixture
def script():
    """benchmarks/verifier_diagnostics.py, imported from its path."""
    path = ROOT / "benchmarks" / "verifier_diagnostics.py"
    spec = importlib.util.spec_from_file_location("verifier_diagnostics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_prints_a_line_per_run_and_set(script, trained_runs, capsys) -> None:
    run = str(trained_runs["ebt"]["dir"])
    assert script.main([run, "--windows", "1", "--samples", "2", "--sets", "validation,austen"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["set"], r["samples"]) for r in rows] == [(run, "validation", 2), (run, "austen", 2)]


@pytest.mark.parametrize("argv, fragment", [
    (["{tpp}"], "text transformer run"), (["{missing}"], "not a run directory"),
    (["{ebt}", "--sets", "validation,mars"], "mars not known"), (["{ebt}", "--samples", "1"], "(--samples)"),
])
def test_the_script_refuses_bad_input_in_one_line(script, trained_runs, tmp_path, capsys, argv, fragment) -> None:
    paths = {"tpp": trained_runs["transformer"]["dir"], "missing": tmp_path / "nope", "ebt": trained_runs["ebt"]["dir"]}
    with pytest.raises(SystemExit) as exit:
        script.main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and fragment in err.strip().splitlines()[-1], err


def test_the_script_has_help(script, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        script.main(["--help"])
    assert exit.value.code == 0 and "--windows" in capsys.readouterr().out


def test_diagnose_refuses_what_it_does_not_measure_and_identical_candidates():
    from conftest import tiny_model as make
    from ebt.verifier import diagnose
    tokens = torch.randint(0, 11, (200,), generator=torch.Generator().manual_seed(0))
    for given, field in (({"selection_temperature": 0.5, "samples": 4}, "selection_temperature"),
                         ({"score_decoded": True, "samples": 4}, "score_decoded")):
        with pytest.raises(ConfigError, match="is not measured here") as e:
            diagnose(make(), tokens, ThinkingOptions(**given), samples=4)
        assert e.value.field == field
    with pytest.raises(ConfigError, match="identical candidates") as e:
        diagnose(make(overrides={"think.start_std": 0.0}), tokens, samples=3)
    assert e.value.field == "langevin_std"
