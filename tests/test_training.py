"""Training: loss falls, checkpoints round-trip, runs are deterministic and resumable, the LR
schedule and α's parameter group follow SPEC §3, bad checkpoints are refused, DDP stays in sync."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import ebt
import ebt.train
from ebt.checkpoint import load_config
from ebt.runs import load_run
from ebt.errors import CheckpointError
from ebt.evaluate import evaluate
from ebt.models import build_model
from ebt.rundata import load_data
from ebt.schedule import MIN_LR_RATIO, lr_factor, parameter_groups

from conftest import TRAINED_STEPS, tiny_config

KINDS = ("ebt", "transformer")
# Small enough to train three times in a test: one layer, batches of 4.
QUICK = {"model.n_layers": 1, "train.batch_size": 4, "train.eval_examples": 2}


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if row["split"] == "train"}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# --- Learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_train_step_over_micro_batches_is_one_step_over_the_whole_batch(kind: str) -> None:
    """`train_step` (the trainer's step, which `ebt bench` times) over two micro-batches makes the
    update of one over their concatenation, and reports what the loop logs; outside fp16 its loss
    scaler is a disabled GradScaler that changes nothing."""
    from ebt.data.batches import Batch
    from ebt.objectives import make_objective
    from ebt.parallel import Parallel
    from ebt.precision import grad_scaler
    from ebt.rundata.text import TextData
    from ebt.schedule import BETAS, lr_scheduler
    from ebt.train import train_step

    config = tiny_config(kind, overrides=QUICK)
    config.text.vocab_size = 11
    batch = torch.randint(0, 11, (4, config.model.context_len + 1), generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(4)
    models, results = [], []
    for parts in (1, 2):
        torch.manual_seed(0)
        model = build_model(config)
        optimizer = torch.optim.AdamW(parameter_groups(model, config.train, 1.0), betas=BETAS)
        scaler = grad_scaler(config.train.precision, "cpu")
        assert not scaler.is_enabled()
        micro = [Batch(d, e) for d, e in zip(batch.chunk(parts), seeds.chunk(parts))]
        results.append(train_step(Parallel(make_objective(model), model), optimizer,
                                  lr_scheduler(optimizer, config.train, config.train.steps), scaler, micro, TextData,
                                  config.train))
        models.append(model)
    assert_same_weights(models[0].state_dict(), models[1].state_dict(), atol=1e-6)
    whole, halves = results
    assert whole.seen == halves.seen == 4 * config.model.context_len
    assert float(whole.stats["loss"]) == pytest.approx(float(halves.stats["loss"]), rel=1e-5)
    assert float(whole.grad_norm) == pytest.approx(float(halves.grad_norm), rel=1e-4) and whole.signum == 0
    tc = config.train
    assert whole.lr == halves.lr == tc.lr * lr_factor(0, tc.steps, tc.warmup_fraction, tc.lr_schedule, tc.decay_fraction)



@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_on_tiny_data(kind: str, trained_runs) -> None:
    run = trained_runs[kind]
    losses = train_losses(run["dir"])
    assert sorted(losses) == list(range(1, TRAINED_STEPS[kind] + 1))
    last = sum(losses[s] for s in sorted(losses)[-5:]) / 5
    assert last < 0.8 * losses[1], f"training loss went {losses[1]:.3f} → {last:.3f}"
    # Validation: better than the same model at initialization, and than a uniform guess.
    config = run["config"]
    data = load_data(config)
    torch.manual_seed(config.train.seed)  # the trainer's initialization
    initial = evaluate(build_model(config), data.validation, batch_size=8,
                               max_windows=config.train.eval_examples).summary()
    final = run["result"]
    assert final["tokens"] == initial["tokens"] > 0
    assert final["loss"] < initial["loss"] - 0.5 and final["loss"] < math.log(config.text.vocab_size)


# --- Checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_gives_identical_outputs(kind: str, trained_runs) -> None:
    run = trained_runs[kind]
    trained = run["model"]  # the trainer's own in-memory model
    loaded = load_run(run["dir"])
    assert loaded.step == TRAINED_STEPS[kind]
    assert loaded.config.to_dict() == run["config"].to_dict()
    assert not loaded.model.training
    in_memory = {k: v.detach() for k, v in trained.state_dict().items()}
    assert_same_weights(in_memory, weights(run["dir"]))
    assert_same_weights(in_memory, loaded.model.state_dict())
    again = ebt.load(run["dir"])

    ids = torch.randint(0, loaded.config.text.vocab_size, (3, loaded.config.model.context_len),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if kind == "ebt":
            outputs = [m.think(ids, samples=2, generator=torch.Generator().manual_seed(1))
                       for m in (trained, loaded.model, again)]
            for other in outputs[1:]:
                assert torch.equal(other.y, outputs[0].y)
                assert torch.equal(other.energies[-1], outputs[0].energies[-1])
        else:
            outputs = [m(ids) for m in (trained, loaded.model, again)]
            for other in outputs[1:]:
                assert torch.equal(other, outputs[0])


def _break_config(key: str, value):
    def edit(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        section, name = key.split(".")
        config[section][name] = value
        (run / "config.json").write_text(json.dumps(config))
    return edit


def _truncate(name: str, keep: float):
    def edit(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return edit


BREAKAGES = {
    "weights truncated": _truncate("model.safetensors", 0.5),
    "weights emptied": _truncate("model.safetensors", 0.0),
    "weights garbage": lambda run: (run / "model.safetensors").write_bytes(b"\x07not safetensors" * 40),
    "weights missing": lambda run: (run / "model.safetensors").unlink(),
    "tokenizer missing": lambda run: (run / "tokenizer.json").unlink(),
    "tokenizer garbage": lambda run: (run / "tokenizer.json").write_text("[1, 2"),
    "config missing": lambda run: (run / "config.json").unlink(),
    "config not json": lambda run: (run / "config.json").write_text("{\"model\": "),
    "config unknown key": _break_config("model.colour", "blue"),
    "config dim changed": _break_config("model.dim", 64),
    "config layers changed": _break_config("model.n_layers", 1),
    "config vocab mismatch": _break_config("text.vocab_size", 300),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_corrupt_or_mismatched_checkpoint_raises_checkpoint_error(breakage: str, trained_runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_runs["ebt"]["dir"], run)
    BREAKAGES[breakage](run)
    with pytest.raises(CheckpointError):
        load_run(run)
    with pytest.raises(CheckpointError):
        ebt.load(run)


def test_loading_a_missing_run_directory_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path)


# --- Determinism and resuming --------------------------------------------------------------------


def test_same_seed_same_run_and_different_seed_differs(corpus_file: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        runs[name] = tmp_path / name
        ebt.train.train(tiny_config("ebt", corpus_file, {**QUICK, "train.steps": 6, "train.seed": seed}),
                        runs[name], quiet=True)
    assert train_losses(runs["a"]) == train_losses(runs["b"])
    assert_same_weights(weights(runs["a"]), weights(runs["b"]))
    assert train_losses(runs["a"]) != train_losses(runs["c"])
    assert not torch.equal(weights(runs["a"])["energy_head.weight"], weights(runs["c"])["energy_head.weight"])


class _Interrupted(Exception):
    pass


def train_until_checkpoint(config, out: Path, stop_after: int) -> None:
    """Train, and crash right after the checkpoint of step `stop_after` is written."""
    save = ebt.train.save_checkpoint_files

    def save_then_crash(out_dir, step, *args, **kwargs):
        save(out_dir, step, *args, **kwargs)
        if step == stop_after:
            raise _Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.train, "save_checkpoint_files", save_then_crash)
        with pytest.raises(_Interrupted):
            ebt.train.train(config, out, quiet=True)
    assert load_run(out).step == stop_after


@pytest.mark.parametrize("kind", KINDS)
def test_resume_continues_exactly(kind: str, corpus_file: Path, tmp_path: Path) -> None:
    overrides = {**QUICK, "train.steps": 8, "train.eval_every": 4}
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    ebt.train.train(tiny_config(kind, corpus_file, overrides), whole, quiet=True)
    train_until_checkpoint(tiny_config(kind, corpus_file, overrides), halves, stop_after=4)
    ebt.train.train(load_config(halves), halves, resume=True, quiet=True)  # what `ebt train --resume` does
    assert load_run(halves).step == 8
    assert_same_weights(weights(whole), weights(halves), atol=1e-6)
    whole_losses, resumed_losses = train_losses(whole), train_losses(halves)
    assert sorted(resumed_losses) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed_losses[step] == pytest.approx(whole_losses[step], rel=1e-6, abs=1e-6)


def test_resume_accepts_the_config_the_run_was_started_with(corpus_file: Path, tmp_path: Path) -> None:
    """A new process rebuilds the config it started with (vocab_size unset: it comes from the
    tokenizer) and resumes: that config describes the same model as the saved one."""
    overrides = {**QUICK, "train.steps": 4, "train.eval_every": 2}
    out = tmp_path / "run"
    train_until_checkpoint(tiny_config("ebt", corpus_file, overrides), out, stop_after=2)
    ebt.train.train(tiny_config("ebt", corpus_file, overrides), out, resume=True, quiet=True)
    assert load_run(out).step == 4


def test_resume_from_a_corrupt_training_state_raises_checkpoint_error(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ebt.train.train(tiny_config("ebt", corpus_file, {**QUICK, "train.steps": 2}), out, quiet=True)
    data = (out / "train_state.pt").read_bytes()
    (out / "train_state.pt").write_bytes(data[: len(data) // 2])
    config = load_config(out)
    config.train.steps = 4
    with pytest.raises(CheckpointError):
        ebt.train.train(config, out, resume=True, quiet=True)


# --- Learning-rate schedule and α's parameter group ------------------------------------------------


def test_lr_factor_warms_up_linearly_then_decays_by_cosine() -> None:
    total, fraction = 50, 0.2
    factors = [lr_factor(s, total, fraction) for s in range(total)]
    warmup = int(total * fraction)
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert max(factors) == pytest.approx(1.0)
    decay = factors[warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert all(MIN_LR_RATIO - 1e-12 <= f <= 1.0 for f in factors)
    # Cosine: half-way through the decay the factor is half-way between peak and floor.
    assert lr_factor(warmup + (total - warmup) // 2, total, fraction) == pytest.approx(0.55, abs=0.03)
    # No warm-up: the first update is at the peak.
    assert lr_factor(0, total, 0.0) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def recorded_lrs(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny EBT run with each update's per-group learning rates recorded: (config, run dir, lrs)."""
    config = tiny_config("ebt", corpus_file, {**QUICK, "train.steps": 20, "train.warmup_fraction": 0.1})
    out = tmp_path_factory.mktemp("lr-run")
    lrs: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append([g["lr"] for g in optimizer.param_groups])
    )
    try:
        ebt.train.train(config, out, quiet=True)
    finally:
        handle.remove()
    return load_config(out), out, lrs


