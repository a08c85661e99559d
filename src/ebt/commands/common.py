"""What every command shares: the device it runs on, the precision it runs at, the compile check,
and the declarations of the arguments that several commands take.

A command picks its device here, once (`pick`), and its precision here (`run_precision`: the one
asked for, else the one the run trained at). An argument class checks a request when it is made
(`check_inference`), so a bad device, precision or compile request fails before anything loads.

The declarations (`device_field`, `precision_field`, ...) are dataclass fields with their help as
metadata, which `ebt.cli` turns into flags (the contract is in `ebt.cli`'s docstring); the
argument classes of `ebt.commands.*` are made of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import field
from pathlib import Path
from typing import Any, Iterator

import torch

from ebt.compiled import check_compile
from ebt.distributed import Distributed, pick_device
from ebt.errors import EBTError
from ebt.evaluate import Scoring
from ebt.precision import check_precision

MAX_COUNT = 10**9  # far past any useful count; an int beyond it is a typo
MAX_SEED = 2**63 - 1


@contextlib.contextmanager
def as_field(name: str) -> Iterator[None]:
    """An EBTError raised inside is about the argument `name` (its `field`), unless it names one."""
    try:
        yield
    except EBTError as e:
        e.field = e.field or name
        raise


def pick(device: str) -> torch.device:
    """The device a command runs on: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'."""
    with as_field("device"):
        return pick_device(device, Distributed())[0]


def check_inference(device: str, precision: str | None = None, compile: bool = False) -> None:
    """A device, precision and compile request that can run here: the device is one `pick` takes,
    the precision (when given) one of `ebt.precision.PRECISIONS` (fp16 on CUDA only), and
    torch.compile (when asked for) works on that device. ConfigError naming the field."""
    picked = pick(device)
    if precision is not None:
        with as_field("precision"):
            check_precision(precision, picked, "precision")
    if compile:
        with as_field("compile"):
            check_compile(picked, "compile")


def for_run(scoring: Scoring, run) -> Scoring:
    """`scoring` at its precision, or when that is None at the precision `run` trained at (checked
    against the device: ConfigError about the field precision)."""
    with as_field("precision"):
        return scoring.for_run(run, "precision")


def run_precision(precision: str | None, run, device: torch.device) -> str:
    """`precision`, or when None the precision `run` trained at (checked against the device)."""
    return for_run(Scoring(device, precision), run).precision


def directory(text: str) -> Path:
    """A directory path typed on the command line; an empty one is a ValueError, not the cwd."""
    if not text.strip():
        raise ValueError("an empty path is not a directory; give one, e.g. runs/mine")
    return Path(text)


# --- declarations of arguments several commands take ---------------------------------------------


def option(default: Any = None, help: str = "", **metadata: Any) -> Any:
    """A dataclass field declaring a command-line argument: its default and its help (and metavar,
    flag, aliases, choices, parse, positional: see `ebt.cli`)."""
    return field(default=default, metadata={"help": help, **metadata})


def required(help: str, **metadata: Any) -> Any:
    """A dataclass field declaring a required argument (no default)."""
    return field(metadata={"help": help, **metadata})


def device_field(default: str = "auto", help: str = "auto (CUDA when available), cpu, cuda, cuda:1, ...") -> Any:
    return option(default, help)


def precision_field() -> Any:
    return option(None, "fp32, bf16 or fp16 (CUDA): autocast of the model's forward passes; thinking's candidates "
                        "stay fp32 (default: as the run trained, train.precision)")


def compile_field() -> Any:
    return option(False, "run inference through torch.compile: the decoding step, the context pass and the "
                         "first-order thinking step (the first calls compile, which takes a while)")


def seed_field(help: str | None = None) -> Any:
    return option(0, help or "seed of the random draws")


def json_field(help: str = "print one JSON object") -> Any:
    return option(False, help)
