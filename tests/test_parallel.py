"""Global batches, gradient accumulation, and training over processes (DDP, FSDP2).

`train.batch_size` is the global batch: the same seed and batch give the same examples in the
same order whatever the number of processes and micro-batches, so these are one computation up to
float rounding (System 1 and the Transformer++; System 2 draws per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ebt.train
from ebt.checkpoint import migrate_weights
from ebt.config import RunConfig
from ebt.errors import ConfigError
from ebt.models import build_model
from ebt.presets import preset
from ebt.runs import load_run

from conftest import tiny_config
from test_images import bar_images

STEPS = 3


def _set(config: RunConfig, settings: dict) -> RunConfig:
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config.validated()


def _image_folder(root: Path) -> Path:
    from PIL import Image

    folder = root / "pictures"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i, image in enumerate(bar_images(12)):
            Image.fromarray(image[0].numpy()).save(folder / f"{i:02d}.png")
    return folder


def _config(kind: str, corpus_file: Path, root: Path) -> RunConfig:
    """A few-step run of `kind` at a tiny size; batch 8, no validation before the end."""
    common = {"train.steps": STEPS, "train.batch_size": 8, "train.eval_every": 0, "train.eval_examples": 2,
              "train.log_every": 1, "train.device": "cpu", "train.seed": 3, "train.warmup_fraction": 0.0}
    if kind in ("ebt", "transformer"):
        return tiny_config(kind, corpus_file, {**common, "model.n_layers": 1})
    small = {"model.n_layers": 1, "model.dim": 16, "model.n_heads": 2}
    if kind.startswith("image"):
        config = preset(f"image-{kind.split('-')[1]}-tiny")
        return _set(config, {**common, **small, "image.image_size": 12, "image.patch_size": 4,
                             "data.corpus": str(_image_folder(root))})
    config = preset("video-ebt-tiny")
    return _set(config, {**common, **small, "video.clips": 40, "model.context_len": 4})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), f"{k}: max |diff| {(a[k] - b[k]).abs().max():.3g}"


@pytest.mark.parametrize("kind", ["ebt", "transformer", "image-ebt", "image-dit", "video-ebt"])
def test_four_micro_batches_give_the_update_of_one_batch(kind: str, corpus_file: Path, tmp_path: Path) -> None:
    config = _config(kind, corpus_file, tmp_path)
    ebt.train.train(config, tmp_path / "whole", quiet=True)
    ebt.train.train(config.override("train.grad_accum", "4"), tmp_path / "accumulated", quiet=True)
    whole, accumulated = _weights(tmp_path / "whole"), _weights(tmp_path / "accumulated")
    assert_close(whole, accumulated)
    # Training moved the weights: the comparison is not between two untouched initializations.
    ebt.train.train(config.override("train.steps", "1"), tmp_path / "one-step", quiet=True)
    assert any(not torch.equal(whole[k], v) for k, v in _weights(tmp_path / "one-step").items())


def test_grad_accum_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match=r"train.grad_accum = 3 .*divisor of train.batch_size \(8\)"):
        tiny_config("ebt", overrides={"train.grad_accum": 3})
    with pytest.raises(ConfigError, match=r"train.grad_accum = 0 is not allowed; it must be an integer ≥ 1"):
        tiny_config("ebt", overrides={"train.grad_accum": 0})


def test_fsdp_needs_torchrun(corpus_file: Path, tmp_path: Path) -> None:
    config = tiny_config("ebt", corpus_file, {"train.parallel": "fsdp"})
    with pytest.raises(ConfigError, match="train.parallel = 'fsdp'.*torchrun"):
        ebt.train.train(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_zero_dim_alpha_of_older_checkpoints_still_loads() -> None:
    config = tiny_config("ebt", overrides={"model.dim": 16})
    config.text.vocab_size = 11
    model = build_model(config)
    state = {k: (v.reshape(()) if k == "step_size" else v) for k, v in model.state_dict().items()}
    fresh = build_model(config)
    fresh.load_state_dict(migrate_weights(state, fresh.state_dict()))  # as load_run and --resume read a file
    assert fresh.step_size.shape == (1,) and torch.equal(fresh.step_size, model.step_size)


# --- Two processes (torchrun, gloo) against one -----------------------------------------------------

MULTI = {  # name → (preset, overrides); every run: global batch 8, 3 optimizer steps
    "ebt-ddp": ("text-ebt-tiny", ["--train.parallel=ddp"]),
    "ebt-fsdp": ("text-ebt-tiny", ["--train.parallel=fsdp"]),
    "transformer-ddp": ("text-transformer-tiny", ["--train.parallel=ddp"]),
    "transformer-fsdp": ("text-transformer-tiny", ["--train.parallel=fsdp"]),
    "ebt-fsdp-accum": ("text-ebt-tiny", ["--train.parallel=fsdp", "--train.grad_accum=2"]),
    "ebt-fsdp-checkpointed": ("text-ebt-tiny", ["--train.parallel=fsdp", "--train.activation_checkpointing=true"]),
    # System 2 under FSDP2 with activation checkpointing (S1 covers FSDP2 without it).
    "ebt-s2-fsdp": ("text-ebt-s2-tiny", ["--train.parallel=fsdp", "--think.replay_buffer_size=8",
                                         "--train.activation_checkpointing=true"]),
    "ebt-s2-ddp": ("text-ebt-s2-tiny", ["--train.parallel=ddp", "--think.replay_buffer_size=8"]),
}
SMALL = ["--model.n_layers=2", "--model.dim=32", "--model.n_heads=2", "--model.context_len=16", "--train.batch_size=8",
         "--train.eval_every=0", "--train.eval_examples=2", "--train.log_every=1", "--train.device=cpu",
         "--train.seed=3", "--train.warmup_fraction=0", "--quiet"]


def _argv(preset_name: str, out: Path, corpus: Path, steps: int, *extra: str) -> list[str]:
    return ["--preset", preset_name, "--out", str(out), "--data", str(corpus), f"--train.steps={steps}", *SMALL, *extra]


@pytest.fixture(scope="module")
def two_process_runs(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Every MULTI run on 2 CPU processes (torchrun, gloo), plus a run started on 1 process and
    resumed on 2 (`resumed`, 2 + 1 steps, FSDP2): (root, exit code of each run)."""
    root = tmp_path_factory.mktemp("two-processes")
    from ebt.cli import main

    # The first two steps of `resumed`, on one process.
    assert main(["train", *_argv("text-ebt-tiny", root / "resumed", corpus_file, 2, "--train.lr_schedule=constant")]) == 0
    runs = {name: _argv(p, root / name, corpus_file, STEPS, *extra) for name, (p, extra) in MULTI.items()}
    runs["resumed"] = ["--resume", "--out", str(root / "resumed"), f"--train.steps={STEPS}", "--train.parallel=fsdp",
                       "--quiet"]
    codes = {}
    for name, argv in runs.items():
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "ebt.cli", "train", *argv]
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=240)
        codes[name] = done.returncode
        (root / f"{name}.log").write_text(done.stdout + done.stderr)
    return root, codes


