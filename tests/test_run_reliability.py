"""Run reliability: a run directory belongs to one run; resume is exact for every recipe and
honest about overrides; an interrupt (SIGINT/SIGTERM) loses nothing; non-finite numbers stop
training without touching the last good checkpoint, and logs are standard JSON.

Everything goes through `ebt train` (`ebt.cli.main` in-process; a subprocess only to send
signals) at tiny sizes on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ebt.rundir
import ebt.train
from ebt.runs import load_run
from ebt.cli import main
from ebt.files import standard_json
from ebt.schedule import MIN_LR_RATIO, lr_factor
from ebt.train_state import TRAIN_STATE_KEYS

TINY = ["--quiet", "--model.dim=16", "--model.n_heads=2", "--model.n_layers=1", "--train.batch_size=4",
        "--train.eval_examples=4", "--train.log_every=1", "--train.device=cpu"]
IMAGE_SIZE = 12


def text_args(corpus: Path, preset: str = "text-transformer-tiny") -> list[str]:
    return ["--preset", preset, "--data", str(corpus), "--model.context_len=16", *TINY]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    pixels = torch.randint(0, 256, (10, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels):
        Image.fromarray(image.numpy()).save(folder / f"{i:02d}.png")
    return folder


def recipe_args(recipe: str, corpus: Path, images: Path) -> list[str]:
    if recipe.startswith("text-"):
        return text_args(corpus, recipe)
    if recipe.startswith("image-"):
        return ["--preset", recipe, "--data", str(images), f"--image.image_size={IMAGE_SIZE}", *TINY]
    return ["--preset", recipe, "--video.clips=20", "--video.encoder_dim=8", "--model.context_len=4", *TINY]


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def rows(out: Path) -> list[dict]:
    """metrics.jsonl, parsed strictly: NaN / Infinity are not JSON."""
    def reject(constant: str):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=reject) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_lrs(out: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in rows(out) if r["split"] == "train"}


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def train_interrupted(args: list[str], step: int) -> int:
    """`ebt train ARGS` with SIGINT sent to this process once training step `step` is logged, as a
    Ctrl-C in the middle of the run would be."""
    write = ebt.rundir.MetricsLog.write

    def write_then_signal(self, row: dict) -> None:
        write(self, row)
        if row["split"] == "train" and row["step"] == step:
            signal.raise_signal(signal.SIGINT)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.rundir.MetricsLog, "write", write_then_signal)
        return main(args)


# --- A run directory belongs to one run -----------------------------------------------------------


@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"])
def test_a_new_run_refuses_a_directory_holding_a_run(marker: str, corpus_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / marker).write_text("an earlier run's file")
    (out / "notes.txt").write_text("mine")
    before = files(out)
    assert main(["train", *text_args(corpus_file), "--train.steps=2", "--out", str(out)]) == 2
    err = error_line(capsys)
    assert str(out) in err and marker in err and "--resume" in err and "--overwrite" in err
    assert files(out) == before  # nothing touched, nothing added


def test_overwrite_replaces_the_old_run_and_unrelated_files_are_fine(corpus_file: Path, tmp_path: Path,
                                                                      capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()  # empty: fine
    (out / "notes.txt").write_text("mine")  # unrelated: fine
    assert main(["train", *text_args(corpus_file), "--train.steps=2", "--out", str(out)]) == 0
    (out / "encoder.safetensors").write_text("left by an older video run")

    before = files(out)
    assert main(["train", *text_args(corpus_file), "--train.steps=2", "--out", str(out), "--resume",
                 "--overwrite"]) == 2
    assert "--resume" in error_line(capsys) and files(out) == before

    assert main(["train", *text_args(corpus_file), "--train.steps=3", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "encoder.safetensors").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert [r["step"] for r in rows(out) if r["split"] == "train"] == [1, 2, 3]  # the old run's rows are gone
    assert load_run(out).step == 3
    assert not (out / ".replaced").exists()

    # A replacement that stops before its first checkpoint puts the old run back, byte for byte.
    before = files(out)
    assert main(["train", *text_args(corpus_file), "--train.steps=5", "--train.eval_every=0", "--train.lr=1e30",
                 "--train.warmup_fraction=0", "--out", str(out), "--overwrite"]) == 2
    assert "put back" in error_line(capsys)
    assert files(out) == before and not (out / ".replaced").exists()


def test_a_new_run_needs_a_preset(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "--preset" in error_line(capsys)


# --- Resume is exact for every recipe -------------------------------------------------------------

RECIPES = ["text-ebt-tiny", "text-ebt-s2-tiny", "text-transformer-tiny", "image-ebt-tiny", "image-dit-tiny",
           "video-ebt-tiny"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_interrupted_and_resumed_equals_uninterrupted(recipe: str, corpus_file: Path, image_folder: Path,
                                                      tmp_path: Path, capsys) -> None:
    """2 steps, Ctrl-C, resume for 2 more (a validation and checkpoint at step 3 on the way) gives
    the weights of 4 uninterrupted steps bit for bit, System 2's replay buffer and random step
    counts included."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    args = ["train", *recipe_args(recipe, corpus_file, image_folder), "--train.steps=4", "--train.eval_every=3"]
    assert main([*args, "--out", str(whole)]) == 0
    assert train_interrupted([*args, "--out", str(halves)], step=2) == 130
    assert "interrupted at step 2" in error_line(capsys)
    state = torch.load(halves / "train_state.pt", weights_only=True)  # plain data: no pickled code
    assert state["step"] == 2 and set(state) == set(TRAIN_STATE_KEYS)
    if recipe == "text-ebt-s2-tiny":
        assert state["replay"]["count"] > 0
    assert main(["train", "--resume", "--out", str(halves), "--quiet"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(halves / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), recipe
    losses = [{r["step"]: r["loss"] for r in rows(out) if r["split"] == "train"} for out in (whole, halves)]
    assert losses[0] == losses[1] and sorted(losses[1]) == [1, 2, 3, 4]


def test_a_training_state_of_an_earlier_version_resumes_exactly(corpus_file: Path, tmp_path: Path, capsys) -> None:
    """train_state.pt as written before the schedule's length and the loss scaler were saved (and
    by a scheduler whose lr function saved nothing) resumes as it did: the schedule then runs over
    the saved config's train.steps."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    args = ["train", *text_args(corpus_file), "--train.steps=4", "--train.eval_every=0"]
    assert main([*args, "--out", str(whole)]) == 0
    assert train_interrupted([*args, "--out", str(halves)], step=2) == 130
    state = torch.load(halves / "train_state.pt", weights_only=True)
    old = {k: state[k] for k in ("step", "optimizer", "scheduler", "batches", "torch_rng")}
    old["scheduler"]["lr_lambdas"] = [None] * len(old["scheduler"]["lr_lambdas"])
    torch.save(old, halves / "train_state.pt")
    assert main(["train", "--resume", "--out", str(halves), "--quiet"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(halves / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_lrs(whole) == train_lrs(halves)


# --- Resume is honest about overrides ---------------------------------------------------------------


def test_resume_overrides_apply_and_extending_keeps_the_rate_continuous(corpus_file: Path, tmp_path: Path,
                                                                         capsys) -> None:
    out, lr = tmp_path / "run", 2e-3
    args = ["train", *text_args(corpus_file), f"--train.lr={lr}", "--train.steps=4", "--train.eval_every=0"]
    assert train_interrupted([*args, "--out", str(out)], step=2) == 130
    # A new peak applies from the next step, on the run's schedule; so does a new weight decay.
    assert main(["train", "--resume", "--out", str(out), "--quiet", f"--train.lr={lr / 2}",
                 "--train.weight_decay=0.5"]) == 0
    lrs = train_lrs(out)
    assert lrs[2] == pytest.approx(lr * lr_factor(1, 4, 0.1))
    assert lrs[3] == pytest.approx(lr / 2 * lr_factor(2, 4, 0.1))
    assert lrs[4] == pytest.approx(lr / 2 * MIN_LR_RATIO)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["lr"], saved["weight_decay"]) == (lr / 2, 0.5)  # config.json is the config that ran

    # Extending the finished run holds the final rate: no jump at the resume step.
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--train.steps=6"]) == 0
    printed = capsys.readouterr().out
    assert "held at train.lr/10 for steps 5–6" in printed and '"steps": 6' in printed
    lrs = train_lrs(out)
    assert lrs[5] == lrs[6] == pytest.approx(lrs[4])
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 6
    assert sorted(lrs) == list(range(1, 7))


@pytest.fixture(scope="module")
def finished_run(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *text_args(corpus_file), "--train.steps=3", "--train.eval_every=0", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("override, expected", [
    ("--model.dim=32", "model.dim (saved 16, now 32)"),
    ("--think.steps=3", "think.steps (saved 2, now 3)"),
    ("--train.seed=7", "train.seed (saved 0, now 7)"),
    ("--train.batch_size=8", "train.batch_size (saved 4, now 8)"),
    ("--text.tokenizer=bpe", "text.tokenizer (saved 'byte', now 'bpe')"),
    ("--train.steps=2", "train.steps = 2 is below the step the run in"),
])
def test_resume_refuses_what_cannot_change(override: str, expected: str, finished_run: Path, tmp_path: Path,
                                           capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = files(out)
    assert main(["train", "--resume", "--out", str(out), "--quiet", override]) == 2
    assert expected in error_line(capsys)
    assert files(out) == before


def test_resume_checks_the_preset_kind(finished_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = files(out)
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--preset", "text-ebt-tiny"]) == 2
    err = error_line(capsys)
    assert "text-ebt-tiny" in err and "transformer" in err and "ebt" in err
    assert files(out) == before
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--preset", "text-transformer-tiny"]) == 0


def test_resume_drops_log_rows_the_checkpoint_does_not_have(finished_run: Path, tmp_path: Path) -> None:
    """Rows of steps lost after the last checkpoint, and a line a crash cut short, would make the
    log read as two runs (and not parse)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "train", "loss": 5.0, "lr": 1.0}\n{"step": 5, "spl')
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=4"]) == 0
    assert [r["step"] for r in rows(out) if r["split"] == "train"] == [1, 2, 3, 4]
    assert rows(out)[-2]["lr"] != 1.0


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_training_state_is_one_clear_error(damage: str, finished_run: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    data = (out / "train_state.pt").read_bytes()
    damaged = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x80\x02not a checkpoint" * 20}[damage]
    (out / "train_state.pt").write_bytes(damaged)
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=4"]) == 2
    assert str(out / "train_state.pt") in error_line(capsys)


# --- An interrupt loses nothing ----------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(signum: int, code: int, corpus_file: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    src = str(Path(ebt.train.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ebt.cli", "train", *text_args(corpus_file), "--train.steps=100000",
               "--train.eval_every=0", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and metrics.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1][-2000:]
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err[-2000:]
    steps = [r["step"] for r in rows(out) if r["split"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    assert load_run(out).step == steps[-1]  # every logged step is in the checkpoint
    assert f"interrupted at step {steps[-1]}" in err and f"ebt train --resume --out {out}" in err
    assert main(["train", "--resume", "--out", str(out), "--quiet", f"--train.steps={steps[-1] + 2}"]) == 0
    assert load_run(out).step == steps[-1] + 2


# --- Non-finite numbers never pass silently --------------------------------------------------------


@pytest.mark.parametrize("preset", ["text-transformer-tiny", "text-ebt-tiny"])
def test_divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint(preset: str, corpus_file: Path,
                                                                           tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *text_args(corpus_file, preset), "--train.steps=3", "--train.eval_every=0",
                 "--out", str(out)]) == 0
    good = {name: (out / name).read_bytes() for name in ("model.safetensors", "train_state.pt", "config.json")}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=10", "--train.lr=1e6"]) == 2
    err = error_line(capsys)
    # Caught at the step, from its loss and gradient norm, before a checkpoint or validation could.
    assert re.search(r"step \d+: loss is \S+ \(grad norm \S+\)", err), err
    assert ("nan" in err or "inf" in err) and "last good checkpoint (step 3)" in err and "train.lr" in err
    assert {name: (out / name).read_bytes() for name in good} == good
    rows(out)  # still standard JSON

    # A fresh run that diverges before its first checkpoint writes none.
    fresh = tmp_path / "fresh"
    assert main(["train", *text_args(corpus_file, preset), "--train.steps=10", "--train.eval_every=0",
                 "--train.lr=1e6", "--train.warmup_fraction=0", "--out", str(fresh)]) == 2
    err = error_line(capsys)
    assert "loss is" in err and "no checkpoint was written" in err
    assert not (fresh / "model.safetensors").exists()


def test_a_non_finite_validation_loss_is_logged_as_null_and_not_saved(corpus_file: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    from ebt.rundata.text import TextData

    monkeypatch.setattr(TextData, "validate", lambda self, model, **kw: {"loss": math.nan, "ppl": math.inf})
    out = tmp_path / "run"
    assert main(["train", *text_args(corpus_file), "--train.steps=2", "--out", str(out)]) == 2
    assert "validation loss is nan" in error_line(capsys)
    assert not (out / "model.safetensors").exists()
    last = rows(out)[-1]
    assert {k: last[k] for k in ("step", "split", "loss", "ppl")} == {"step": 2, "split": "validation", "loss": None,
                                                                    "ppl": None}


def test_standard_json_writes_non_finite_numbers_as_null() -> None:
    assert standard_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": "nan"}) == \
        '{"a": null, "b": [null, null, 1.5], "c": "nan"}'


def test_a_run_saved_with_a_scalar_step_size_still_loads(trained_runs, tmp_path):
    """Runs saved before FSDP2 kept α as a 0-d tensor; it is (1,) now. Such a run loads as it was."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ebt.runs import load_run

    old = tmp_path / "old"
    shutil.copytree(trained_runs["ebt"]["dir"], old)
    with safe_open(str(old / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(old / "model.safetensors"))
    state["step_size"] = state["step_size"].reshape(())
    save_file(state, str(old / "model.safetensors"), metadata=metadata)
    run = load_run(old)
    assert run.model.step_size.shape == (1,)
    assert torch.equal(run.model.step_size, load_run(trained_runs["ebt"]["dir"]).model.step_size)
