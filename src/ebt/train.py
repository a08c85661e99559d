"""The training loop: one loop for every model kind and task, single-process or under torchrun.

Read it in order: `train` (the command's face) → `setup` (build everything from the config, in a
run directory claimed, started or resumed by `ebt.rundir`) → `fit` (the loop) over `train_step`
(one optimizer step, also what `ebt bench` times) → `validate` and `save_checkpoint`. The
optimizer's groups and the lr schedule (SPEC §3) are `ebt.schedule`'s.

It knows objectives, batches and a validation function, not text, images or frames: the task's
data (`ebt.rundata.load_data`) supplies batches, splits them into (x, targets), scores the model
and saves its own files with the run.

Outputs in the run directory: config.json, the task's files (text: tokenizer.json),
model.safetensors (or each process's shards: `ebt.sharded`) and train_state.pt (for --resume) at
every validation, at the end and on SIGINT/SIGTERM, all written atomically, and metrics.jsonl (one
JSON object per logged step and validation), whose rows also go to `train.log_to`'s tracker.

A resumed run continues exactly (weights, optimizer, schedule, RNGs, data sampler, replay buffer:
the parts of the training state, `ebt.train_state`); fields that shape the model or
the data cannot change on resume, the others (lr, steps, intervals, clipping, decay, warm-up,
device) apply from the next step. A non-finite loss, gradient norm, weight or validation loss
stops training before anything is saved (TrainingDiverged).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from tqdm import tqdm

from ebt import distributed, rundir, sharded, train_state
from ebt.checkpoint import save_checkpoint_files, save_run, validation_rows
from ebt.config import RunConfig, TrainConfig
from ebt.data.batches import Batch, TrainingBatches
from ebt.errors import CheckpointError, ConfigError, Interrupted, ThinkingDiverged, TrainingDiverged
from ebt.files import DirectoryLock
from ebt.models import build_model, count_parameters, set_activation_checkpointing
from ebt.objectives import ReplayBuffer, check_training_memory, make_objective
from ebt.parallel import Parallel, check as check_parallel, full_tensor, wrap
from ebt.precision import autocast, check_precision, grad_scaler
from ebt.rundata import load_data, resolve_source, with_data_overrides
from ebt.rundir import MetricsLog, Replaced, StopSignals, resume_command
from ebt.schedule import BETAS, lr_scheduler, parameter_groups, resume_schedule, validation_steps
from ebt.trackers import check as check_tracker, open_tracker

@dataclass
class StepResult:
    """What one optimizer step reports: the micro-batches' mean stats (detached 0-d tensors: "loss",
    and the objective's others), the gradient norm before clipping, the lr the step used, how many
    of the data's units (tokens, images, frames) this process's targets held, and the stop signal
    the processes agreed on (0: none)."""

    stats: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    lr: float
    seen: int
    signum: int = 0


def train_step(parallel: Parallel, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
               micro_batches: list[Batch], data, tc: TrainConfig, dist: distributed.Distributed | None = None,
               signum: int = 0) -> StepResult:
    """One optimizer step over this process's micro-batches of a global batch (`Batch`es of one
    size; the step's loss is their mean): each forward under autocast at tc.precision and its
    backward, gradients synchronized across processes on the last one (`parallel.sync`), the norm
    clipped to tc.grad_clip, then the optimizer step (fp16: through the loss scaler) and the
    scheduler's. `data` splits a batch into (x, targets) and counts the targets (`ebt.rundata`).

    Raises ThinkingDiverged from a forward, and TrainingDiverged when the loss or the gradient norm
    is not finite, checked before the update so the weights stay the last finite ones (under fp16
    a non-finite gradient is the loss scale overflowing: the scaler skips the step and lowers it).
    With `dist`, the processes agree on both and on `signum`, a stop signal, in one all-reduce.
    """
    device, parts = parallel.device, len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    finite, seen = torch.ones((), dtype=torch.bool, device=device), 0
    for i, batch in enumerate(micro_batches):
        x, targets = data.split(batch.data.to(device))
        with parallel.sync(last=i == parts - 1):
            with autocast(tc.precision, device):
                loss, stats = parallel.module(x, targets, batch.seeds.to(device))
            scaler.scale(loss / parts).backward()
        finite &= torch.isfinite(loss.detach())
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / parts
        seen += data.count(targets)
    parallel.after_backward()
    scaler.unscale_(optimizer)
    grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(parallel.model.parameters(), tc.grad_clip))
    finite, signum = distributed.agree(finite & (torch.isfinite(grad_norm) | scaler.is_enabled()), signum, dist)
    if not finite:
        raise TrainingDiverged(f"loss is {float(totals['loss']):.4g} (grad norm {float(grad_norm):.4g})")
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return StepResult(totals, grad_norm, lr, seen, signum)


@dataclass
class Training:
    """A run being trained, as `setup` built it: its config and directory, this process's part in
    it, the parts of the step, and where the loop is (`step`, and `saved_step`, the last checkpoint
    in `out`, named when training stops)."""

    config: RunConfig
    out: Path
    dist: distributed.Distributed
    device: torch.device
    data: Any  # the task's data (`ebt.rundata`)
    parallel: Parallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    batches: TrainingBatches
    replay: ReplayBuffer | None  # System 2's
    log: MetricsLog
    replaced: Replaced
    quiet: bool
    schedule_steps: int  # the length the lr schedule runs over: the run's original train.steps
    step: int = 0
    saved_step: int | None = None
    shards: sharded.ShardedCheckpoints | None = None  # train.checkpoint_format = "sharded"

    @property
    def model(self) -> nn.Module:
        return self.parallel.model


def train(config: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, given: Iterable[str] = ()) -> dict:
    """Train the model a RunConfig describes into run directory `out`.

    `out` must not hold another run unless `resume` (continue it; `config` may change only what
    can change mid-run) or `overwrite` (replace it: `ebt.rundir.Replaced`). Raises TrainingDiverged
    on a non-finite loss, gradient norm, weight or validation loss, and Interrupted on
    SIGINT/SIGTERM (after saving a checkpoint). `given`: the config keys set by hand (the command
    line's overrides); one that the data fixes to another value, or leaves unused, is a ConfigError.

    Returns the final validation (the task's metrics; text: {"loss", "ppl", "tokens",
    "forward_passes"}) on the main process, {} on the other ranks of a distributed run.
    """
    out = Path(out)
    dist = distributed.setup(config.train.device)
    lock = DirectoryLock(out, field="out")  # the main process is the directory's one writer, to the end
    stop, replaced, log = StopSignals(), Replaced(), MetricsLog(out, dist.is_main)
    try:
        if dist.is_main:
            lock.acquire()
        t = setup(config, out, resume, overwrite, quiet, dist, replaced, log, frozenset(given))
        try:
            result = fit(t, stop)
        except OSError as e:  # a full disk, a lost mount: the file, the cause and where the run can go on from
            raise CheckpointError(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''} while training at "
                                  f"step {t.step}; {_last_checkpoint(t)}") from None
        finally:  # a sharded checkpoint still being written in the background is waited for and committed
            if t.shards is not None:
                t.shards.close()
        log.close()
        return result
    except BaseException as e:
        log.close(getattr(e, "exit_code", 1))  # flushed, and done with its files before the old run comes back
        replaced.restore()  # the new run wrote no checkpoint: the run it was to replace comes back
        raise
    finally:
        stop.restore()
        lock.release()
        distributed.teardown(dist)


def setup(config: RunConfig, out: Path, resume: bool, overwrite: bool, quiet: bool, dist: distributed.Distributed,
          replaced: Replaced, log: MetricsLog, given: frozenset[str] = frozenset()) -> Training:
    """Everything training needs: the run directory claimed (`ebt.rundir`), the config completed
    by the data and checked against a resumed run's, this process's device, the model (with its
    saved or initial weights), optimizer, schedule, loss scaler and batches, the training state
    restored on resume; a new run's files and tracker started."""
    say = print if dist.is_main and not quiet else _silent
    check_tracker(config.train.log_to)  # a tracker's missing package stops the run before it writes anything
    # The main process (holding the lock) checks the directory and repairs it; the others wait (_device).
    old_run = rundir.claim(out, resume, overwrite, say) if dist.is_main else []
    device, why = _device(config, dist)
    # A corpus path, relative to where the command runs, is saved absolute (and compared so on resume).
    config = config.override("data.corpus", resolve_source(config.data.corpus))
    if config.train.init and not resume:
        config = rundir.resolve_init(config, out)
    saved = rundir.check_resumable(out, config) if resume else None
    torch.manual_seed(config.train.seed)
    data = load_data(config, out if resume else None)  # a resumed run keeps its tokenizer
    config = with_data_overrides(config, data, given)
    if resume:  # after the data's overrides: text.vocab_size, video.latent_dim, image.channels come from the data
        rundir.refuse_fixed_changes(saved, config, out, ("model", "think", config.model.task))
    tc = config.train
    check_training_memory(config, device, dist.world_size)  # before anything of the model is allocated
    model = build_model(config).to(device)
    say(_describe(config, model, data, device, why, dist))
    set_activation_checkpointing(model, tc.activation_checkpointing)
    state = train_state.load_checkpoint(out, model, device) if resume else None  # into the plain model (full format)
    if tc.init and not resume:
        say(f"initial weights: {rundir.load_initial_weights(model, config, Path(tc.init))}")
    objective = make_objective(model)
    parallel = wrap(objective, model, tc.parallel, dist, device, tc.activation_checkpointing)
    optimizer = torch.optim.AdamW(parameter_groups(model, tc, config.think.step_size_lr_mult), betas=BETAS)
    # The schedule runs over the length the run started with; a resumed run that extends
    # train.steps holds the final rate after it (see resume_schedule).
    schedule_steps = int(state.get("schedule_steps", saved.train.steps)) if resume else tc.steps
    t = Training(config, out, dist, device, data, parallel, optimizer, lr_scheduler(optimizer, tc, schedule_steps),
                 grad_scaler(tc.precision, device),  # fp16: dynamic loss scaling; otherwise it does nothing
                 data.training_batches(tc.batch_size, tc.seed, dist.rank, dist.world_size, tc.grad_accum),
                 getattr(objective, "replay", None), log, replaced, quiet, schedule_steps,
                 shards=sharded.ShardedCheckpoints(out, dist, device, tc.async_checkpoint)
                 if tc.checkpoint_format == "sharded" else None)
    if resume:
        _resume(t, state, saved, say)
    else:
        _start(t, old_run)
    return t