def test_training_applies_the_schedule_and_alpha_has_its_own_group(recorded_lrs) -> None:
    config, out, lrs = recorded_lrs
    tc, mult = config.train, config.think.step_size_lr_mult
    assert len(lrs) == tc.steps
    for step, (decay_lr, plain_lr, alpha_lr) in enumerate(lrs):
        expected = tc.lr * lr_factor(step, tc.steps, tc.warmup_fraction)
        assert decay_lr == pytest.approx(expected) and plain_lr == pytest.approx(expected)
        assert alpha_lr == pytest.approx(mult * expected)
    # Group membership: α alone (no weight decay); norms and embedding tables without decay.
    torch.manual_seed(0)
    model = build_model(config)
    groups = parameter_groups(model, tc, mult)
    assert [g["weight_decay"] for g in groups] == [tc.weight_decay, 0.0, 0.0]
    assert len(groups[2]["params"]) == 1 and groups[2]["params"][0] is model.step_size
    assert groups[2]["lr"] == pytest.approx(mult * tc.lr)
    plain = {id(p) for p in groups[1]["params"]}
    for name in ("token_embedding.weight", "landscape_embedding.weight", "norm.weight", "blocks.0.ffn_norm.weight"):
        assert id(model.get_parameter(name)) in plain, name
    decay = {id(p) for p in groups[0]["params"]}
    for name in ("candidate_embedding.weight", "energy_head.weight", "blocks.0.attention.query.weight"):
        assert id(model.get_parameter(name)) in decay, name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # The saved optimizer state carries the same groups (what --resume restores).
    saved = torch.load(out / "train_state.pt", weights_only=False)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in saved] == [tc.weight_decay, 0.0, 0.0]
    assert saved[2]["initial_lr"] == pytest.approx(mult * tc.lr) and len(saved[2]["params"]) == 1


