"""The training loop: one loop for every model kind and task, single-process or under torchrun.

It knows objectives, batches and a validation function, not text, images or frames: the task's
data (`ebt.rundata.load_data`) supplies batches, splits them into (x, targets), scores the model
and saves its own files with the run. SPEC §3: AdamW
β = (0.9, 0.999), linear warm-up then cosine to peak/10 over the run's own length, grad-norm
clipping, α in its own parameter group (no weight decay, lr × multiplier).

Outputs in the run directory: config.json, the task's files (text: tokenizer.json),
model.safetensors and train_state.pt (for --resume) at every validation, at the end and on
SIGINT/SIGTERM, all written atomically, and metrics.jsonl (one standard-JSON object per logged
step and per validation, appended a line at a time), whose rows also go to the experiment tracker
`train.log_to` names (`ebt.trackers`: TensorBoard, Weights & Biases).

A run directory belongs to one run: starting a new run over another needs overwrite=True
(`--overwrite`), and the old run is kept aside until the new one writes its first checkpoint. A resumed run continues exactly (weights, optimizer, schedule, RNGs, data
sampler, replay buffer); fields that shape the model or the data cannot change on resume, the
others (lr, steps, intervals, clipping, decay, warm-up, device) apply from the next step. A
non-finite loss, gradient norm, weight or validation loss stops training before anything is
saved (TrainingDiverged).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from ebt import distributed
from ebt.checkpoint import (METRICS, RUN_FILES, TRAIN_STATE, WEIGHTS, load_config, load_train_state,
                            migrate_weights, save_config, save_run, save_snapshot, save_weights, validation_rows)
from ebt.files import atomic_write, standard_json
from ebt.config import RunConfig, TrainConfig
from ebt.errors import CheckpointError, ConfigError, Interrupted, ThinkingDiverged, TrainingDiverged
from ebt.models import build_model, count_parameters, set_activation_checkpointing
from ebt.objectives import make_objective
from ebt.parallel import check as check_parallel, full_tensor, wrap
from ebt.precision import autocast, check_precision, grad_scaler
from ebt.rundata import load_data, resolve_source
from ebt.trackers import Tracker, check as check_tracker, open_tracker

MIN_LR_RATIO = 0.1  # cosine decays to peak/10 (SPEC §3)
BETAS = (0.9, 0.999)
# What --resume may not change: the model and its thinking, the data, and what fixes the batches.
RESUME_FIXED_TRAIN_FIELDS = ("train.seed", "train.batch_size")
# Fields the data sets (0 = unset); a different value given by hand is refused, not overwritten.
SET_BY_THE_DATA = ("text.vocab_size", "video.latent_dim")


def parameter_groups(model: nn.Module, cfg: TrainConfig, step_size_lr_mult: float) -> list[dict]:
    """Weight decay on matrices only; no decay on norms, embedding tables and α; α at lr × mult."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    alpha = getattr(model, "step_size", None)
    decay, plain = [], []
    for p in model.parameters():
        if not p.requires_grad or p is alpha:
            continue
        (decay if p.dim() >= 2 and id(p) not in no_decay else plain).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": plain, "weight_decay": 0.0, "lr": cfg.lr},
    ]
    if alpha is not None and alpha.requires_grad:
        groups.append({"params": [alpha], "weight_decay": 0.0, "lr": cfg.lr * step_size_lr_mult})
    return groups


