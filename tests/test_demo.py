"""`make demo` (ebt.demo) end to end at a few steps: what it prints and writes."""

from __future__ import annotations

import json

import pytest
import torch

from ebt import demo, demo_images


def test_the_demo_trains_both_models_and_reports_the_thinking_budgets(tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    demo.main(["--steps", "2", "--windows", "1", "--image-steps", "2", "--images", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["recipe"] == "text-ebt-s2-tiny" and summary["steps"] == 2
    for name in ("validation", "austen"):
        budgets = summary["thinking"][name]["budgets"]
        assert [(b["steps"], b["samples"]) for b in budgets] == [(2, 1), (3, 1), (3, 2), (3, 5), (3, 10)]
        assert summary["thinking"][name]["transformer_ppl"] > 1 and summary["thinking"][name]["transformer_bpb"] > 0
        assert all(b["bpb"] > 0 for b in budgets)
    assert len(summary["energy_per_step"]) == 7 and len(summary["loss_per_step"]) == 6
    for name in ("validation", "austen"):  # the verifier's figures beside the perplexities
        figures = summary["verifier"][name]
        assert 0 <= figures["pick_is_best"] <= 1 and figures["oracle_loss"] <= figures["mean_loss"]
    assert "the energy as a verifier: best of 10 at 3 steps" in out
    assert "As a verifier the energy picked the best of 10 candidates at " in out
    assert "EBT, 3 steps, best of 10" in out and "bits/byte" in out and "(the most steps it trained with)" in out
    assert "Thinking longer (3 steps against 2): perplexity" in out and "Best budget (" in out
    assert "Only 1 window(s) per set: too few to tell" in out and "Transformer++'s (" in out
    assert (tmp_path / "demo-ebt" / "model.safetensors").exists()
    # the image act: both image models trained, scored at two noise levels, the grid written
    images = summary["images"]
    assert images["steps"] == 2 and images["images"] == 3 and images["grid"] == "demo-images.png"
    assert [lv["noise"] for lv in images["levels"]] == [0.1, 0.2] and images["levels"][0]["trained"]
    for level in images["levels"]:
        assert [(b["label"], b["forward_passes"]) for b in level["budgets"]] == [
            ("EBT, 1 step (as trained)", 1), ("EBT, 3 steps", 3), ("DiT, DDIM 10 passes", 10),
            ("DiT, DDIM 100 passes", 100)]
        assert all(0 < b["psnr"] < 100 for b in level["budgets"]) and 0 < level["noisy_psnr"] < 100
    assert "λ = 0.1 (trained)" in out and "DiT, DDIM 100 passes" in out and "noisy input" in out
    assert out.rstrip().splitlines()[-4].startswith("Images at λ = 0.1 (both trained there): the EBT denoises ")
    assert out.rstrip().splitlines()[-3].startswith("Images at λ = 0.2 (noisier than either trained on)")
    assert out.rstrip().splitlines()[-2].startswith("Only 3 image(s) scored: too few to tell")
    png = (tmp_path / "demo-images.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    for kind in ("ebt", "dit"):
        assert json.loads((tmp_path / f"demo-image-{kind}" / "config.json").read_text())["model"]["kind"] == kind
    assert torch.get_num_threads() == threads  # the image act runs on one thread and gives the others back


def test_image_steps_0_skips_the_image_act(tmp_path, monkeypatch, capsys) -> None:
    acts = []
    monkeypatch.setattr(demo, "image_act", lambda *a: acts.append(a))
    demo.main(["--steps", "1", "--windows", "1", "--image-steps", "0", "--out", str(tmp_path)])
    assert acts == [] and json.loads((tmp_path / "demo.json").read_text())["images"] is None
    assert "Images at" not in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [(["--steps", "0"], "must be ≥ 1"), (["--windows", "-1"], "must be ≥ 1"),
                                           (["--out", "FILE"], "is a file; give a directory"),
                                           (["--image-steps", "-1"], "--image-steps must be ≥ 0 (0 skips the"),
                                           (["--images", "0"], "--images must be in 1 … 10000")])
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
    weak = {"validation": {"pick_is_best": 0.38, "gap_closed": 0.13}, "austen": {"pick_is_best": 0.35,
                                                                               "gap_closed": float("nan")}}
    said = demo.verdict({"validation": entry([10, 9.5, 9.4, 9.3, 9.0], 8.0)}, verifier=weak)
    assert ("As a verifier the energy picked the best of 10 candidates at 38% on validation, 35% on austen of "
            "positions (chance: 10%), closing at least 13% of the gap to an oracle's pick: a weak verifier still.") in said
    strong = {"validation": {"pick_is_best": 0.6, "gap_closed": 0.45}}
    assert "closing at least 45% of the gap to an oracle's pick." in demo.verdict(
        {"validation": entry([10, 9.5, 9.4, 9.3, 9.0], 8.0)}, verifier=strong)


def _images(ebt: tuple[float, float], dit: tuple[float, float], higher: tuple[float, float]) -> dict:
    """Synthetic image figures: PSNRs of the EBT at 1 and 3 steps and of the DiT at 10 and 100
    passes, at the training level (ebt, dit) and at the higher one (higher: EBT 3 steps, DiT 10)."""
    def level(noise, trained, psnrs):
        labels = [("ebt", 1), ("ebt", 3), ("dit", 10), ("dit", 100)]
        return {"noise": noise, "trained": trained, "noisy_psnr": 10.0,
                "budgets": [{"model": m, "label": f"{m} {p}", "psnr": v, "forward_passes": float(p)}
                            for (m, p), v in zip(labels, psnrs)]}
    return {"levels": [level(0.1, True, [*ebt, *dit]), level(0.2, False, [15.0, higher[0], higher[1], 16.6])]}


def test_the_image_verdict_says_whether_the_ebt_denoised_better_and_at_what_passes() -> None:
    better = demo_images.verdict(_images((22.78, 20.1), (21.89, 21.84), (18.68, 16.7))).splitlines()
    assert better[0] == ("Images at λ = 0.1 (both trained there): the EBT denoises better than the DiT, 22.8 dB with "
                         "1 pass against 21.8 dB with 100 passes (1% of them); the DiT's best budget, 21.9 dB with "
                         "10 passes, is 0.9 dB below.")
    assert better[1] == ("Images at λ = 0.2 (noisier than either trained on): the EBT denoises better than the DiT, "
                         "18.7 dB with 3 passes against 16.6 dB with 100 passes (3% of them); the DiT's best budget, "
                         "16.7 dB with 10 passes, is 2.0 dB below.")
    worse = demo_images.verdict(_images((20.5, 19.0), (21.2, 21.9), (15.5, 16.0))).splitlines()
    assert worse[0] == ("Images at λ = 0.1 (both trained there): the EBT denoises worse than the DiT, 20.5 dB with "
                        "1 pass against 21.9 dB with 100 passes (1% of them).")
    assert worse[1] == ("Images at λ = 0.2 (noisier than either trained on): the EBT denoises worse than the DiT, "
                        "15.5 dB with 3 passes against 16.6 dB with 100 passes (3% of them).")
    mixed = demo_images.verdict(_images((22.0, 20.0), (22.3, 21.8), (18.0, 16.0))).splitlines()[0]
    assert "the EBT denoises better than the DiT, 22.0 dB with 1 pass against 21.8 dB with 100 passes" in mixed
    assert mixed.endswith("the DiT's best budget, 22.3 dB with 10 passes, is 0.3 dB above.")
