"""Save time and memory of a training checkpoint: full state (gathered on rank 0) against sharded
(torch.distributed.checkpoint, each rank its own shards; `ebt.sharded`), side by side in one run.

Builds the trainer's own pieces (the model of a preset, FSDP2 or DDP over the torchrun processes,
AdamW over `ebt.schedule.parameter_groups`, one optimizer step so that its state exists) and then
saves, alternating, with the trainer's two paths:

  full      `Parallel.full_state_dict()` and the full optimizer state (every tensor gathered on
            rank 0), then `ebt.checkpoint.save_checkpoint_files` on rank 0: what train.py runs
  sharded   `ebt.sharded.ShardedCheckpoints.save` (every rank writes its shards, rank 0 commits)
  async     the same with async_save: `blocking` is the time until save returns (training goes
            on), `seconds` until the background write is committed (`wait`)

For each: `seconds`, from a barrier before the save to a barrier after it (until every rank can
train on); `peak_mib`, each rank's resident memory above what it held before the save (a thread
samples /proc/self/statm every millisecond); `bytes` on disk. Run with MALLOC_MMAP_THRESHOLD_=65536
so that freed blocks go back to the system between saves (see docs/results.md, "glibc and FSDP2").

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 PYTHONPATH=src torchrun --standalone \\
        --nproc_per_node 2 benchmarks/checkpoint_save.py --out /tmp/ckpt --dim 1536 --layers 4 --repeats 2

Rank 0 prints a markdown table and writes OUT/checkpoint_save.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

from ebt import distributed, train_state
from ebt.checkpoint import save_checkpoint_files
from ebt.models import build_model, count_parameters
from ebt.objectives import make_objective
from ebt.parallel import wrap
from ebt.presets import preset
from ebt.schedule import BETAS, parameter_groups
from ebt.sharded import ShardedCheckpoints

MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Peak:
    """The most resident memory seen while the block runs, sampled every millisecond."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def build(args, dist: distributed.Distributed):
    config = preset(args.preset)
    config = config.with_overrides([("model.dim", str(args.dim)), ("model.n_layers", str(args.layers)),
                                    ("train.parallel", args.parallel), ("train.device", "cpu")])
    config.text.vocab_size = 256
    torch.manual_seed(0)
    model = build_model(config)
    parallel = wrap(make_objective(model), model, args.parallel, dist, torch.device("cpu"))
    optimizer = torch.optim.AdamW(parameter_groups(model, config.train, config.think.step_size_lr_mult), betas=BETAS)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's state: two moments per parameter
    optimizer.zero_grad(set_to_none=True)
    return config, model, parallel, optimizer


def parts(parallel, optimizer, sharded: bool) -> dict:
    found = {k: None for k in train_state.TRAIN_STATE_KEYS if k not in train_state.NUMBERS}
    found["optimizer"] = None if sharded else parallel.optimizer_state(optimizer)
    found["torch_rng"] = train_state.Generator()
    return found


def save_full(out: Path, step: int, config, parallel, optimizer, dist) -> None:
    weights = parallel.full_state_dict()  # every rank: a collective under FSDP2
    state = train_state.state_dict(parts(parallel, optimizer, False), step=step, schedule_steps=step)
    if dist.is_main:
        save_checkpoint_files(out, step, weights, state, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="text-ebt-3xs")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--parallel", default="fsdp", choices=("fsdp", "ddp"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    dist = distributed.setup("cpu")
    device = torch.device("cpu")
    config, model, parallel, optimizer = build(args, dist)
    if dist.is_main:
        shutil.rmtree(args.out, ignore_errors=True)
        for kind in ("full", "sharded", "async"):
            (args.out / kind).mkdir(parents=True)
    distributed.barrier(dist, device)
    savers = {kind: ShardedCheckpoints(args.out / kind, dist, device, background=kind == "async")
              for kind in ("sharded", "async")}
    rows = []
    for repeat in range(args.repeats):
        for kind in ("full", "sharded", "async"):
            step = repeat + 1
            distributed.barrier(dist, device)
            with Peak() as peak:
                start = time.perf_counter()
                if kind == "full":
                    save_full(args.out / kind, step, config, parallel, optimizer, dist)
                else:
                    state = train_state.state_dict(parts(parallel, optimizer, True), step=step, schedule_steps=step)
                    savers[kind].save(step, model, optimizer, state, config)
                blocking = time.perf_counter() - start
                distributed.barrier(dist, device)
                savers[kind].wait() if kind != "full" else None
                distributed.barrier(dist, device)
                seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (args.out / kind).rglob("*") if p.is_file())
            rows.append({"kind": kind, "repeat": repeat, "rank": dist.rank, "seconds": seconds,
                         "blocking": blocking if kind == "async" else seconds,
                         "peak_mib": (peak.peak - peak.base) / MIB, "rss_before_mib": peak.base / MIB,
                         "bytes": size})
    for saver in savers.values():
        saver.close()
    gathered = [None] * dist.world_size
    if dist.enabled:
        torch_dist.all_gather_object(gathered, rows)
    else:
        gathered = [rows]
    if dist.is_main:
        params = count_parameters(model, embeddings=True)
        report = {"preset": args.preset, "dim": args.dim, "layers": args.layers, "parallel": args.parallel,
                  "processes": dist.world_size, "parameters": params, "torch": torch.__version__,
                  "rows": [r for ranks in gathered for r in ranks]}
        (args.out / "checkpoint_save.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"{args.preset} dim {args.dim}, {args.layers} blocks: {params / 1e6:.1f}M parameters "
              f"({params * 4 / MIB:.0f} MiB fp32), {args.parallel}, {dist.world_size} processes, torch {torch.__version__}")
        print("| save | repeat | seconds (every rank can go on) | blocking | rank 0 peak above before | "
              "rank 1 peak above before | on disk |\n|---|---|---|---|---|---|---|")
        by = {(r["kind"], r["repeat"], r["rank"]): r for r in report["rows"]}
        for repeat in range(args.repeats):
            for kind in ("full", "sharded", "async"):
                r0, r1 = by[(kind, repeat, 0)], by.get((kind, repeat, 1), by[(kind, repeat, 0)])
                print(f"| {kind} | {repeat + 1} | {max(r0['seconds'], r1['seconds']):.2f} s | "
                      f"{max(r0['blocking'], r1['blocking']):.2f} s | {r0['peak_mib']:.0f} MiB | {r1['peak_mib']:.0f} MiB | "
                      f"{r0['bytes'] / MIB:.0f} MiB |")
    distributed.teardown(dist)


if __name__ == "__main__":
    main()
