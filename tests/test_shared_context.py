"""The context pass shared by all thinking steps and samples (SPEC §2 cost note, §7).

`model.landscapes(x)` computes each landscape's context stream once and reuses its keys/values
for every step and every best-of-M sample. These tests run the same unrolled thinking twice —
through the shared landscapes, and through the dense reference of `test_models.py`, which
recomputes the whole (2S+1)-token sequence at every step — and compare energies, ∇_y E and the
parameter gradients of the training loss, in float64.

Legend: B batch, M samples, S positions, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import ebt.nn
from ebt.think import think

from conftest import tiny_model
from dense_reference import reference_energy
from test_models import V, random_ids, softmax


def unrolled(model, x: Tensor, targets: Tensor, y0: Tensor, energy, steps: int, **options) -> tuple[Tensor, list[Tensor]]:
    """Loss after every step (System 1) and the per-step energies of one unrolled thinking run."""
    thought = think(energy, y0, steps=steps, step_size=model.alpha, prepare=softmax, create_graph=True, **options)
    losses = [model.task.loss(c.flatten(0, 1), targets.repeat_interleave(y0.shape[1], 0)) for c in thought.candidates]
    return torch.stack(losses).mean(), thought.energies


@pytest.mark.parametrize("kind, steps, samples", [("ebt", 2, 1), ("ebt", 3, 3), ("ebt-s2", 3, 2)])
def test_shared_context_gives_the_reference_energies_and_gradients(kind: str, steps: int, samples: int) -> None:
    model = tiny_model(kind, overrides={"think.step_size": 2.0})
    b, s = 2, 5
    ids = random_ids(b, s + 1)
    x, targets = ids[:, :-1], ids[:, 1:]
    y0 = torch.randn(b, samples, s, V, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def reference(p: Tensor, step: int) -> Tensor:  # (B, M, S): every sample recomputes everything
        return torch.stack([reference_energy(model, x, p[:, m], step) for m in range(p.shape[1])], dim=1)

    results = {}
    for name, energy in (("shared", model.landscapes(x)), ("reference", reference)):
        model.zero_grad(set_to_none=True)
        loss, energies = unrolled(model, x, targets, y0, energy, steps, detach_steps=False)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (loss.detach(), energies, grads)

    (loss, energies, grads), (ref_loss, ref_energies, ref_grads) = results["shared"], results["reference"]
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-10)
    for e, r in zip(energies, ref_energies, strict=True):
        torch.testing.assert_close(e, r, rtol=0, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    assert "token_embedding.weight" in grads and "energy_head.weight" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_energy_gradient_wrt_candidates_from_the_shared_context_matches_the_reference() -> None:
    """∇_y E of several samples against one cached context equals each sample's own full pass."""
    model = tiny_model("ebt")
    b, m, s = 2, 3, 6
    x = random_ids(b, s)
    p = softmax(torch.randn(b, m, s, V, dtype=torch.float64, generator=torch.Generator().manual_seed(4))).requires_grad_()
    landscapes = model.landscapes(x)
    for step in (0, 1, 4):  # 4 > trained steps: the last landscape, already cached
        (g,) = torch.autograd.grad(landscapes(p, step).sum(), p)
        (ref,) = torch.autograd.grad(torch.stack([reference_energy(model, x, p[:, k], step) for k in range(m)], 1).sum(), p)
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-10)
    assert sorted(landscapes.contexts) == [0, 1], "each landscape's context pass runs once"


@pytest.mark.parametrize("block", [1, 3, 64])
def test_candidate_blocks_give_the_reference_energies_and_gradients(block: int, monkeypatch) -> None:
    """Candidates scored in blocks (each seeing only the keys its last candidate may see) compute
    the same energies, ∇_y E and parameter gradients as the dense reference."""
    monkeypatch.setattr(ebt.nn, "CANDIDATE_BLOCK", block)
    model = tiny_model("ebt")
    b, s = 2, model.config.context_len  # a full window: the blocks split it unevenly for block = 3
    x = random_ids(b, s)
    p = softmax(torch.randn(b, 2, s, V, dtype=torch.float64, generator=torch.Generator().manual_seed(6))).requires_grad_()
    energy = model.landscapes(x)(p, 1)  # (B, M, S)
    reference = torch.stack([reference_energy(model, x, p[:, k], 1) for k in range(2)], 1)
    torch.testing.assert_close(energy, reference, rtol=0, atol=1e-10)
    weights = torch.randn(energy.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (g,) = torch.autograd.grad((energy * weights).sum(), p, create_graph=True)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), p, create_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    params = [model.energy_head.weight, model.blocks[0].attention.query.weight, model.token_embedding.weight]
    second = torch.autograd.grad((g * p).sum(), params)
    second_ref = torch.autograd.grad((g_ref * p).sum(), params)
    for a, r in zip(second, second_ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)