def _silent(*args) -> None:
    pass


def _device(config: RunConfig, dist: distributed.Distributed) -> tuple[torch.device, str]:
    """This process's device and why it was picked, checked against train.parallel and
    train.precision; under torchrun every process waits here until the main one has claimed --out."""
    device, why = distributed.pick_device(config.train.device, dist)
    check_parallel(config.train.parallel, dist)
    check_precision(config.train.precision, device)
    distributed.barrier(dist, device)  # the main rank has claimed (and repaired) `out` before the others read it
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference trained fp32 with TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    return device, why


def _describe(config: RunConfig, model: nn.Module, data, device: torch.device, why: str,
              dist: distributed.Distributed) -> str:
    tc = config.train
    return (f"device: {device} ({why}); processes: {dist.world_size}"
            + (f" ({tc.parallel}); {tc.batch_size // dist.world_size} sequences each" if dist.enabled else "")
            + (f" in {tc.grad_accum} micro-batches" if tc.grad_accum > 1 else "") + f"; precision: {tc.precision}\n"
            f"config:\n{config.to_json()}\n"
            f"model: {config.model.kind}, {count_parameters(model) / 1e6:.2f}M non-embedding parameters "
            f"({count_parameters(model, embeddings=True) / 1e6:.2f}M in all); data: {data.summary}")


