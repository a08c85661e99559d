"""Experiment trackers (`train.log_to`): TensorBoard and W&B get the rows of metrics.jsonl, on
resume too; a missing package or a bad value is one clear error before the run writes anything.

Tiny text runs through `ebt train` (`ebt.cli.main` in-process) on the CPU. W&B is tested two ways:
a stand-in `wandb` module that records the calls (our logic: ids, resume, rows, closing), and the
real package offline (no account, no network).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import ebt
from ebt.cli import main
from ebt.config import RunConfig
from ebt.errors import ConfigError

TINY = ["--preset", "text-transformer-tiny", "--quiet", "--model.dim=16", "--model.n_heads=2", "--model.n_layers=1",
        "--model.context_len=16", "--train.batch_size=4", "--train.eval_examples=4", "--train.log_every=1",
        "--train.device=cpu"]


def train(corpus: Path, out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--data", str(corpus), "--out", str(out), *extra])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(row: dict) -> dict[str, float]:
    """What a tracker should get from a metrics.jsonl row: its numbers, named split/field."""
    return {f"{row['split']}/{k}": v for k, v in row.items()
            if k not in ("step", "split") and isinstance(v, (int, float))}


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- The setting ----------------------------------------------------------------------------------


def test_an_unknown_tracker_is_an_error_naming_the_allowed_ones(corpus_file: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="train.log_to = 'foo'.*'none', 'tensorboard', 'wandb'"):
        RunConfig().override("train.log_to", "foo")
    assert train(corpus_file, tmp_path / "run", "--train.steps=2", "--train.log_to=foo") == 2
    assert "train.log_to = 'foo'" in error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, modules", [("tensorboard", ["tensorboard", "torch.utils.tensorboard"]),
                                           ("wandb", ["wandb"])])
def test_a_missing_package_stops_the_run_before_it_writes_anything(kind: str, modules: list[str], corpus_file: Path,
                                                                  tmp_path: Path, monkeypatch, capsys) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    assert train(corpus_file, tmp_path / "run", "--train.steps=2", f"--train.log_to={kind}") == 2
    err = error_line(capsys)
    assert f"train.log_to = '{kind}'" in err and "pip install 'energy-based-transformers[track]'" in err
    assert f"pip install {kind}" in err
    assert not (tmp_path / "run").exists()


# --- TensorBoard ----------------------------------------------------------------------------------


def events(folder: Path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    loaded = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    loaded.Reload()
    return loaded


def assert_scalars_match_the_log(out: Path) -> None:
    """Every number of every metrics.jsonl row is one TensorBoard scalar at the row's step, and
    nothing else is (each tag has each step once)."""
    loaded = events(out / "tensorboard")
    expected: dict[str, dict[int, float]] = {}
    for row in rows(out):
        for tag, value in expected_scalars(row).items():
            expected.setdefault(tag, {})[row["step"]] = value
    assert set(loaded.Tags()["scalars"]) == set(expected)
    for tag, by_step in expected.items():
        logged = [(e.step, e.value) for e in loaded.Scalars(tag)]
        assert [step for step, _ in logged] == sorted(by_step), tag
        for step, value in logged:  # TensorBoard keeps float32
            assert value == pytest.approx(np.float32(by_step[step]), rel=1e-6), (tag, step)


def test_tensorboard_gets_every_row_of_the_log(corpus_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=tensorboard", "--train.steps=4", "--train.eval_every=2") == 0
    assert_scalars_match_the_log(out)
    tags = events(out / "tensorboard").Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "validation/loss", "validation/ppl"} <= set(tags)
    assert not any("window_losses" in tag for tag in tags)  # lists stay in metrics.jsonl
    text = events(out / "tensorboard").Tensors("config/text_summary")
    assert '"log_to": "tensorboard"' in text[0].tensor_proto.string_val[0].decode()


def test_a_resumed_run_continues_its_tensorboard_curves_without_the_steps_it_lost(corpus_file: Path,
                                                                                  tmp_path: Path) -> None:
    """A crash after the checkpoint at step 2 left steps 3–4 in the log and in TensorBoard: the
    resumed run drops both, so every step is there once, with the resumed run's values."""
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=tensorboard", "--train.steps=2") == 0
    lost = SummaryWriter(str(out / "tensorboard"))
    with open(out / "metrics.jsonl", "a") as f:
        for step in (3, 4):
            f.write(json.dumps({"step": step, "split": "train", "loss": 99.0}) + "\n")
            lost.add_scalar("train/loss", 99.0, step)
    lost.close()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=4"]) == 0
    assert [r["step"] for r in rows(out) if r["split"] == "train"] == [1, 2, 3, 4]
    assert_scalars_match_the_log(out)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 3  # appended, never rewritten


