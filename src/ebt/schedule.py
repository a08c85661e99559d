"""The optimizer's parameter groups and the schedules of a run (SPEC §3): AdamW β = (0.9, 0.999),
weight decay on matrices only, α in its own group at lr × multiplier; the learning rate's warm-up
and decay (`lr_factor`), and the steps that validate and save (`validation_steps`). Read by the
training loop (`ebt.train`) and `ebt bench`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ebt.config import RunConfig, TrainConfig

MIN_LR_RATIO = 0.1  # cosine decays to peak/10 (SPEC §3)
BETAS = (0.9, 0.999)


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


def lr_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's lr at its peak × `lr_factor` over a run of `total` optimizer steps."""
    factor = partial(lr_factor, total=total, warmup_fraction=tc.warmup_fraction, schedule=tc.lr_schedule,
                     decay_fraction=tc.decay_fraction)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_schedule(optimizer, scheduler, model, config: RunConfig, saved: RunConfig, step: int,
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