def test_two_processes_run_every_parallel_mode(two_process_runs) -> None:
    root, codes = two_process_runs
    failed = {name: (root / f"{name}.log").read_text()[-3000:] for name, code in codes.items() if code != 0}
    assert not failed, failed


@pytest.mark.parametrize("name", ["ebt-ddp", "ebt-fsdp", "transformer-ddp", "transformer-fsdp", "ebt-fsdp-accum",
                                  "ebt-fsdp-checkpointed"])
def test_two_processes_give_the_weights_of_one(name: str, two_process_runs, corpus_file: Path,
                                               tmp_path: Path) -> None:
    """Same seed and global batch: 2 processes (DDP or FSDP2, with or without accumulation, FSDP2
    with activation checkpointing) end with the weights one process without either reaches;
    FSDP2's checkpoint is a full state dict."""
    root, done = two_process_runs
    preset_name, _ = MULTI[name]
    from ebt.cli import main

    assert main(["train", *_argv(preset_name, tmp_path / "one", corpus_file, STEPS)]) == 0
    assert_close(_weights(root / name), _weights(tmp_path / "one"))


def test_a_run_resumes_on_another_number_of_processes(two_process_runs, corpus_file: Path, tmp_path: Path) -> None:
    root, done = two_process_runs
    from ebt.cli import main

    assert main(["train", *_argv("text-ebt-tiny", tmp_path / "one", corpus_file, STEPS, "--train.lr_schedule=constant")]) == 0
    assert_close(_weights(root / "resumed"), _weights(tmp_path / "one"))


def test_a_non_finite_validation_loss_stops_every_rank_with_the_same_error(corpus_file: Path, tmp_path: Path) -> None:
    """Only the main rank validates; the others learn its loss and stop with it (they used to go on
    to the next step's collective and wait there until torchrun killed them)."""
    ranks, logs = tmp_path / "ranks", tmp_path / "logs"
    ranks.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(logs), "--redirects", "3", str(Path(__file__).with_name("ddp_worker.py")), str(ranks),
               "--nan-validation", "train", *[a if a != "--train.eval_every=0" else "--train.eval_every=2"
                                              for a in _argv("text-ebt-tiny", tmp_path / "run", corpus_file, 4)]]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode != 0
    codes = [(ranks / f"rank{r}.done").read_text().strip() for r in (0, 1)]  # each rank ran to its own end
    assert codes == ["2", "2"], done.stderr[-3000:]
    errors = [p.read_text() for p in sorted(logs.rglob("stderr.log"))]
    assert len(errors) == 2 and errors[0] == errors[1], errors
    assert errors[0].startswith("ebt train: error: step 2: the validation loss is nan; no checkpoint was written")
    assert len(errors[0].strip().splitlines()) == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["ebt-s2-fsdp", "ebt-s2-ddp"])
def test_system2_trains_under_both_modes_and_loads_in_one_process(name: str, two_process_runs) -> None:
    root, done = two_process_runs
    run = load_run(root / name)
    model, config = run.model, run.config
    assert config.train.parallel == name.split("-")[2]
    assert config.train.activation_checkpointing == (config.train.parallel == "fsdp")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]


def test_the_resume_command_of_a_torchrun_run_is_a_torchrun_line(monkeypatch) -> None:
    """An interrupted or failed run launched by torchrun is told to resume under torchrun, with its
    processes per node (`ebt train --resume` alone would refuse train.parallel = 'fsdp')."""
    from ebt.distributed import Distributed
    from ebt.rundir import resume_command

    out = Path("runs/a b")
    assert resume_command(out) == "ebt train --resume --out 'runs/a b'"
    assert resume_command(out, Distributed()) == "ebt train --resume --out 'runs/a b'"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resume_command(out, Distributed(3, 16, 3)) == \
        "torchrun --nproc_per_node 8 -m ebt.cli train --resume --out 'runs/a b'"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resume_command(out, Distributed(1, 2, 1)).startswith("torchrun --standalone --nproc_per_node 2 -m ebt.cli")


def test_a_launcher_forwarding_the_stop_does_not_cut_the_checkpoint_short() -> None:
    """Ctrl-C under torchrun: the workers get the terminal's SIGINT, then torchrun's SIGTERM; the
    second is part of the same stop (the checkpoint is still saved). The same signal twice (Ctrl-C
    pressed again) stops at once."""
    import signal

    from ebt.rundir import StopSignals

    stop = StopSignals()
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