def _start(t: Training, old_run: list[Path]) -> None:
    """A new run: its directory, the old run set aside (--overwrite: kept until the new run's first
    checkpoint), its tracker, config and data files."""
    t.out.mkdir(parents=True, exist_ok=True)
    if t.dist.is_main:
        t.replaced.set_aside(t.out, old_run)
        # The tracker before the run's files: one that cannot start (W&B without a login) leaves none.
        t.log.tracker = open_tracker(t.config.train.log_to, t.out, t.config, t.step)
        save_run(t.out, t.config, t.data)


def _resume(t: Training, state: dict, saved: RunConfig, say) -> None:
    """--resume: the training state restored, the schedule and the log continued from its step."""
    if state["optimizer"] is None:  # a sharded checkpoint: its shards, resharded to these processes
        sharded.load_training(t.out, int(state["step"]), t.model, t.optimizer, t.dist)
    train_state.restore(_state_parts(t), state, t.out)
    t.step = t.saved_step = int(state["step"])
    tc = t.config.train
    if tc.steps < t.step:
        raise ConfigError(f"train.steps = {tc.steps} is below the step the run in {t.out} has reached ({t.step}); "
                          f"give at least {t.step}")
    schedule_line = resume_schedule(t.optimizer, t.scheduler, t.model, t.config, saved, t.step, t.schedule_steps)
    say(f"resumed from step {t.step}; {schedule_line}")
    t.log.keep_until(t.step)
    if t.dist.is_main:
        t.log.tracker = open_tracker(tc.log_to, t.out, t.config, t.step)