def lr_factor(step: int, total: int, warmup_fraction: float, schedule: str = "cosine",
              decay_fraction: float = 0.2) -> float:
    """Multiplier of each group's peak lr for optimizer step `step` (0-based) of `total`: linear
    warm-up to 1 at step warmup−1, then by `schedule` (train.lr_schedule):
      cosine    down to MIN_LR_RATIO at the last step (SPEC §3);
      constant  1 (a data-scaling curve read at checkpoints wants a steady rate);
      wsd       1, then linearly down to MIN_LR_RATIO over the last `decay_fraction` of the steps.
    Past `total` (a resumed run extended) each holds its final value."""
    warmup = int(total * warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay = max(1, int(total * decay_fraction))
        progress = min(1.0, max(0, step - (total - decay) + 1) / decay)  # 1 at the last step
        return 1.0 - (1.0 - MIN_LR_RATIO) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def validation_steps(tc: TrainConfig) -> set[int]:
    """The steps (1-based, ≤ tc.steps) after which the trainer validates and saves a checkpoint:
    every eval_every steps (linear spacing), or at round(eval_every · √2^i) for i = 0, 1, … (log
    spacing: two per doubling); always the last step."""
    steps = {tc.steps}
    if tc.eval_every and tc.eval_spacing == "log":
        i = 0
        while (at := round(tc.eval_every * 2 ** (i / 2))) <= tc.steps:
            steps.add(at)
            i += 1
    elif tc.eval_every:
        steps.update(range(tc.eval_every, tc.steps + 1, tc.eval_every))
    return steps


def train(config: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False,
          quiet: bool = False) -> dict:
    """Train the model a RunConfig describes into run directory `out`.

    `out` must not hold another run unless `resume` (continue it; `config` may change only what
    can change mid-run) or `overwrite` (remove its files first). Raises TrainingDiverged on a
    non-finite loss, gradient norm, weight or validation loss, and Interrupted on SIGINT/SIGTERM
    (after saving a checkpoint).

    Returns the final validation (the task's metrics; text: {"loss", "ppl", "tokens",
    "forward_passes"}) on the main process, {} on the other ranks of a distributed run.
    """
    out = Path(out)
    dist = distributed.setup(config.train.device)
    stop, replaced, log = StopSignals(), _Replaced(), _MetricsLog(out / METRICS, dist.is_main)
    try:
        result = _train(config, out, resume, overwrite, quiet, dist, stop, replaced, log)
        log.close()
        return result
    except BaseException as e:
        log.close(getattr(e, "exit_code", 1))  # flushed, and done with its files before the old run comes back
        replaced.restore()  # the new run wrote no checkpoint: the run it was to replace comes back
        raise
    finally:
        stop.restore()
        distributed.teardown(dist)


def _train(config: RunConfig, out: Path, resume: bool, overwrite: bool, quiet: bool, dist: distributed.Distributed,
           stop: StopSignals, replaced: _Replaced, log: _MetricsLog) -> dict:
    say = (lambda *a: None) if (quiet or not dist.is_main) else print
    check_tracker(config.train.log_to)  # a tracker's missing package stops the run before it writes anything
    old_run = _claim_run_directory(out, resume, overwrite)
    # A corpus path, relative to where the command runs, is saved absolute (and compared so on resume).
    config = config.override("data.corpus", resolve_source(config.data.corpus))
    if config.train.init and not resume:  # saved absolute, like the corpus
        init = Path(config.train.init).expanduser().resolve()
        if init == out.resolve():
            raise ConfigError(f"train.init = {config.train.init!r} is the run directory this run writes (--out); "
                              "a run starts from another run's weights: choose another --out")
        try:
            load_config(init)
        except CheckpointError as e:
            raise ConfigError(f"train.init = {config.train.init!r} must be a run directory to start from: {e}") from None
        config = config.override("train.init", str(init))
    if resume:
        for name in (WEIGHTS, TRAIN_STATE):
            if not (out / name).is_file():
                raise CheckpointError(f"--resume: {out} has no {name} to resume from "
                                      "(to start it afresh instead, pass --overwrite without --resume)")
        saved = load_config(out)
        _refuse_fixed_changes(saved, config, out, ("data",), RESUME_FIXED_TRAIN_FIELDS)
    device, why = distributed.pick_device(config.train.device, dist)
    check_parallel(config.train.parallel, dist, config.train.activation_checkpointing)
    check_precision(config.train.precision, device)
    if dist.enabled:  # a barrier: every rank has looked at `out` before the main one writes there
        arrived = torch.zeros(1, device=device)
        torch.distributed.all_reduce(arrived)
        arrived.item()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference trained fp32 with TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.train.seed)

    data = load_data(config, out if resume else None)  # a resumed run keeps its tokenizer
    for key, value in data.overrides.items():
        section, name = key.split(".")
        given = getattr(getattr(config, section), name)
        if key in SET_BY_THE_DATA and given not in (0, int(value)):
            raise ConfigError(f"{key} comes from the data ({value}); {given} was given: drop the override")
        config = config.override(key, value)
    if resume:  # after the data's overrides: text.vocab_size, video.latent_dim, image.channels come from the data
        _refuse_fixed_changes(saved, config, out, ("model", "think", config.model.task))
    model = build_model(config).to(device)
    tc = config.train
    say(f"device: {device} ({why}); processes: {dist.world_size}"
        + (f" ({tc.parallel}); {tc.batch_size // dist.world_size} sequences each" if dist.enabled else "")
        + (f" in {tc.grad_accum} micro-batches" if tc.grad_accum > 1 else "") + f"; precision: {tc.precision}")
    say(f"config:\n{config.to_json()}")
    say(
        f"model: {config.model.kind}, {count_parameters(model) / 1e6:.2f}M non-embedding parameters "
        f"({count_parameters(model, embeddings=True) / 1e6:.2f}M in all); "
        f"data: {data.summary}"
    )

    set_activation_checkpointing(model, tc.activation_checkpointing)
    state = None
    if resume:  # the weights go into the plain model, before FSDP2 shards it
        state = _load_train_state(out, model, device)
    elif tc.init:
        say(f"initial weights: {_load_initial_weights(model, config, Path(tc.init))}")
    objective = make_objective(model)
    parallel = wrap(objective, model, tc.parallel, dist, device)
    optimizer = torch.optim.AdamW(parameter_groups(model, tc, config.think.step_size_lr_mult), betas=BETAS)
    scaler = grad_scaler(tc.precision, device)  # fp16 only: dynamic loss scaling
    # The cosine runs over the length the run started with (schedule["steps"]); a resumed run
    # that extends train.steps holds the final rate after it (see _resume_schedule).
    schedule = {"steps": tc.steps}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule["steps"], tc.warmup_fraction, tc.lr_schedule, tc.decay_fraction))
    batches = data.training_batches(tc.batch_size, tc.seed, dist.rank, dist.world_size, tc.grad_accum)
    replay = getattr(objective, "replay", None)  # System 2's replay buffer
    step = 0
    if resume:
        _restore_train_state(out, state, parallel, optimizer, scheduler, scaler, batches, replay, device)
        step, schedule["steps"] = int(state["step"]), int(state.get("schedule_steps", saved.train.steps))
        if tc.steps < step:
            raise ConfigError(f"train.steps = {tc.steps} is below the step the run in {out} has reached ({step}); "
                              f"give at least {step}")
        schedule_line = _resume_schedule(optimizer, scheduler, model, config, saved, step, schedule["steps"])
        say(f"resumed from step {step}; {schedule_line}")
        if dist.is_main:
            _keep_metrics_until(out / METRICS, step)
            log.tracker = open_tracker(tc.log_to, out, config, step)
    else:
        out.mkdir(parents=True, exist_ok=True)
        if dist.is_main:
            replaced.set_aside(out, old_run)  # --overwrite: kept until the new run's first checkpoint
            # The tracker before the run's files: one that cannot start (W&B without a login) leaves none.
            log.tracker = open_tracker(tc.log_to, out, config, step)
            save_run(out, config, data)

    def validate(weights: dict[str, torch.Tensor]) -> dict:
        scored = model
        if tc.parallel == "fsdp" and dist.enabled:
            # Under FSDP2 the trained model's weights are sharded; the main process validates a whole
            # copy, built for the validation only (held between validations it would cost a model's
            # memory on that process all run), and without drawing from torch's generator, which must
            # stay in step on every process (System 2 draws its step count from it, and every process
            # must run as many FSDP2 passes).
            with torch.random.fork_rng(devices=[]):
                scored = build_model(config).to(device)
            scored.load_state_dict(weights)
        with autocast(tc.precision, device):
            return data.validate(scored, batch_size=tc.batch_size, max_examples=tc.eval_examples, device=device)

    saved_step = step if resume else None  # the last checkpoint in `out`, named when training stops

    def diverged(at: int, what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint (step {saved_step}) is kept in {out}" if saved_step is not None
                else "no checkpoint was written; the run it was to replace is put back" if replaced.out is not None
                else "no checkpoint was written (start again with --overwrite)")
        return TrainingDiverged(f"step {at}: {what}; {kept}; lower train.lr (now {tc.lr:g}) or train.grad_clip "
                                f"(now {tc.grad_clip:g})")

    def checkpoint(weights: dict[str, torch.Tensor], kept: bool = False) -> None:
        """Save weights (full tensors, from every process: a collective under FSDP2) and the
        training state; `kept`: also keep these weights under checkpoints/."""
        nonlocal saved_step
        if not all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point()):
            raise diverged(step, "a weight is not finite")
        optimizer_state = parallel.full_optimizer_state(optimizer)  # a collective under FSDP2
        if dist.is_main:
            # Everything the next step depends on, so a resumed run continues exactly. Python's
            # `random` and numpy's global generator are not saved: nothing in training draws from them.
            save_weights(out, weights, step, {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "schedule_steps": schedule["steps"],
                "batches": batches.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "replay": replay.state_dict() if replay is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
            })
            if kept:
                save_snapshot(out, weights, step)
            # The config these weights were trained under (on --resume, with its overrides).
            save_config(out, config)
            replaced.drop()
        saved_step = step

    bar = tqdm(total=tc.steps, initial=step, disable=quiet or not dist.is_main, dynamic_ncols=True, desc="train")
    result: dict = {}
    validated = False  # on every process (only the main one has a result)
    tick, seen_since_tick = time.perf_counter(), 0
    # Seconds this process spent training (not validating) and in all: the cost of each point of a scaling curve.
    started, since_validation, trained_s = tick, tick, 0.0
    speed = f"{data.unit}_per_s"  # text: tokens_per_s
    validate_at = validation_steps(tc)
    model.train()
    stop.install()
    while step < tc.steps:
        micro_batches = next(batches)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        finite = torch.ones((), dtype=torch.bool, device=device)
        for i, batch in enumerate(micro_batches):
            x, targets = data.split(batch.data.to(device))
            last = i == len(micro_batches) - 1
            with parallel.sync(last):
                try:
                    with autocast(tc.precision, device):
                        loss, stats = parallel.module(x, targets, batch.seeds.to(device))
                except ThinkingDiverged as e:
                    raise diverged(step + 1, str(e)) from None
                # The step's loss is the mean over its micro-batches (all of one size).
                share = loss / len(micro_batches)
                (scaler.scale(share) if scaler is not None else share).backward()
            finite &= torch.isfinite(loss.detach())
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro_batches)
            seen_since_tick += data.count(targets) * dist.world_size
        parallel.after_backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        # Checked before the update, so the weights in memory stay the last finite ones. Under fp16 a
        # non-finite gradient is the loss scale overflowing: GradScaler skips the step and lowers the scale.
        finite, signum = _agree(finite & (torch.isfinite(grad_norm) | (scaler is not None)), stop.signum, dist)
        if not finite:
            raise diverged(step + 1, f"loss is {float(totals['loss']):.4g} (grad norm {float(grad_norm):.4g})")
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        if step % tc.log_every == 0 or step == tc.steps:
            elapsed = time.perf_counter() - tick
            row = {k: float(v) for k, v in totals.items()}
            row.update(step=step, split="train", **model.task.loss_metrics(row["loss"]), grad_norm=float(grad_norm),
                       lr=lr, **{speed: seen_since_tick / elapsed})
            tick, seen_since_tick = time.perf_counter(), 0
            log.write(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "ppl", "energy_gap", speed) if k in row})
        bar.update(1)
        if step in validate_at:
            trained_s += time.perf_counter() - since_validation
            weights = parallel.full_state_dict()  # every process: a collective under FSDP2
            validated = True
            if dist.is_main:
                result = validate(weights)
                # Per-example losses (text: window_losses) go to the log only: a scaling fit's bootstrap.
                log.write({"step": step, "split": "validation", **result, "train_s": trained_s,
                           "wall_s": time.perf_counter() - started})
                result = {k: v for k, v in result.items() if not isinstance(v, list)}
                if not math.isfinite(result["loss"]):
                    raise diverged(step, f"the validation loss is {result['loss']:.4g}")
                if not quiet:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
                    bar.write(f"step {step}: validation {shown}")
            checkpoint(weights, kept=tc.keep_checkpoints)
            tick, seen_since_tick = time.perf_counter(), 0  # validation time is not training speed
            since_validation = tick
        if not dist.enabled:
            signum = stop.signum  # a signal during the rest of this step counts now
        if signum and step < tc.steps:
            if saved_step != step:
                checkpoint(parallel.full_state_dict())
            bar.close()
            raise Interrupted(f"interrupted at step {step} ({signal.Signals(signum).name}); checkpoint saved; "
                              f"resume with: ebt train --resume --out {out}", 128 + signum)
    bar.close()
    if not validated:  # resumed a finished run: the loop had nothing to do
        weights = parallel.full_state_dict()
        if dist.is_main:
            result = validate(weights)
            if step not in validation_rows(out):  # e.g. metrics.jsonl was lost: the log gets its row back
                log.write({"step": step, "split": "validation", **result})
            result = {k: v for k, v in result.items() if not isinstance(v, list)}
    return result


