"""What a data-scaling sweep reads from a run: the learning-rate schedules (cosine, constant,
warm-up–stable–decay), log-spaced validations, the weights kept at each of them, and the loss of
every validation window. Each schedule is checked as a function and in the rates a run logs.

Tiny transformer runs on the CPU (one layer, width 16–32, context 16), a few steps each.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ebt.train
from ebt.checkpoint import load_config, snapshot_steps
from ebt.config import TrainConfig
from ebt.errors import CheckpointError
from ebt.evaluate import evaluate
from ebt.runs import load_run
from ebt.schedule import MIN_LR_RATIO, lr_factor, validation_steps

from conftest import random_ids, run_cli, tiny_config, tiny_model

LR = 2e-3
# One layer and batches of 4: a step takes milliseconds.
QUICK = {"model.n_layers": 1, "train.batch_size": 4, "train.lr": LR, "train.log_every": 1}
CLI = ["--quiet", "--model.dim=16", "--model.n_heads=2", "--model.n_layers=1", "--model.context_len=16",
       "--train.batch_size=4", "--train.eval_examples=4", "--train.log_every=1", "--train.device=cpu",
       f"--train.lr={LR}"]


def cli_train(corpus: Path, out: Path, *args: str) -> list[str]:
    """`ebt train` on the tiny settings, `args` replacing those of the same key (a key is given once)."""
    given = {a.split("=")[0] for a in args}
    return ["train", "--preset", "text-transformer-tiny", "--data", str(corpus),
            *[a for a in CLI if a.split("=")[0] not in given], *args, "--out", str(out)]


def rows(out: Path, split: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["split"] == split]


def train_lrs(out: Path) -> dict[int, float]:
    return {row["step"]: row["lr"] for row in rows(out, "train")}


def quick_run(corpus: Path, out: Path, overrides: dict) -> dict:
    return ebt.train.train(tiny_config("transformer", corpus, {**QUICK, **overrides}), out, quiet=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- The schedules as functions --------------------------------------------------------------------


def test_constant_warms_up_then_holds_the_peak_past_the_end() -> None:
    factors = [lr_factor(s, 100, 0.1, "constant") for s in range(150)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10:] == [1.0] * 140  # the end of the run (step 99) and a resumed extension alike


def test_wsd_holds_the_peak_then_falls_linearly_to_a_tenth_at_the_last_step() -> None:
    total, decay = 100, 20  # decay_fraction 0.2: the last 20 updates (0-based steps 80–99)
    factors = [lr_factor(s, total, 0.1, "wsd", 0.2) for s in range(130)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10:80] == [1.0] * 70
    falls = [a - b for a, b in zip(factors[79:99], factors[80:100])]
    assert falls == pytest.approx([(1 - MIN_LR_RATIO) / decay] * decay)
    assert factors[99] == pytest.approx(MIN_LR_RATIO) and MIN_LR_RATIO == 0.1
    assert factors[100:] == pytest.approx([MIN_LR_RATIO] * 30)
    # decay_fraction sets where the decay starts; no warm-up starts at the peak.
    assert [lr_factor(s, 10, 0.0, "wsd", 0.5) for s in range(10)] == pytest.approx(
        [1, 1, 1, 1, 1, 0.82, 0.64, 0.46, 0.28, 0.1])


def test_cosine_is_still_the_default_and_keeps_its_endpoints() -> None:
    total, fraction = 100, 0.1
    for s in range(0, 130, 7):
        assert lr_factor(s, total, fraction) == lr_factor(s, total, fraction, "cosine")
    assert lr_factor(9, total, fraction) == pytest.approx(1.0)  # end of warm-up
    assert lr_factor(10, total, fraction) == pytest.approx(1.0)  # the cosine starts at the peak
    assert lr_factor(55, total, fraction) == pytest.approx(0.55, abs=0.01)  # halfway down: not a step
    assert lr_factor(99, total, fraction) == pytest.approx(MIN_LR_RATIO)
    assert lr_factor(120, total, fraction) == pytest.approx(MIN_LR_RATIO)


# --- The trainer uses the schedule ----------------------------------------------------------------

# 8 steps, warm-up 2; wsd decays over the last 4.
LOGGED_FACTORS = {
    "constant": [0.5, 1, 1, 1, 1, 1, 1, 1],
    "wsd": [0.5, 1, 1, 1, 0.775, 0.55, 0.325, 0.1],
}


@pytest.mark.parametrize("schedule", LOGGED_FACTORS)
def test_training_logs_the_rate_of_the_schedule(schedule: str, corpus_file: Path, tmp_path: Path) -> None:
    quick_run(corpus_file, tmp_path, {"train.steps": 8, "train.warmup_fraction": 0.25, "train.lr_schedule": schedule,
                                      "train.decay_fraction": 0.5})
    lrs = train_lrs(tmp_path)
    assert sorted(lrs) == list(range(1, 9))
    assert [lrs[s] for s in range(1, 9)] == pytest.approx([LR * f for f in LOGGED_FACTORS[schedule]])


# --- Log-spaced validation ------------------------------------------------------------------------


def test_validation_steps_log_linear_and_only_at_the_end() -> None:
    log = TrainConfig(steps=1920, eval_every=120, eval_spacing="log")
    assert sorted(validation_steps(log)) == [120, 170, 240, 339, 480, 679, 960, 1358, 1920]
    assert sorted(validation_steps(TrainConfig(steps=2000, eval_every=120, eval_spacing="log"))) == [
        120, 170, 240, 339, 480, 679, 960, 1358, 1920, 2000]  # the last step always
    assert sorted(validation_steps(TrainConfig(steps=1920, eval_every=120))) == list(range(120, 1921, 120))
    assert sorted(validation_steps(TrainConfig(steps=1000, eval_every=300))) == [300, 600, 900, 1000]
    assert validation_steps(TrainConfig(steps=1000, eval_every=0)) == {1000}
    assert validation_steps(TrainConfig(steps=50, eval_every=120, eval_spacing="log")) == {50}


def test_a_log_spaced_run_validates_at_those_steps_and_logs_each_windows_loss(corpus_file: Path,
                                                                           tmp_path: Path) -> None:
    overrides = {"train.steps": 12, "train.eval_every": 2, "train.eval_spacing": "log", "train.eval_examples": 4}
    result = quick_run(corpus_file, tmp_path, overrides)
    validations = rows(tmp_path, "validation")
    # round(2 · √2^i): 2, 3 (2.83), 4, 6 (5.66), 8, 11 (11.3); then the last step.
    assert [r["step"] for r in validations] == [2, 3, 4, 6, 8, 11, 12]
    for row in validations:
        # Every window holds context_len targets, so the loss is the mean of the windows' losses.
        assert len(row["window_losses"]) == 4
        assert statistics.fmean(row["window_losses"]) == pytest.approx(row["loss"], abs=1e-5)
        assert 0 < row["train_s"] <= row["wall_s"]
    assert [r["train_s"] for r in validations] == sorted(r["train_s"] for r in validations)
    assert len({tuple(r["window_losses"]) for r in validations}) == len(validations)  # scored afresh each time

    # What train() returns (and `ebt train` prints) is the last validation without the list.
    last = {k: v for k, v in validations[-1].items() if k not in ("step", "split", "window_losses", "train_s",
                                                                   "wall_s")}
    assert result == pytest.approx(last)
    assert not any(isinstance(v, list) for v in result.values())
    # Resuming a finished run validates once more; that value has no list either.
    again = ebt.train.train(load_config(tmp_path), tmp_path, resume=True, quiet=True)
    assert again["loss"] == pytest.approx(result["loss"])
    assert not any(isinstance(v, list) for v in again.values())


def test_window_losses_has_one_entry_per_window_in_stream_order() -> None:
    model = tiny_model("transformer")  # context 8: windows of 9 tokens, 8 apart
    tokens = random_ids(1, 100)[0]
    windows = evaluate(model, tokens, batch_size=5)
    scored, losses = windows.summary(), windows.loss.tolist()
    assert len(losses) == (100 - 9) // 8 + 1 == scored["tokens"] / 8  # 12 windows; the last batch of 2
    assert statistics.fmean(losses) == pytest.approx(scored["loss"], abs=1e-9)
    for i in (0, 5, 11):
        alone = evaluate(model, tokens[8 * i: 8 * i + 9]).summary()
        assert losses[i] == pytest.approx(alone["loss"], abs=1e-9)
    assert not any(isinstance(v, list) for v in scored.values())  # the summary holds figures only
    assert len(evaluate(model, tokens, max_windows=3).loss) == 3


def test_an_ebts_window_losses_average_to_its_loss() -> None:
    windows = evaluate(tiny_model("ebt"), random_ids(1, 60)[0], batch_size=4)
    assert len(windows.loss) == (60 - 9) // 8 + 1
    assert statistics.fmean(windows.loss.tolist()) == pytest.approx(windows.summary()["loss"], abs=1e-9)


# --- Kept checkpoints -----------------------------------------------------------------------------

KEEP = {"train.steps": 6, "train.eval_every": 2, "train.lr_schedule": "constant", "train.warmup_fraction": 0.0}


def test_kept_checkpoints_load_the_weights_of_their_step(corpus_file: Path, tmp_path: Path) -> None:
    out, short = tmp_path / "kept", tmp_path / "short"
    quick_run(corpus_file, out, {**KEEP, "train.keep_checkpoints": True})
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s}.safetensors" for s in (2, 4, 6)]
    assert snapshot_steps(out) == [2, 4, 6]

    final = load_file(str(out / "model.safetensors"))
    last = load_run(out, step=6)
    assert last.step == 6
    assert_same_tensors(last.model.state_dict(), final)
    # Step 2's weights are those of the same run stopped after 2 steps (a constant rate and no
    # warm-up make its first two updates the same).
    quick_run(corpus_file, short, {**KEEP, "train.steps": 2, "train.eval_every": 0})
    early = load_run(out, step=2)
    assert early.step == 2
    assert_same_tensors(early.model.state_dict(), load_file(str(short / "model.safetensors")))
    assert any(not torch.equal(early.model.state_dict()[k], final[k]) for k in final)
    assert load_run(out).step == 6  # no step: the last weights, as before

    with pytest.raises(CheckpointError, match="step 999.*keeps steps 2, 4, 6"):
        load_run(out, step=999)


def test_without_keep_checkpoints_there_is_no_checkpoints_folder(corpus_file: Path, tmp_path: Path) -> None:
    quick_run(corpus_file, tmp_path, KEEP)
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(CheckpointError, match="keeps none.*keep_checkpoints"):
        load_run(tmp_path, step=2)


def test_overwrite_does_not_mix_the_old_runs_checkpoints_into_the_new(corpus_file: Path, tmp_path: Path,
                                                                       capsys) -> None:
    out = tmp_path / "run"
    keep = ["--train.steps=4", "--train.keep_checkpoints=true"]
    assert run_cli(cli_train(corpus_file, out, *keep, "--train.eval_every=1"), capsys)[0] == 0
    assert snapshot_steps(out) == [1, 2, 3, 4]

    assert run_cli(cli_train(corpus_file, out, *keep, "--train.eval_every=3", "--overwrite"), capsys)[0] == 0
    assert snapshot_steps(out) == [3, 4] and not (out / ".replaced").exists()
    kept = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}

    # A replacement that diverges before its first checkpoint puts these back untouched.
    code, _, err = run_cli(cli_train(corpus_file, out, "--train.steps=3", "--train.eval_every=0",
                                     "--train.lr=1e30", "--train.warmup_fraction=0", "--overwrite"), capsys)
    assert code == 2 and "put back" in err
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == kept

    # A replacement that keeps none leaves no folder behind.
    assert run_cli(cli_train(corpus_file, out, "--train.steps=2", "--overwrite"), capsys)[0] == 0
    assert not (out / "checkpoints").exists() and not (out / ".replaced").exists()
    assert load_run(out).step == 2


# --- Config errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["--train.lr_schedule=linear"], ["train.lr_schedule = 'linear'", "'cosine'", "'constant'", "'wsd'"]),
    (["--train.decay_fraction=0"], ["train.decay_fraction = 0", "(0, 1)"]),
    (["--train.decay_fraction=1"], ["train.decay_fraction = 1", "(0, 1)"]),
    (["--train.eval_spacing=exponential"], ["train.eval_spacing = 'exponential'", "one of 'linear', 'log'"]),
    (["--train.eval_spacing=log", "--train.eval_every=0"], ["train.eval_every = 0", "eval_spacing = 'log'"]),
    (["--train.lr_schedule=wsd", "--train.warmup_fraction=0.5", "--train.decay_fraction=0.6"],
     ["train.decay_fraction = 0.6", "warmup_fraction", "'wsd'"]),
])
def test_bad_schedule_settings_are_one_error_naming_the_field(args: list[str], expected: list[str],
                                                              corpus_file: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(cli_train(corpus_file, tmp_path / "run", "--train.steps=2", *args), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "run").exists()


# --- Extending a run on --resume --------------------------------------------------------------------


@pytest.mark.parametrize("schedule, held", [("constant", 1.0), ("wsd", MIN_LR_RATIO)])
def test_extending_a_finished_run_holds_its_final_rate(schedule: str, held: float, corpus_file: Path,
                                                       tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["--train.steps=4", "--train.eval_every=0", "--train.warmup_fraction=0", f"--train.lr_schedule={schedule}",
            "--train.decay_fraction=0.5"]
    assert run_cli(cli_train(corpus_file, out, *args), capsys)[0] == 0
    before = train_lrs(out)
    code, printed, _ = run_cli(["train", "--resume", "--out", out, "--train.steps=6"], capsys)
    assert code == 0
    lrs = train_lrs(out)
    assert sorted(lrs) == list(range(1, 7))
    assert all(lrs[s] == before[s] for s in range(1, 5))  # the log of the first 4 steps is kept as it was
    assert lrs[4] == pytest.approx(LR * held)  # where each schedule ends
    assert lrs[5] == pytest.approx(LR * held) and lrs[6] == pytest.approx(LR * held)
    assert ("held at train.lr/10" in printed) == (schedule != "constant")
    assert "window_losses" not in printed and "[" not in printed.splitlines()[-1]


def test_fields_that_depend_on_each_other_may_be_given_in_any_order(corpus_file: Path, tmp_path: Path,
                                                                     capsys) -> None:
    # The image preset validates only at the end (eval_every 0); log spacing needs eval_every ≥ 1.
    from ebt.presets import preset

    pairs = [("train.eval_spacing", "log"), ("train.eval_every", "50")]
    assert preset("image-ebt-tiny").with_overrides(pairs).train.eval_every == 50
    wsd = [("train.lr_schedule", "wsd"), ("train.warmup_fraction", "0.9"), ("train.decay_fraction", "0.1")]
    assert preset("text-ebt-tiny").with_overrides(wsd).train.decay_fraction == 0.1
    code, _, err = run_cli(["train", "--preset", "text-transformer-tiny", "--data", corpus_file,
                            "--train.lr_schedule=wsd", "--train.warmup_fraction=0.9", "--train.decay_fraction=0.3",
                            "--out", tmp_path / "run"], capsys)
    assert code == 2 and "train.decay_fraction = 0.3" in err