def test_overwrite_starts_the_tensorboard_events_afresh(corpus_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=tensorboard", "--train.steps=3") == 0
    assert train(corpus_file, out, "--train.log_to=tensorboard", "--train.steps=2", "--train.seed=1",
                 "--overwrite") == 0
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert_scalars_match_the_log(out)


def test_under_torchrun_only_the_main_process_tracks(corpus_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    src = str(Path(ebt.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ebt.cli",
               "train", *TINY, "--data", str(corpus_file), "--out", str(out), "--train.steps=2",
               "--train.log_to=tensorboard"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert_scalars_match_the_log(out)


# --- W&B, through a stand-in module ---------------------------------------------------------------


class FakeWandB(types.ModuleType):
    """Records what the trainer asks of `wandb`: init's arguments, each log call, finish."""

    def __init__(self, init_error: str | None = None):
        super().__init__("wandb")
        self.errors = types.SimpleNamespace(Error=type("Error", (Exception,), {}))
        self.init_error, self.inits, self.logged, self.finished = init_error, [], [], []
        self.on_log = lambda step: None

    def init(self, **kwargs):
        if self.init_error:
            raise self.errors.Error(self.init_error)
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data: dict, step: int) -> None:
                fake.logged.append((step, data))
                fake.on_log(step)

            def finish(self, exit_code: int = 0) -> None:
                fake.finished.append(exit_code)

        return Run()


@pytest.fixture
def fake_wandb(monkeypatch) -> FakeWandB:
    fake = FakeWandB()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)
    return fake


def test_wandb_gets_every_row_and_resume_continues_the_same_wandb_run(fake_wandb: FakeWandB, corpus_file: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=wandb", "--train.steps=4", "--train.eval_every=2") == 0
    saved = json.loads((out / "wandb-run.json").read_text())
    first = fake_wandb.inits[0]
    assert (first["id"], first["project"], first["resume"]) == (saved["id"], "ebt", "allow")
    assert first["dir"] == str(out) and first["name"] == "run"
    assert first["config"] == json.loads((out / "config.json").read_text())
    assert fake_wandb.finished == [0]

    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=6"]) == 0
    assert len(fake_wandb.inits) == 2 and fake_wandb.inits[1]["id"] == saved["id"]
    assert fake_wandb.inits[1]["config"]["train"]["steps"] == 6
    assert fake_wandb.logged == [(r["step"], expected_scalars(r)) for r in rows(out)]
    assert [step for step, data in fake_wandb.logged if "validation/loss" in data] == [2, 4, 6]
    assert fake_wandb.finished == [0, 0]


def test_the_wandb_project_comes_from_the_environment_and_stays_with_the_run(fake_wandb: FakeWandB,
                                                                           corpus_file: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("WANDB_PROJECT", "energy")
    assert train(corpus_file, out, "--train.log_to=wandb", "--train.steps=2") == 0
    monkeypatch.setenv("WANDB_PROJECT", "elsewhere")
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=3"]) == 0
    assert [i["project"] for i in fake_wandb.inits] == ["energy", "energy"]


def test_an_interrupted_run_closes_its_wandb_run(fake_wandb: FakeWandB, corpus_file: Path, tmp_path: Path) -> None:
    """Ctrl-C during step 2: the checkpoint is saved, W&B is finished with the signal's exit code
    and has every row up to the checkpoint."""
    fake_wandb.on_log = lambda step: signal.raise_signal(signal.SIGINT) if step == 2 else None
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=wandb", "--train.steps=50", "--train.eval_every=0") == 130
    assert fake_wandb.finished == [130]
    assert [step for step, _ in fake_wandb.logged] == [r["step"] for r in rows(out)] == [1, 2]


def test_wandb_that_cannot_start_is_one_clear_error_and_leaves_no_run(corpus_file: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", FakeWandB(init_error="No API key configured."))
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=wandb", "--train.steps=2") == 2
    err = error_line(capsys)
    assert "train.log_to = 'wandb'" in err and "No API key configured." in err and "WANDB_MODE=offline" in err
    assert not (out / "config.json").exists() and not (out / "wandb-run.json").exists()
    assert train(corpus_file, out, "--train.steps=2") == 0  # the directory holds no run: no --overwrite needed


# --- W&B for real, offline -----------------------------------------------------------------------


def test_wandb_offline_writes_its_run_in_the_run_directory(corpus_file: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path / "wandb-dir", "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": tmp_path / "config",
                        "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path / "run"
    assert train(corpus_file, out, "--train.log_to=wandb", "--train.steps=2") == 0
    time.sleep(1.1)  # W&B names a session's folder to the second: two sessions in one second would share one
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--train.steps=3"]) == 0
    run_id = json.loads((out / "wandb-run.json").read_text())["id"]
    # One folder per session, offline-run-DATE_TIME-ID, every one of the saved id: the resumed run
    # continued the same W&B run.
    sessions = sorted((out / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and all(session.name.endswith(f"-{run_id}") for session in sessions), sessions
    # W&B's own process writes the history; it may still be flushing it when finish() returns.
    deadline = time.monotonic() + 30
    while True:
        histories = [(session / f"run-{run_id}.wandb").read_bytes() for session in sessions]
        if all(b"train/loss" in h and b"validation/loss" in h for h in histories) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for history in histories:
        assert b"train/loss" in history and b"validation/loss" in history