def _load_initial_weights(model: nn.Module, config: RunConfig, init: Path) -> str:
    """train.init: copy the weights of the run in `init` into `model` (fine-tuning). ConfigError
    unless its model and task sections equal this run's (the weights would not fit); the run's
    files are checked as `ebt.load_run` checks them. Returns a line for the log."""
    from ebt.runs import load_run

    theirs = load_config(init)
    mine_flat, theirs_flat = _flat(config), _flat(theirs)
    sections = ("model", config.model.task)
    changed = [f"{k} = {mine_flat.get(k)!r} (the initial run has {theirs_flat.get(k)!r})"
               for k in sorted(set(mine_flat) | set(theirs_flat)) if k.split(".")[0] in sections
               and mine_flat.get(k) != theirs_flat.get(k)]
    if changed:
        raise ConfigError(f"train.init = {str(init)!r}: {'; '.join(changed[:4])}; a run started from another's "
                          "weights keeps its model: drop those overrides")
    run = load_run(init)
    model.load_state_dict(run.model.state_dict())
    return f"{init} (its step {run.step})"


def _load_train_state(out: Path, model: nn.Module, device: torch.device) -> dict:
    """The training state of `out`, after loading its weights into the (unwrapped) model."""
    state = load_train_state(out)
    try:
        with safe_open(str(out / WEIGHTS), framework="pt") as f:
            weights_step = int((f.metadata() or {}).get("step", -1))
        weights = load_file(str(out / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{out / WEIGHTS} is corrupt or unreadable ({e}); the run cannot resume from it") from None
    if weights_step != int(state["step"]):
        raise CheckpointError(f"{out / WEIGHTS} is from step {weights_step} but {out / TRAIN_STATE} from step "
                              f"{state['step']} (a save was cut short); the run cannot continue exactly")
    try:
        model.load_state_dict(migrate_weights(weights, model.state_dict()))
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume from {out}: {e}") from None
    return state


def _restore_train_state(out: Path, state: dict, parallel, optimizer, scheduler, scaler, batches, replay,
                         device: torch.device) -> None:
    """Everything but the weights, where the run left it (any number of processes)."""
    try:
        parallel.load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["batches"])
        if replay is not None and state.get("replay") is not None:
            replay.load_state_dict(state["replay"], device)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {out}: {e}") from None


def _claim_run_directory(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to start a run in a directory that holds another; returns the old run's files that
    `overwrite` replaces (`_Replaced`). Nothing is touched here."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a run directory")
    if resume:
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        raise CheckpointError(f"{out} already holds a run ({', '.join(p.name for p in found)}); "
                              "pass --resume to continue it or --overwrite to replace it")
    return found


def _flat(config: RunConfig) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, fields in config.to_dict().items() if isinstance(fields, dict)
            for k, v in fields.items()}


