"""Memory per process of a training run: one process, DDP or FSDP2 (`train.parallel`).

Runs the trainer itself (`ebt train`, unchanged) and watches it from outside: the optimizer is
AdamW with a `step` that counts tensors, and the end of each step's backward is observed before
`Parallel.after_backward` (where FSDP2 reshards). Each process writes OUT/memory-rank{R}.json:

  params_mib           the parameters the process holds between steps (FSDP2: its shards,
                       `DTensor.to_local()`; DDP and one process: whole tensors)
  params_in_step_mib   the parameters as the process holds them at the end of the step's backward
                       (FSDP2 with second-order training: gathered whole, module docstring of
                       `ebt.parallel`), counted once per storage
  grads_mib            gradients at the optimizer step (local shards)
  optimizer_mib        AdamW state, exp_avg and exp_avg_sq (local shards)
  state_in_step_mib    all of these held at once at the end of the step's backward: parameters
                       (shards and gathered copies), gradients, AdamW state (of the step before)
  rss_start_mib        resident memory when the optimizer is built (imports, data, model)
  rss_in_step_mib      resident memory at the end of a step's backward (the most over the steps)
  peak_rss_mib         ru_maxrss after the last optimizer step (before the final validation)

    torchrun --nproc_per_node 2 benchmarks/parallel_memory.py --preset text-ebt-3xs --out DIR \\
        --train.parallel=fsdp [ebt train options]
    python benchmarks/parallel_memory.py --preset text-ebt-3xs --out DIR [...]   # one process
    python benchmarks/parallel_memory.py --table DIR [DIR ...]                   # markdown table

`--fsdp-one-unit` (first argument) shards the objective as one FSDP2 unit even without activation
checkpointing (the layout `ebt.parallel.FSDP` uses with it), to measure what the layout costs.

Needs PYTHONPATH=src (or the package installed). DDP's gradient buckets (a second copy of the
gradients, kept by the reducer) are not tensors the model holds: they show in the RSS only.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

MIB = 2**20


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if type(t).__name__ == "DTensor" else t


def _storages(tensors) -> dict[int, int]:
    """Bytes of the distinct storages behind `tensors`, by data pointer (views of one count once)."""
    sizes = {}
    for t in tensors:
        if t is not None:
            storage = _local(t).untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
    return sizes


def _mib(tensors) -> float:
    return sum(_storages(tensors).values()) / MIB


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """AdamW's exp_avg and exp_avg_sq (its step counters are scalars)."""
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]


def watch(report: dict) -> None:
    """Install the observers: AdamW's step and the end of each step's backward."""
    import ebt.parallel

    optimizers = []

    class WatchedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)
            report["rss_start_mib"] = _rss_mib()

        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            grads_mib = _mib(p.grad for p in params)
            loss = super().step(closure)
            report.update(steps=report.get("steps", 0) + 1, params_mib=_mib(params), grads_mib=grads_mib,
                          optimizer_mib=_mib(_state(self)), peak_rss_mib=_peak_rss_mib())
            return loss

    torch.optim.AdamW = WatchedAdamW  # ebt.train builds `torch.optim.AdamW(...)`

    for cls in (ebt.parallel.Parallel, ebt.parallel.FSDP):
        original = cls.after_backward

        def after_backward(self, original=original):
            gathered = list(self.model.parameters())
            report["params_in_step_mib"] = _mib(gathered)
            report["rss_in_step_mib"] = max(report.get("rss_in_step_mib", 0.0), _rss_mib())
            if optimizers:  # everything alive now, each storage once
                params = [p for group in optimizers[0].param_groups for p in group["params"]]
                report["state_in_step_mib"] = _mib(gathered + params + [p.grad for p in gathered + params]
                                                   + _state(optimizers[0]))
            original(self)

        cls.after_backward = after_backward


def table(dirs: list[str]) -> None:
    print("| run | processes | parameters between steps | parameters in the step | gradients | AdamW state "
          "| all of these in the step | RSS at start | RSS after backward | peak RSS |")
    print("|---" * 10 + "|")
    for d in dirs:
        for path in sorted(Path(d).glob("memory-rank*.json")):
            r = json.loads(path.read_text())
            print(f"| {Path(d).name} rank {r['rank']} | {r['world_size']} ({r['parallel']}) "
                  f"| {r['params_mib']:.0f} MiB | {r['params_in_step_mib']:.0f} MiB | {r['grads_mib']:.0f} MiB | {r['optimizer_mib']:.0f} MiB "
                  f"| {r['state_in_step_mib']:.0f} MiB | {r['rss_start_mib']:.0f} MiB | {r['rss_in_step_mib']:.0f} MiB "
                  f"| {r['peak_rss_mib']:.0f} MiB |")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        table(argv[1:])
        return 0
    from ebt.cli import main as ebt_main

    if argv[:1] == ["--fsdp-one-unit"]:
        import ebt.parallel

        argv, init = argv[1:], ebt.parallel.FSDP.__init__
        ebt.parallel.FSDP.__init__ = lambda self, *args, one_unit=False: init(self, *args, one_unit=True)
    out = Path(argv[argv.index("--out") + 1])
    parallel = next((a.split("=", 1)[1] for a in argv if a.startswith("--train.parallel=")), "ddp")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    report = {"rank": rank, "world_size": world, "parallel": parallel if world > 1 else "one process"}
    watch(report)
    code = ebt_main(["train", *argv])
    if code == 0:
        (out / f"memory-rank{rank}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
