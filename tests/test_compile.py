"""Compiled inference (`--compile`, `ebt.compiled`): the same predictions as eager, clear errors.

Compiling with TorchInductor takes minutes on a small CPU (it runs a C++ compiler per graph), so
the fast tests compile with the "aot_eager" backend: the graphs Dynamo and AOTAutograd capture
(forward, the first-order ∇E of `torch.func.grad`, dynamic cache lengths) run by eager kernels.
That checks what compiling captures; `test_inductor_generation_equals_eager` checks TorchInductor's
code itself and is marked `slow` (deselected by default: `pytest -m slow tests/test_compile.py`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import ebt.compiled
from conftest import random_ids, run_cli, tiny_model
from ebt.errors import ConfigError
from ebt.generate import generate
from ebt.models import build_model, compiled_inference
from test_images import tiny_image_config

PROMPT = [1, 4, 2, 7, 3]


@pytest.fixture(scope="module")
def dynamo():
    """A clean Dynamo cache shared by this module's tests (a graph compiled for one test serves
    the next), and the count of the graphs captured."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f"torch.compile does not run on this Python with torch {torch.__version__}")
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.fixture
def aot_eager(dynamo, monkeypatch: pytest.MonkeyPatch):
    """Compile with aot_eager, which needs no C++ compiler (only Dynamo)."""
    monkeypatch.setattr(ebt.compiled, "BACKEND", "aot_eager")
    monkeypatch.setattr(ebt.compiled, "compile_unavailable", lambda device: None)
    return dynamo


def _captured_without_breaks(stats) -> None:
    assert stats["stats"]["unique_graphs"] > 0 and not stats["graph_break"]


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_compiled_generation_equals_eager(kind: str, aot_eager) -> None:
    """Cached (the one-token decoding step over a growing cache) and uncached, past the window
    (it slides): the same tokens compiled."""
    model = tiny_model(kind)  # float64
    eager = [generate(model, PROMPT, 10, temperature=0, cache=cache) for cache in (True, False)]
    with compiled_inference(model):
        assert [generate(model, PROMPT, 10, temperature=0, cache=cache) for cache in (True, False)] == eager
    assert not model.compiled  # restored after the block
    _captured_without_breaks(aot_eager)


def test_compiled_thinking_equals_eager(aot_eager) -> None:
    """Thinking at every position compiled, best-of-M, Langevin noise and adaptive: predictions,
    per-step energies and steps taken equal eager's (float64, up to rounding)."""
    model = tiny_model("ebt")
    ids = random_ids(1, 8)  # one sequence: the context pass compiled for generation serves it
    options = dict(steps=3, samples=2, langevin_std=0.1, tolerance=1e-3)
    eager = model.think(ids, generator=torch.Generator().manual_seed(0), **options)
    with compiled_inference(model):
        fast = model.think(ids, generator=torch.Generator().manual_seed(0), **options)
    torch.testing.assert_close(fast.y, eager.y, rtol=0, atol=1e-10)
    for e_fast, e_eager in zip(fast.energies, eager.energies, strict=True):
        torch.testing.assert_close(e_fast, e_eager, rtol=0, atol=1e-10)
    assert torch.equal(fast.steps_taken, eager.steps_taken) and fast.forward_passes == eager.forward_passes
    _captured_without_breaks(aot_eager)


def test_compiled_image_thinking_equals_eager(aot_eager) -> None:
    model = build_model(tiny_image_config()).double()
    torch.manual_seed(0)
    nn.init.normal_(model.energy_head.weight, std=0.1)  # zero at initialization: E ≡ 0 has no gradient
    noisy = torch.rand(2, 1, 12, 12, dtype=torch.float64) * 2 - 1
    eager = model.think(noisy, steps=2)
    with compiled_inference(model):
        fast = model.think(noisy, steps=2)
    assert not torch.equal(eager.y, noisy.unsqueeze(1))
    torch.testing.assert_close(fast.y, eager.y, rtol=0, atol=1e-10)
    _captured_without_breaks(aot_eager)


@pytest.mark.slow
@pytest.mark.skipif(ebt.compiled.compile_unavailable("cpu") is not None, reason="no TorchInductor toolchain here")
def test_inductor_generation_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchInductor's generated code (C++ on the CPU), float32 as runs are: the cached decoding
    step of both models gives eager's tokens and, to float32 rounding, its logits. Minutes."""
    monkeypatch.setattr(ebt.compiled, "BACKEND", "inductor")
    torch._dynamo.reset()
    counters.clear()
    for kind in ("ebt", "transformer"):
        model = tiny_model(kind, dtype=torch.float32)
        eager = generate(model, PROMPT, 6, temperature=0)
        with compiled_inference(model):
            assert generate(model, PROMPT, 6, temperature=0) == eager
    model = tiny_model("ebt", dtype=torch.float32)
    ids = random_ids(1, 8)
    eager = model.think(ids, generator=torch.Generator().manual_seed(0))
    with compiled_inference(model):
        fast = model.think(ids, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.y, eager.y, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]


def test_no_compiler_is_an_error_naming_the_flag(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(ebt.compiled.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile = True: torch.compile is not available.*C\\+\\+ compiler") as error:
        with compiled_inference(tiny_model("ebt")):
            pass
    assert error.value.field == "compile"  # the command line names its flag
    code, _, err = run_cli(["generate", "no-run", "--prompt", "a", "--compile", "--device", "cpu"], capsys)
    assert code == 2 and "--compile" in err and "C++ compiler" in err
    code, _, err = run_cli(["eval", "no-run", "--compile", "--device", "cpu"], capsys)
    assert code == 2 and "--compile" in err


def test_a_dit_has_nothing_to_compile() -> None:
    with pytest.raises(ConfigError, match=r"compiled inference \(compile = True\) applies to EBT and Transformer"):
        with compiled_inference(build_model(tiny_image_config("dit"))):
            pass


def test_the_flag_reaches_the_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebt.cli import arguments, build_parser

    monkeypatch.setattr(ebt.compiled, "compile_unavailable", lambda device: None)  # any machine
    for argv in (["generate", "runs/x", "--prompt", "a", "--compile"], ["eval", "runs/x", "--compile"],
                 ["bench", "--compile"]):
        args, extra = build_parser().parse_known_args(argv)
        assert arguments(args, extra).compile is True
    args, extra = build_parser().parse_known_args(["generate", "runs/x", "--prompt", "a"])
    assert arguments(args, extra).compile is False
