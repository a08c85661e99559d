"""Run `ebt train` under torchrun and save every rank's final parameters (used by test_training.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py RANKS_DIR train ...

Only rank 0 writes the run directory, so each rank saves the model it trained to
RANKS_DIR/rank{RANK}.pt for the test to compare.
"""

from __future__ import annotations

import os
import sys
import time

import torch

import ebt.cli
import ebt.train


def main(argv: list[str]) -> int:
    ranks_dir, cli_args = argv[0], argv[1:]
    built = []
    build_model = ebt.train.build_model

    def build_and_keep(config):
        built.append(build_model(config))
        return built[-1]

    ebt.train.build_model = build_and_keep
    try:
        return ebt.cli.main(cli_args)
    finally:  # also when the command fails after training, so the test can tell the two apart
        rank, world_size = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
        if built:
            state = {k: v.detach().clone() for k, v in built[-1].state_dict().items()}
            path = os.path.join(ranks_dir, f"rank{rank}.pt")
            torch.save({"world_size": world_size, "state": state}, path + ".tmp")
            os.replace(path + ".tmp", path)
        # A file barrier: a rank that exits early (e.g. failing) makes torchrun stop the others.
        open(os.path.join(ranks_dir, f"rank{rank}.done"), "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            os.path.exists(os.path.join(ranks_dir, f"rank{r}.done")) for r in range(world_size)
        ):
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
