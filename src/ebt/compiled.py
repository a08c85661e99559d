"""Compiled inference (`compile`, the commands' `--compile`): `torch.compile` of the hot paths of decoding and inference thinking.

Decoding one sequence of a small model is bound by per-operation overhead, not arithmetic: a
cached EBT token is a few hundred small operations, each dispatched from Python
(docs/results.md, "Speed"). Compiled (TorchInductor), a pass runs as one generated function with
its elementwise work fused. What the models compile when `model.compiled` is on
(`ebt.models.compiled_inference`):

- the EBT's context pass and the Transformer++'s forward pass, which extend a KV cache by one
  token per decoding step (or run a whole window);
- the EBT's first-order thinking step: E and ∇_y E in one graph (`ebt.think.first_order`) in
  place of a forward pass and an autograd backward pass.

Training never runs compiled: it differentiates the thinking step again (Hessian-vector
products), and that is not what is compiled here.

Shapes. The KV cache grows by a token per step, so every function is compiled with
`dynamic=True`: one graph serves every cache length (a static graph would recompile at every
token; torch's default, automatic dynamic shapes, compiles twice before it generalizes). Sizes 0
and 1 are specialized, so a prompt pass and a one-token step are separate graphs, each compiled
once. CUDA graphs (`mode="reduce-overhead"`) would record one graph per cache length: they need a
cache padded to a fixed size, which this library does not have; compiling uses the default mode.

Each function's first call with new shapes compiles it (1–2.5 minutes for a model on the 2-core
CPU of docs/results.md; `ebt bench --compile` reports it as `*_compile_s`), after which every
model of the same architecture in the process reuses it. Compiling needs TorchInductor's
toolchain: a C++ compiler on the CPU, Triton on CUDA. `check_compile` refuses a machine without
one (a ConfigError whose field is `compile`). `torch._dynamo` (seconds to import) loads only once something compiles.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from typing import Callable, TypeVar

import torch
from torch import Tensor

from ebt.errors import ConfigError

F = TypeVar("F", bound=Callable)

def compile_unavailable(device: torch.device | str) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} cannot compile on Python {sys.version.split()[0]} on {sys.platform}"
    if device.type == "cpu":
        # TorchInductor's own choice of compiler (torch._inductor.config.cpp.cxx)
        default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
        cxx = os.environ.get("CXX", default)
        if shutil.which(cxx) is None:
            return f"compiling for the CPU needs a C++ compiler and {cxx!r} was not found (set CXX to one)"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "compiling for CUDA needs Triton, which is not installed (pip install triton)"
    else:
        return f"this library compiles for the CPU and CUDA only, not {device.type}"
    return None


def check_compile(device: torch.device | str, name: str = "compile") -> None:
    """ConfigError naming the option `name` (its field "compile") when torch.compile cannot run on
    `device` here."""
    reason = compile_unavailable(device)
    if reason is not None:
        raise ConfigError(f"{name} = True: torch.compile is not available here: {reason}; run without compiling",
                          field="compile")


# TorchInductor generates the code. Tests set "aot_eager" (the same captured graphs, forward and
# backward, run by eager kernels) to check what compiling captures in seconds instead of minutes.
BACKEND = "inductor"


def compiled(fn: F) -> F:
    """`fn` compiled with dynamic shapes, made once per function (and backend): every model of one
    architecture shares it (its guards check shapes; on older torch also the module object). A
    compiler that fails on this machine is a ConfigError (field "compile")."""
    return _compiled(fn, BACKEND)


@functools.cache
def _compiled(fn: F, backend: str) -> F:
    fast = torch.compile(fn, dynamic=True, backend=backend)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fast(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            cause = str(e.inner_exception if hasattr(e, "inner_exception") else e).strip().splitlines()
            raise ConfigError(f"compile = True: torch.compile failed on this machine "
                              f"({cause[0] if cause else type(e).__name__}); run without compiling",
                              field="compile") from e

    return call  # type: ignore[return-value]


def contiguous(kv: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """A compiled pass's keys/values, each made contiguous (a copy only for a new cache: a prompt
    pass leaves values as a transposed view; every extended cache is contiguous already). Dynamo
    guards on strides, so one layout lets the graph of a decoding step serve every later step."""
    return [(k.contiguous(), v.contiguous()) for k, v in kv]
