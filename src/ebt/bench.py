"""Speed, measured side by side in one run (never asserted in tests).

`ebt bench [--size tiny] [--json]` times training steps of the EBT (System 1) and the
Transformer++ of the same size on the same random batches, alternating the two so that a noisy
shared machine slows both alike, and reports their ratio. Machine details go with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from ebt.models import build_model, count_parameters
from ebt.objectives import make_objective
from ebt.presets import preset
from ebt.train import BETAS, parameter_groups


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def train_step_times(size: str = "tiny", repeats: int = 20, warmup: int = 3, vocab_size: int = 256, seed: int = 0) -> dict:
    """Median seconds per optimizer step of each model kind at one size, and the EBT/Transformer++ ratio."""
    torch.manual_seed(seed)
    setups = {}
    for kind in ("ebt", "transformer"):
        config = preset(f"text-{kind}-{size}")
        config.model.vocab_size = vocab_size
        model = build_model(config)
        objective = make_objective(model)
        optimizer = torch.optim.AdamW(parameter_groups(model, config.train, config.think.step_size_lr_mult), betas=BETAS)
        setups[kind] = (config, model, objective, optimizer)
    config = setups["ebt"][0]
    b, s = config.train.batch_size, config.model.context_len
    times: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(warmup + repeats):
        batch = torch.randint(0, vocab_size, (b, s + 1))
        for kind, (_, model, objective, optimizer) in setups.items():
            start = time.perf_counter()
            loss, _ = objective(batch[:, :-1], batch[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if i >= warmup:
                times[kind].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": size,
        "batch_size": b,
        "context_len": s,
        "vocab_size": vocab_size,
        "ebt_think_steps": config.think.steps,
        "non_embedding_params": count_parameters(setups["ebt"][1]),
        "ebt_step_s": median["ebt"],
        "transformer_step_s": median["transformer"],
        "ebt_tokens_per_s": b * s / median["ebt"],
        "transformer_tokens_per_s": b * s / median["transformer"],
        "train_ratio": median["ebt"] / median["transformer"],
        "repeats": repeats,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebt bench", description=__doc__)
    parser.add_argument("--size", default="tiny", help="preset size: tiny, 4xs, 3xs, xxs, ...")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = train_step_times(args.size, args.repeats)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"training step, size {r['size']} (batch {r['batch_size']} × {r['context_len']} tokens, V = {r['vocab_size']}), "
              f"median of {r['repeats']}, on {r['machine']['processor']} with {r['machine']['torch_threads']} threads:")
        print(f"  EBT (S1, {r['ebt_think_steps']} steps)  {r['ebt_step_s'] * 1e3:8.1f} ms  {r['ebt_tokens_per_s']:9.0f} tokens/s")
        print(f"  Transformer++        {r['transformer_step_s'] * 1e3:8.1f} ms  {r['transformer_tokens_per_s']:9.0f} tokens/s")
        print(f"  train_ratio (EBT / Transformer++): {r['train_ratio']:.2f}")
    return 0