def _refuse_fixed_changes(saved: RunConfig, config: RunConfig, out: Path, sections: tuple[str, ...],
                          fields: tuple[str, ...] = ()) -> None:
    """--resume: whole config `sections` and single `fields` shape the model, its data or its
    batches, so they cannot change mid-run."""
    before, now = _flat(saved), _flat(config)
    keys = [k for k in before if k.partition(".")[0] in sections] + list(fields)
    changed = [f"{k} (saved {before[k]!r}, now {now[k]!r})" for k in keys if before[k] != now[k]]
    if changed:
        raise ConfigError(f"--resume: {'; '.join(changed)}: cannot change in the middle of the run in {out}; "
                          "start a new run (another --out, or --overwrite) to change it")


def _resume_schedule(optimizer, scheduler, model, config: RunConfig, saved: RunConfig, step: int,
                     schedule_steps: int) -> str:
    """Apply the resumed config's peak lr, warm-up and weight decay from the next step (loading
    the optimizer restored the saved ones) and say what the schedule does from here.

    The schedule keeps the length the run started with, so extending train.steps never makes the
    rate jump: the added steps hold the final rate (peak/10 after a cosine or a decay, the peak for
    a constant rate). A new peak rescales the rate at once.
    """
    tc = config.train
    for group, fresh in zip(optimizer.param_groups, parameter_groups(model, tc, config.think.step_size_lr_mult)):
        group["initial_lr"], group["weight_decay"] = fresh["lr"], fresh["weight_decay"]
        group["lr"] = fresh["lr"] * lr_factor(step, schedule_steps, tc.warmup_fraction, tc.lr_schedule,
                                              tc.decay_fraction)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    warmup = f"lr schedule: warm-up over {int(schedule_steps * tc.warmup_fraction)} steps, then "
    line = warmup + {
        "cosine": f"cosine to train.lr/10 at step {schedule_steps} (the run's original length)",
        "wsd": f"train.lr until the decay to train.lr/10 over the last {max(1, int(schedule_steps * tc.decay_fraction))} "
               f"steps of the run's original length ({schedule_steps})",
        "constant": "train.lr"}[tc.lr_schedule]
    if tc.steps > schedule_steps and tc.lr_schedule != "constant":
        line += f", then held at train.lr/10 for steps {schedule_steps + 1}–{tc.steps}"
    elif tc.steps < schedule_steps and tc.lr_schedule != "constant":
        line += f"; the run now stops at step {tc.steps}, before the decay ends"
    if tc.lr != saved.train.lr:
        line += f"; peak lr changed from {saved.train.lr:g} to {tc.lr:g}"
    if step < tc.steps:
        line += f"; step {step + 1} runs at lr {optimizer.param_groups[0]['lr']:.4g}"
    return line


