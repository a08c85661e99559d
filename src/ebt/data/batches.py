"""Training batches for every task: one global batch per optimizer step, the same whatever the
number of processes and micro-batches (`TrainingBatches`), each example with its own seed (`Batch`)
and its own random draws from it (`example_normal`, `example_randint`).

A task's data supplies how many examples it has and how to fetch them by index: token windows
(`ebt.data.tokens`), noisy images, video clips. Read `TrainingBatches` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ebt.errors import CheckpointError, ConfigError, DataError


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not allowed; it must be an integer >= 1")


def _generator_seed(seed: int, rank: int) -> int:
    # SeedSequence mixes (seed, rank) into well-separated streams, so that neighbouring seeds
    # or ranks do not give correlated windows.
    state = np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Batch:
    """One micro-batch of training examples: `data` (b, …) as the task's `split` expects, and
    `seeds` (b,) int64, one per example, from which the example's own random draws come (the
    start candidates of thinking, the DiT's timestep and noise): the same example draws the same
    numbers in whichever process or micro-batch it lands."""

    data: torch.Tensor
    seeds: torch.Tensor


def example_normal(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, stream: int = 0) -> torch.Tensor:
    """Standard normal numbers (b, *shape): row i drawn from a generator seeded by (seeds[i],
    `stream`), on `device`, so an example's draws do not depend on the other examples of its
    batch; different streams give independent draws for one example."""
    rows = [torch.randn(shape, generator=_example_generator(int(s), stream, device), device=device, dtype=dtype)
            for s in seeds.tolist()]
    return torch.stack(rows) if rows else torch.empty((0, *shape), device=device, dtype=dtype)


def example_randint(seeds: torch.Tensor, high: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Tensor:
    """One integer in [0, high) per example (b,) int64, from its seed (as `example_normal`)."""
    rows = [torch.randint(0, high, (), generator=_example_generator(int(s), stream, device), device=device)
            for s in seeds.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, dtype=torch.int64, device=device)


def _example_generator(seed: int, stream: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B97F4A7C15 + stream) % 2**63)


class TrainingBatches:
    """Endless training batches, the same whatever the number of processes and micro-batches.

    Each optimizer step draws its global batch of `batch_size` examples (indices in
    [0, examples), with replacement) and one seed per example from a single generator seeded by
    `seed` alone. Process `rank` of `world_size` takes the rank-th contiguous share of it, cut into
    `micro_batches` micro-batches in order; `next()` returns that process's micro-batches for the
    next step, a list of `Batch`. So one process with the whole batch, two processes with half
    each and one process accumulating four quarters see the same examples in the same order, and
    a run saved on one number of processes resumes on another (`state_dict` holds no rank).

    `fetch(indices, seeds)` turns example indices (b,) into the batch tensor (b, …): text, token
    windows (`ebt.data.tokens.TokenSplit.fetch`); images, clean images noised by `seeds`; video, clips. Only this
    process's examples are fetched.
    Raises ConfigError when batch_size is not divisible by world_size × micro_batches.
    """

    def __init__(self, examples: int, fetch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1, micro_batches: int = 1) -> None:
        check_batch_size(batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
        valid_world_size = isinstance(world_size, int) and world_size >= 1
        if not (valid_world_size and isinstance(rank, int) and 0 <= rank < world_size):
            raise ConfigError(
                f"rank={rank!r}, world_size={world_size!r} are not allowed; "
                "world_size must be >= 1 and 0 <= rank < world_size"
            )
        if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
            raise ConfigError(f"train.grad_accum = {micro_batches!r} is not allowed; it must be an integer >= 1")
        if batch_size % (world_size * micro_batches):
            raise ConfigError(
                f"train.batch_size = {batch_size} is not allowed with {world_size} process(es) and train.grad_accum = "
                f"{micro_batches}: it is the global batch, split evenly over processes × micro-batches, so it must be "
                f"a multiple of {world_size * micro_batches}"
            )
        if examples < 1:
            raise DataError("the training split holds no examples")
        self.examples, self.fetch = examples, fetch
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.generator = torch.Generator().manual_seed(_generator_seed(seed, 0))

    def __iter__(self) -> TrainingBatches:
        return self

    def __next__(self) -> list[Batch]:
        indices = torch.randint(0, self.examples, (self.batch_size,), generator=self.generator)
        seeds = torch.randint(0, 2**62, (self.batch_size,), generator=self.generator)
        share = self.batch_size // self.world_size
        micro = share // self.micro_batches
        first = self.rank * share
        return [Batch(self.fetch(indices[i:i + micro], seeds[i:i + micro]), seeds[i:i + micro])
                for i in range(first, first + share, micro)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved sampler stopped (same seed and global batch expected;
        any number of processes and micro-batches)."""
        generator_state = state.get("generator") if isinstance(state, dict) else None
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise CheckpointError(
                "the saved training-batch state has no 'generator' state (a uint8 tensor); "
                "the checkpoint is corrupt or from another program"
            )
        if state.get("seed") != self.seed:
            raise CheckpointError(
                f"the saved training-batch state is for seed={state.get('seed')!r}, but this run has seed={self.seed}; "
                "resume with the same train.seed"
            )
        self.generator.set_state(generator_state)