# --- The loop ------------------------------------------------------------------------------------


def fit(t: Training, stop: StopSignals) -> dict:
    """Train from t.step to train.steps: a row in the log every train.log_every steps, a validation
    and a checkpoint at each of `validation_steps`, a checkpoint and Interrupted on a stop signal.
    Returns the last validation (the main process's; {} on the others)."""
    tc = t.config.train
    bar = tqdm(total=tc.steps, initial=t.step, disable=t.quiet or not t.dist.is_main, dynamic_ncols=True, desc="train")
    clock, result, validated = _Clock(), {}, False  # validated: on every process (only the main one has a result)
    validate_at = validation_steps(tc)
    t.model.train()
    stop.install()
    while t.step < tc.steps:
        try:
            done = train_step(t.parallel, t.optimizer, t.scheduler, t.scaler, next(t.batches), t.data, tc, t.dist,
                              stop.signum)
        except (ThinkingDiverged, TrainingDiverged) as e:
            raise _diverged(t, t.step + 1, str(e)) from None
        t.step += 1
        clock.seen += done.seen * t.dist.world_size
        if t.step % tc.log_every == 0 or t.step == tc.steps:
            _log_step(t, done, clock, bar)
        bar.update(1)
        if t.step in validate_at:
            result, validated = _validate_and_save(t, clock, bar), True
        signum = done.signum if t.dist.enabled else stop.signum  # one process: a signal during the rest of the step counts now
        if signum and t.step < tc.steps:
            if t.saved_step != t.step:
                save_checkpoint(t)
            bar.close()
            raise Interrupted(f"interrupted at step {t.step} ({signal.Signals(signum).name}); checkpoint saved; "
                              f"resume with: {resume_command(t.out, t.dist)}", 128 + signum)
    bar.close()
    if not validated:  # resumed a finished run: the loop had nothing to do
        weights = t.parallel.full_state_dict()
        if t.dist.is_main:
            result = validate(t, weights)
            if t.step not in validation_rows(t.out):  # e.g. metrics.jsonl was lost: the log gets its row back
                t.log.write({"step": t.step, "split": "validation", **result})
            result = _scalars(result)
    return result


class _Clock:
    """Training speed, and the seconds spent training (not validating) and in all: the cost of each
    point of a scaling curve."""

    def __init__(self) -> None:
        self.started = self.tick = self.since_validation = time.perf_counter()
        self.seen, self.trained_s = 0, 0.0  # seen: the data's units since the last row, all processes

    def rate(self) -> float:
        """Units per second since the last call (or validation)."""
        rate = self.seen / (time.perf_counter() - self.tick)
        self.tick, self.seen = time.perf_counter(), 0
        return rate

    def stop_training(self) -> None:
        self.trained_s += time.perf_counter() - self.since_validation

    def restart(self) -> None:  # validation time is not training speed
        self.tick, self.since_validation, self.seen = time.perf_counter(), time.perf_counter(), 0


def _log_step(t: Training, done: StepResult, clock: _Clock, bar: tqdm) -> None:
    speed = f"{t.data.unit}_per_s"  # text: tokens_per_s
    row = {k: float(v) for k, v in done.stats.items()}
    row.update(step=t.step, split="train", **t.model.task.loss_metrics(row["loss"]), grad_norm=float(done.grad_norm),
               lr=done.lr, **{speed: clock.rate()})
    t.log.write(row)
    bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "ppl", "energy_gap", speed) if k in row})


def _validate_and_save(t: Training, clock: _Clock, bar: tqdm) -> dict:
    """A validation step: score the weights (main process) and save a checkpoint (every process).
    A non-finite validation loss stops every process with the same TrainingDiverged."""
    clock.stop_training()
    weights = t.parallel.full_state_dict()  # every process: a collective under FSDP2
    result = {}
    if t.dist.is_main:
        result = validate(t, weights)
        # Per-example losses (text: window_losses) go to the log only: a scaling fit's bootstrap.
        t.log.write({"step": t.step, "split": "validation", **result, "train_s": clock.trained_s,
                     "wall_s": time.perf_counter() - clock.started})
        result = _scalars(result)
    loss = distributed.from_main(result.get("loss", 0.0), t.dist, t.device)  # every rank stops with the main one
    if not math.isfinite(loss):
        raise _diverged(t, t.step, f"the validation loss is {loss:.4g}")
    if t.dist.is_main and not t.quiet:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        bar.write(f"step {t.step}: validation {shown}")
    save_checkpoint(t, weights, kept=t.config.train.keep_checkpoints)
    clock.restart()
    return result