def _agree(finite: torch.Tensor, signum: int, dist: distributed.Distributed) -> tuple[bool, int]:
    """Whether this step's loss and gradient norm are finite, and the stop signal if one came:
    one device sync per step, and under DDP one all-reduce, so every rank stops at the same step."""
    if not dist.enabled:
        return bool(finite), signum
    flags = torch.stack(((~finite).long(), torch.tensor(signum, device=finite.device)))
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, signum = flags.tolist()
    return not bad, signum


class _Replaced:
    """--overwrite: the old run's files, set aside in OUT/.replaced when the new run starts and
    deleted once it has written its first checkpoint. If the new run stops before that (an error,
    divergence, a crash of the command), `restore` removes its files and puts the old run back."""

    ASIDE = ".replaced"

    def __init__(self) -> None:
        self.out: Path | None = None

    def set_aside(self, out: Path, files: list[Path]) -> None:
        if not files:
            return
        aside = out / self.ASIDE
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for path in files:
            os.replace(path, aside / path.name)
        self.out = out

    def drop(self) -> None:
        if self.out is not None:
            shutil.rmtree(self.out / self.ASIDE, ignore_errors=True)
            self.out = None

    def restore(self) -> None:
        if self.out is None:
            return
        aside = self.out / self.ASIDE
        for name in RUN_FILES:
            if (self.out / name).is_dir():
                shutil.rmtree(self.out / name)
            else:
                (self.out / name).unlink(missing_ok=True)
        for path in aside.iterdir():
            os.replace(path, self.out / path.name)
        aside.rmdir()
        self.out = None


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM set a flag the training loop reads after each step, which then
    saves a checkpoint and raises Interrupted; a second signal stops at once (KeyboardInterrupt).

    Handlers can only be set in the main thread; elsewhere signals keep their usual effect. Under
    torchrun every rank gets the signal and the ranks agree on it each step (`_agree`).
    """

    def __init__(self) -> None:
        self.signum, self.previous = 0, {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum


def _keep_metrics_until(path: Path, step: int) -> None:
    """--resume: drop the rows of steps after the checkpoint (lost when the run stopped) and a last
    line a crash cut short, so the log reads as one run."""
    if not path.is_file():
        return
    text = path.read_text()
    kept = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(standard_json(row) + "\n")
    if "".join(kept) != text:
        atomic_write(path, lambda p: p.write_text("".join(kept)))


class _MetricsLog:
    """metrics.jsonl, written by the main process only, and the experiment tracker fed the same rows."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.tracker = path, enabled, Tracker()

    def write(self, row: dict) -> None:
        if self.enabled:
            line = standard_json(row) + "\n"  # one write per row: a crash cuts at most the last line short
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
            self.tracker.log(row, row["step"])

    def close(self, exit_code: int = 0) -> None:
        """Close the tracker (once: later calls do nothing)."""
        tracker, self.tracker = self.tracker, Tracker()
        tracker.close(exit_code)
