"""Activation checkpointing (`train.activation_checkpointing`, `ebt.models.set_activation_checkpointing`).

With it on, one training step gives the same loss and parameter gradients as without (float64,
the random start candidates and System 2's draws seeded alike) while holding less memory
between its forward and backward passes, for every model kind; the EBT's second-order gradients
pass through the recomputed blocks and thinking steps. Eval mode (inference) runs and returns
exactly what it did. `ebt bench` reports the memory with and without.

Legend: B batch, S positions, V vocabulary, C channels, H × W image.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import ebt.bench
from ebt.bench import LiveMemory, activation_memory
from ebt.generate import generate
from ebt.models import set_activation_checkpointing
from ebt.objectives import make_objective

from conftest import random_ids, tiny_model
from test_bench import micro_presets  # noqa: F401 (a fixture)
from test_images import SIZE, tiny_image_model

B = 3


def text_batch() -> tuple[Tensor, Tensor]:
    ids = random_ids(B, 9)  # (B, S + 1)
    return ids[:, :-1], ids[:, 1:]


def image_batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(B, 1, SIZE, SIZE, generator=g, dtype=torch.float64) * 2 - 1  # (B, C, H, W)
    return clean + 0.1 * torch.randn(clean.shape, generator=g, dtype=torch.float64), clean


def image_model(kind: str) -> nn.Module:
    """A tiny image model whose zero-initialized maps (adaLN gates, energy or noise head) are
    perturbed, so that every block gets a gradient."""
    model = tiny_image_model(kind)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "step_size":
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


MODELS = {
    "ebt": (lambda: tiny_model("ebt"), text_batch),
    "ebt-s2": (lambda: tiny_model("ebt-s2"), text_batch),
    "transformer": (lambda: tiny_model("transformer"), text_batch),
    "image-ebt": (lambda: image_model("ebt"), image_batch),
    "dit": (lambda: image_model("dit"), image_batch),
}


def training_step(model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor], int]:
    """Loss, parameter gradients and the bytes held between the forward and backward passes of one step."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same start candidates, step count, α factors, noise and timesteps
    with LiveMemory() as memory:
        loss, _ = make_objective(model)(x, targets)
        held = memory.live
        loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}, held


@pytest.mark.parametrize("kind", MODELS)
def test_checkpointed_step_has_the_same_gradients_and_holds_less(kind: str) -> None:
    make, batch = MODELS[kind]
    model, (x, targets) = make(), batch()
    loss, grads, held = training_step(model, x, targets)
    set_activation_checkpointing(model, True)
    loss_c, grads_c, held_c = training_step(model, x, targets)
    assert torch.equal(loss_c, loss)
    assert grads_c.keys() == grads.keys()
    assert any(name.startswith(("blocks.0", "backbone.blocks.0")) for name in grads)
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-10, atol=1e-12, msg=name)
    assert held_c < held


def test_eval_mode_is_unchanged() -> None:
    """Inference thinks with gradients enabled, in eval mode: nothing is recomputed and the result,
    thinking and generation alike, is the same."""
    model = tiny_model("ebt").eval()
    ids = random_ids(2, 6)
    calls = []
    model.blocks[0].ffn.register_forward_hook(lambda *_: calls.append(1))

    def infer() -> tuple[Tensor, list[int], int]:
        calls.clear()
        thought = model.think(ids, generator=torch.Generator().manual_seed(0))
        return thought.y, generate(model, [1, 2, 3], 3, temperature=0), len(calls)

    plain = infer()
    set_activation_checkpointing(model, True)
    logits, tokens, n_calls = infer()
    assert torch.equal(logits, plain[0]) and tokens == plain[1] and n_calls == plain[2]


def test_bench_reports_memory_with_and_without_checkpointing(micro_presets) -> None:  # noqa: F811
    r = activation_memory("tiny")
    for kind in ebt.bench.KINDS:
        held, peak = r[f"{kind}_activation_mib"], r[f"{kind}_peak_mib"]
        held_c, peak_c = r[f"{kind}_activation_mib_checkpointed"], r[f"{kind}_peak_mib_checkpointed"]
        assert 0 < held_c < held <= peak and held_c <= peak_c, kind