def _scalars(result: dict) -> dict:
    return {k: v for k, v in result.items() if not isinstance(v, list)}


def validate(t: Training, weights: dict[str, torch.Tensor]) -> dict:
    """The task's validation of the trained model (`data.validate`: at least "loss"), on the main
    process, at train.precision. `weights` are the model's full weights (`Parallel.full_state_dict`)."""
    model, tc = t.model, t.config.train
    if tc.parallel == "fsdp" and t.dist.enabled:
        # Under FSDP2 the weights are sharded: the main process validates a whole copy, built for
        # the validation only (held, it would cost a model's memory all run), without drawing from
        # torch's generator, which must stay in step on every process (System 2's step count).
        with torch.random.fork_rng(devices=[]):
            model = build_model(t.config).to(t.device)
        model.load_state_dict(weights)
    with autocast(tc.precision, t.device):
        return t.data.validate(model, batch_size=tc.batch_size, max_examples=tc.eval_examples, device=t.device)


def _diverged(t: Training, at: int, what: str) -> TrainingDiverged:
    tc = t.config.train
    resume = f"{resume_command(t.out, t.dist)} --train.lr={tc.lr / 10:g}"  # the value needs no quoting
    kept = (f"the last good checkpoint (step {t.saved_step}) is kept in {t.out}" if t.saved_step is not None
            else "no checkpoint was written; the run it was to replace is put back" if t.replaced.out is not None
            else "no checkpoint was written (start again with --overwrite)")
    fix = f"lower train.lr (now {tc.lr:g}) or train.grad_clip (now {tc.grad_clip:g})"
    return TrainingDiverged(f"step {at}: {what}; {kept}; {fix}" + (f" and resume from it, e.g. {resume}"
                                                                    if t.saved_step is not None else ""))


# --- Checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(t: Training, weights: dict[str, torch.Tensor] | None = None, kept: bool = False) -> None:
    """Save the weights (`weights`, full tensors, or gathered here: a collective under FSDP2; a
    sharded checkpoint writes each process's shards instead), the training state at t.step and the
    config they were trained under, as one unit (`save_checkpoint_files`, `ebt.sharded`); `kept`:
    also keep these weights (train.keep_checkpoints). TrainingDiverged if a weight is not finite;
    CheckpointError naming the cause and the last complete checkpoint if the save fails."""
    if t.shards is None and weights is None:
        weights = t.parallel.full_state_dict()
    if not sharded.finite(t.model, t.dist, t.device):  # each process its own shards
        raise _diverged(t, t.step, "a weight is not finite")
    parts = {**_state_parts(t), **({"optimizer": None} if t.shards is not None else {})}  # sharded: in the shards
    state = train_state.state_dict(parts, step=t.step, schedule_steps=t.schedule_steps)
    try:
        if t.shards is not None:
            t.shards.save(t.step, t.model, t.optimizer, state, t.config, kept, on_commit=t.replaced.drop)
        elif t.dist.is_main:
            save_checkpoint_files(t.out, t.step, weights, state, t.config, keep=kept)  # with --resume's overrides
            sharded.remove_stale(t.out, None)  # a sharded checkpoint before is older
            t.replaced.drop()
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {_last_checkpoint(t)}") from None
    t.saved_step = t.step


def _last_checkpoint(t: Training) -> str:
    """Where the run can go on from, in words, when it stops (an error, a failed save)."""
    if t.saved_step is None:
        return "the run has no complete checkpoint yet" + (
            " (the run it replaced is put back)" if t.replaced.out is not None else "")
    return (f"the last complete checkpoint, step {t.saved_step}, is in place: resume with "
            f"{resume_command(t.out, t.dist)}")


def _state_parts(t: Training) -> dict[str, Any]:
    """The parts of the training state (`ebt.train_state`) by key; None where this run has none."""
    return {"optimizer": t.parallel.optimizer_state(t.optimizer), "scheduler": t.scheduler, "batches": t.batches,
            "replay": t.replay, "scaler": t.scaler if t.scaler.is_enabled() else None,
            "torch_rng": train_state.Generator(), "cuda_rng": train_state.Generator(cuda=True)
            if t.device.type == "cuda" else None}
