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
    assert "EBT, 3 steps, best of 10" in out and "(trained with 2–3 steps)" in out
    assert ("Thinking helped" in out) != ("Thinking did not help much" in out)
    assert "Transformer++'s (" in out
    assert (tmp_path / "demo-ebt" / "model.safetensors").exists()


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--windows", "-1"]])
def test_bad_demo_arguments_are_clear_errors(flags, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        demo.main(flags)
    assert exit.value.code == 2 and "must be ≥ 1" in capsys.readouterr().err
