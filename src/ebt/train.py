"""The training loop: one loop for every model kind and task, single-process or under torchrun.

It knows objectives, batches and a validation function, not text, images or frames: the task's
data (`ebt.rundata.load_data`) supplies batches, splits them into (x, targets), scores the model
and saves its own files with the run. SPEC §3: AdamW
β = (0.9, 0.999), linear warm-up then cosine to peak/10 over the run's own length, grad-norm
clipping, α in its own parameter group (no weight decay, lr × multiplier).

Outputs in the run directory: config.json, the task's files (text: tokenizer.json),
model.safetensors and train_state.pt (for --resume) at every validation and at the end, all
written atomically, and metrics.jsonl (one JSON object per logged step and per validation).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ebt import distributed
from ebt.checkpoint import TRAIN_STATE, WEIGHTS, load_config, save_run, save_weights
from ebt.config import RunConfig, TrainConfig
from ebt.errors import CheckpointError
from ebt.models import build_model, count_parameters
from ebt.objectives import make_objective
from ebt.rundata import load_data

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


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Multiplier of each group's peak lr for optimizer step `step` (0-based) of `total`:
    linear warm-up to 1 at step warmup−1, then cosine down to MIN_LR_RATIO at the last step."""
    warmup = int(total * warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def train(config: RunConfig, out: str | Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train the model a RunConfig describes into run directory `out`.

    Returns the final validation (the task's metrics; text: {"loss", "ppl", "tokens",
    "forward_passes"}) on the main process, {} on the other ranks of a distributed run.
    """
    out = Path(out)
    dist = distributed.setup(config.train.device)
    try:
        return _train(config, out, resume, quiet, dist)
    finally:
        distributed.teardown(dist)


def _train(config: RunConfig, out: Path, resume: bool, quiet: bool, dist: distributed.Distributed) -> dict:
    say = (lambda *a: None) if (quiet or not dist.is_main) else print
    if resume:
        for name in (WEIGHTS, TRAIN_STATE):
            if not (out / name).is_file():
                raise CheckpointError(f"--resume: {out} has no {name} to resume from")
    device, why = distributed.pick_device(config.train.device, dist)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference trained fp32 with TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.train.seed)

    data = load_data(config, out if resume else None)  # a resumed run keeps its tokenizer
    for key, value in data.overrides.items():
        config = config.override(key, value)
    if resume:
        saved = load_config(out)
        if (saved.model, saved.think) != (config.model, config.think):
            raise CheckpointError(f"--resume: the model or think config differs from the one saved in {out}/config.json")
    model = build_model(config).to(device)
    say(f"device: {device} ({why}); processes: {dist.world_size}")
    say(f"config:\n{config.to_json()}")
    say(
        f"model: {config.model.kind}, {count_parameters(model) / 1e6:.2f}M non-embedding parameters "
        f"({count_parameters(model, embeddings=True) / 1e6:.2f}M in all); "
        f"data: {data.summary}"
    )

    objective = make_objective(model)
    tc = config.train
    optimizer = torch.optim.AdamW(parameter_groups(model, tc, config.think.step_size_lr_mult), betas=BETAS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.steps, tc.warmup_fraction))
    batches = data.training_batches(tc.batch_size, tc.seed, dist.rank, dist.world_size)
    step = 0
    if resume:
        step = _load_train_state(out, model, optimizer, scheduler, batches, device)
        say(f"resumed from step {step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        if dist.is_main:
            save_run(out, config, data)
            (out / "metrics.jsonl").unlink(missing_ok=True)
    trained = DistributedDataParallel(objective) if dist.enabled else objective

    def validate() -> dict:
        return data.validate(model, batch_size=tc.batch_size, max_examples=tc.eval_examples, device=device)

    def checkpoint() -> None:
        if dist.is_main:
            save_weights(out, model, step, {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "batches": batches.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            })

    log = _MetricsLog(out / "metrics.jsonl", dist.is_main)
    bar = tqdm(total=tc.steps, initial=step, disable=quiet or not dist.is_main, dynamic_ncols=True, desc="train")
    result: dict = {}
    tick, seen_since_tick = time.perf_counter(), 0
    speed = f"{data.unit}_per_s"  # text: tokens_per_s
    model.train()
    while step < tc.steps:
        x, targets = data.split(next(batches).to(device))
        loss, stats = trained(x, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()
        step, seen_since_tick = step + 1, seen_since_tick + data.count(targets) * dist.world_size
        if step % tc.log_every == 0 or step == tc.steps:
            elapsed = time.perf_counter() - tick
            row = {k: float(v) for k, v in stats.items()}
            row.update(step=step, split="train", **model.task.loss_metrics(row["loss"]), grad_norm=float(grad_norm),
                       lr=lr, **{speed: seen_since_tick / elapsed})
            tick, seen_since_tick = time.perf_counter(), 0
            log.write(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "ppl", "energy_gap", speed) if k in row})
        bar.update(1)
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            if dist.is_main:
                result = validate()
                log.write({"step": step, "split": "validation", **result})
                if not quiet:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
                    bar.write(f"step {step}: validation {shown}")
            checkpoint()
            tick, seen_since_tick = time.perf_counter(), 0  # validation time is not training speed
    bar.close()
    if dist.is_main and not result:  # resumed a finished run: the loop had nothing to do
        result = validate()
    return result


def _load_train_state(out: Path, model, optimizer, scheduler, batches, device) -> int:
    try:
        state = torch.load(out / TRAIN_STATE, map_location="cpu", weights_only=False)
        weights = load_file(str(out / WEIGHTS), device=str(device))
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["batches"])
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {out}: {e}") from None
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


class _MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