def test_the_last_update_uses_a_tenth_of_the_peak_lr(recorded_lrs) -> None:
    """SPEC §3: cosine to peak/10 over the run's own length, so the run's last update is at peak/10."""
    config, _, lrs = recorded_lrs
    assert lrs[-1][0] == pytest.approx(MIN_LR_RATIO * config.train.lr, rel=1e-6)
    total = config.train.steps
    assert lr_factor(total - 1, total, config.train.warmup_fraction) == pytest.approx(MIN_LR_RATIO, rel=1e-6)


# --- Distributed data parallel --------------------------------------------------------------------


DDP_STEPS = 4


@pytest.fixture(scope="module")
def ddp_run(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """`ebt train` under torchrun, 2 CPU processes (gloo): (finished process, run dir, ranks dir)."""
    root = tmp_path_factory.mktemp("ddp")
    run, ranks = root / "run", root / "ranks"
    ranks.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).with_name("ddp_worker.py")), str(ranks),
        "train", "--preset", "text-ebt-tiny", "--out", str(run), "--data", str(corpus_file), "--quiet",
        "--model.n_layers=1", "--model.dim=32", "--model.n_heads=2", "--model.context_len=16",
        f"--train.steps={DDP_STEPS}", "--train.batch_size=4", "--train.eval_every=0", "--train.eval_examples=2",
        "--train.log_every=1", "--train.device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done, run, ranks


def test_ddp_two_cpu_processes_keep_identical_parameters(ddp_run) -> None:
    done, run, ranks = ddp_run
    files = [ranks / f"rank{r}.pt" for r in (0, 1)]
    assert all(f.is_file() for f in files), done.stderr[-4000:]
    rank0, rank1 = (torch.load(f) for f in files)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert_same_weights(rank0["state"], rank1["state"])
    # Rank 0 saved the run; training moved the weights away from their initialization.
    saved = weights(run)
    assert_same_weights({k: v for k, v in rank0["state"].items() if k in saved}, saved)
    config = load_config(run)
    torch.manual_seed(config.train.seed)
    initial = build_model(config).state_dict()
    assert not torch.equal(initial["energy_head.weight"], saved["energy_head.weight"])
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, DDP_STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())


def test_ebt_train_under_torchrun_exits_zero_on_every_rank(ddp_run) -> None:
    done, _, _ = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("kind", KINDS)
def test_training_log_counts_speed_in_the_tasks_unit(kind: str, trained_runs) -> None:
    rows = [json.loads(line) for line in (trained_runs[kind]["dir"] / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert train_rows and all(row["tokens_per_s"] > 0 for row in train_rows)
