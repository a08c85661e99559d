"""`make demo` (ebt.demo) end to end at a few steps: what it prints and writes."""

from __future__ import annotations

import json

import pytest

from ebt import demo


def test_the_demo_trains_both_models_and_reports_the_thinking_budgets(tmp_path, capsys) -> None:
    demo.main(["--steps", "2", "--windows", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["recipe"] == "text-ebt-s2-tiny" and summary["steps"] == 2
    for name in ("validation", "austen"):
        budgets = summary["thinking"][name]["budgets"]
        assert [(b["steps"], b["samples"]) for b in budgets] == [(2, 1), (3, 1), (3, 2), (3, 5), (3, 10)]
        assert summary["thinking"][name]["transformer_ppl"] > 1
    assert len(summary["energy_per_step"]) == 7 and len(summary["loss_per_step"]) == 6
    assert "EBT, 3 steps, best of 10" in out and "(the most steps it trained with)" in out
    assert "Thinking longer (3 steps against 2): perplexity" in out and "Best budget (" in out
    assert "Only 1 window(s) per set: too few to tell" in out and "Transformer++'s (" in out
    assert (tmp_path / "demo-ebt" / "model.safetensors").exists()


@pytest.mark.parametrize("flags, message", [(["--steps", "0"], "must be ≥ 1"), (["--windows", "-1"], "must be ≥ 1"),
                                           (["--out", "FILE"], "is a file; give a directory")])
def test_bad_demo_arguments_are_clear_errors(flags, message, tmp_path, capsys) -> None:
    (tmp_path / "FILE").write_text("")
    with pytest.raises(SystemExit) as exit:
        demo.main([str(tmp_path / f) if f == "FILE" else f for f in flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_verdict_names_the_budget_and_says_when_thinking_helped() -> None:
    def entry(ppls, theirs):
        budgets = [{"steps": s, "samples": m, "ppl": p, "forward_passes": s * m + (m > 1) * m}
                   for (s, m), p in zip([(2, 1), (3, 1), (3, 2), (3, 5), (3, 10)], ppls)]
        gain = lambda p: 100 * (ppls[0] - p) / ppls[0]  # noqa: E731
        return {"budgets": budgets, "transformer_ppl": theirs, "gain_think_longer_pct": gain(ppls[1]),
                "gain_best_pct": gain(min(ppls))}

    helped = demo.verdict({"validation": entry([10, 9.5, 9.4, 9.3, 9.0], 8.0),
                           "austen": entry([12, 11.8, 11.6, 11.5, 11.4], 9.0)})
    assert "Thinking longer (3 steps against 2): perplexity -5.0% on validation, -1.7% on austen." in helped
    assert "Best budget (3 steps × best of 10 on validation, 40 passes per token): -10.0% on validation" in helped
    assert "So thinking helped" in helped and "12% above the Transformer++'s (9.000 against 8.000)" in helped
    flat = demo.verdict({"validation": entry([10, 10.2, 10.1, 10.3, 10.4], 11.0),
                         "austen": entry([12, 12.1, 12.2, 12.3, 12.4], 13.0)})
    assert "did not help much" in flat and "9% below the Transformer++'s (10.000 against 11.000)" in flat
