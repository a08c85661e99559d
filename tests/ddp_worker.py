"""Run `ebt train` under torchrun and save every rank's final parameters (used by test_training.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py RANKS_DIR train ...

Only rank 0 writes the run directory, so each rank saves the model it trained to
RANKS_DIR/rank{RANK}.pt for the test to compare, and its exit code to RANKS_DIR/rank{RANK}.done.
With `--nan-validation` before the command (RANKS_DIR --nan-validation train ...), every text
validation scores a NaN loss (test_parallel.py).
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

import ebt.cli
import ebt.train


def main(argv: list[str]) -> int:
    ranks_dir, cli_args = argv[0], argv[1:]
    if cli_args[:1] == ["--nan-validation"]:
        from ebt.rundata.text import TextData

        cli_args = cli_args[1:]
        TextData.validate = lambda self, model, **kw: {"loss": math.nan, "ppl": math.nan}
    built, code = [], None
    build_model = ebt.train.build_model

    def build_and_keep(config):
        built.append(build_model(config))
        return built[-1]

    ebt.train.build_model = build_and_keep
    try:
        code = ebt.cli.main(cli_args)
        return code
    finally:  # also when the command fails after training, so the test can tell the two apart
        rank, world_size = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
        if built:
            state = {k: v.detach().clone() for k, v in built[-1].state_dict().items()}
            path = os.path.join(ranks_dir, f"rank{rank}.pt")
            torch.save({"world_size": world_size, "state": state}, path + ".tmp")
            os.replace(path + ".tmp", path)
        # A file barrier: a rank that exits early (e.g. failing) makes torchrun stop the others.
        with open(os.path.join(ranks_dir, f"rank{rank}.done"), "w") as done:
            done.write(f"{code}\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            os.path.exists(os.path.join(ranks_dir, f"rank{r}.done")) for r in range(world_size)
        ):
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
