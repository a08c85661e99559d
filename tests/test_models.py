"""Behaviour of the energy model and of thinking (SPEC §1–4, §9).

Causality and the sequence layout are checked against definitions written out here, gradients
against finite differences (float64), the training path through ∇E end to end, best-of-M
selection by recomputing every sample, and descent on a model trained for a few dozen steps.

Legend: B batch, S positions, V vocabulary, M samples, D width.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ebt
from ebt.data.tokens import encode_documents, sequential_windows
from ebt.data.corpus import load_corpus
from ebt.errors import ThinkingDiverged
from ebt.models import build_model
from ebt.objectives import make_objective
from ebt.presets import preset
from ebt.think import think

from conftest import random_ids, softmax, tiny_model
from dense_reference import reference_energy

V = 11  # vocabulary of the untrained tiny models


def random_probs(shape: tuple[int, ...], seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    return softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype))


def token_embeddings_of(model: nn.Module):
    """Install a hook that records the token-embedding output (B, S, D) of the next call."""
    seen: list[Tensor] = []
    handle = model.token_embedding.register_forward_hook(lambda module, inputs, output: seen.append(output))
    return seen, handle


# --- Causality -----------------------------------------------------------------------------------


def test_ebt_energy_is_causal_and_depends_on_its_own_candidate_only() -> None:
    model = tiny_model("ebt")
    b, s = 2, 6
    ids, p = random_ids(b, s), random_probs((b, s, V)).requires_grad_()
    seen, handle = token_embeddings_of(model)
    energies = model.energy(ids, p, step=1)  # (B, S)
    handle.remove()
    (embedded,) = seen  # (B, S, D)
    assert energies.shape == (b, s)
    for t in range(s):
        g_emb, g_p, g_landscape = torch.autograd.grad(
            energies[:, t].sum(), (embedded, p, model.landscape_embedding.weight), retain_graph=True
        )
        # Never the tokens after t (ctx_{t+1} is the target), never another position's candidate.
        assert torch.all(g_emb[:, t + 1:] == 0), f"energy at {t} sees later tokens"
        assert torch.all(g_p[:, :t] == 0) and torch.all(g_p[:, t + 1:] == 0), f"energy at {t} sees other candidates"
        # But every earlier token (and token t itself), its own candidate and the landscape token.
        assert torch.all(g_emb[:, : t + 1].abs().sum(-1) > 0), f"energy at {t} ignores some of its context"
        assert torch.all(g_p[:, t].abs().sum(-1) > 0)
        assert g_landscape[1].abs().sum() > 0 and torch.all(g_landscape[0] == 0)


def test_transformer_logits_are_causal() -> None:
    model = tiny_model("transformer")
    b, s = 2, 6
    ids = random_ids(b, s)
    seen, handle = token_embeddings_of(model)
    logits = model(ids)  # (B, S, V)
    handle.remove()
    (embedded,) = seen
    probe = torch.randn(V, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for t in range(s):
        (g,) = torch.autograd.grad((logits[:, t] @ probe).sum(), embedded, retain_graph=True)
        assert torch.all(g[:, t + 1:] == 0), f"logits at {t} see later tokens"
        assert torch.all(g[:, : t + 1].abs().sum(-1) > 0)


# --- The sequence layout against a dense reference (dense_reference.py) ----------------------------


@pytest.mark.parametrize("step", [0, 1, 5])  # 5 > trained steps: reuses the last landscape
def test_ebt_layout_matches_dense_reference(step: int) -> None:
    model = tiny_model("ebt")
    b, s = 2, 7
    ids, p = random_ids(b, s), random_probs((b, s, V))
    # The positions, the mask and the arithmetic are the reference's; the rotary table values are
    # the model's (their precision has its own test below).
    tables = lambda positions: (model.rotary.cos[positions], model.rotary.sin[positions])  # noqa: E731
    expected = reference_energy(model, ids, p, step, rotary=tables)
    with torch.no_grad():
        actual = model.energy(ids, p, step=step)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)
    # The full-context window works too (rotary positions up to context_len + 1).
    s = model.config.context_len
    ids, p = random_ids(b, s, seed=3), random_probs((b, s, V), seed=4)
    with torch.no_grad():
        actual = model.energy(ids, p, step=step)
    torch.testing.assert_close(actual, reference_energy(model, ids, p, step, rotary=tables), rtol=0, atol=1e-10)


def test_ebt_energy_in_float64_matches_reference_with_exact_rotary_angles() -> None:
    """A float64 model computes the float64 function: rotary angles exact to float64, not float32."""
    model = tiny_model("ebt")
    b, s = 2, model.config.context_len
    ids, p = random_ids(b, s), random_probs((b, s, V))
    with torch.no_grad():
        actual = model.energy(ids, p, step=1)
    torch.testing.assert_close(actual, reference_energy(model, ids, p, 1), rtol=0, atol=1e-10)


def test_candidate_energies_from_a_cached_context_match_the_full_pass() -> None:
    """Generation's path: the context encoded in two pieces (KV cache), last position only."""
    model = tiny_model("ebt")
    b, s = 2, 6
    ids, p = random_ids(b, s), random_probs((b, s, V))
    with torch.no_grad():
        full = model.energy(ids, p, step=1)  # (B, S)
        cached = model.encode_context(ids[:, 4:], past=model.encode_context(ids[:, :4], step=1))
        last = model.candidate_energy(cached, p[:, None, -1:])  # (B, 1, 1)
    torch.testing.assert_close(last[:, 0, 0], full[:, -1], rtol=0, atol=1e-10)


# --- Gradients against finite differences ---------------------------------------------------------


def test_energy_gradient_wrt_candidate_matches_finite_differences() -> None:
    model = tiny_model("ebt")
    ids = random_ids(2, 4)
    p = random_probs((2, 4, V)).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: model.energy(ids, q, step=1), (p,))
    # Thinking's training path differentiates ∇_p E again (Hessian-vector products).
    ids, q = random_ids(1, 3), random_probs((1, 3, V), seed=5).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda q: model.energy(ids, q, step=0), (q,))


class _UnrolledLoss(nn.Module):
    """The loss of SPEC §3 from a fixed start y0, so it is a deterministic function of θ.

    Steps are not detached here: System 1's detach makes its gradient a deliberate truncation of
    the true derivative, so finite differences can only check the full unroll.
    """

    def __init__(self, model: nn.Module, y0: Tensor):
        super().__init__()
        self.model, self.y0 = model, y0

    def forward(self, x: Tensor, targets: Tensor) -> Tensor:
        m = self.model
        thought = think(m.landscapes(x), self.y0, steps=2, step_size=m.alpha, prepare=m.task.prepare,
                        create_graph=True, detach_steps=False)
        # Cross-entropy written here in the input's dtype: the task's loss computes in float32.
        losses = [F.cross_entropy(c.squeeze(1).flatten(0, 1), targets.flatten()) for c in thought.candidates]
        return torch.stack(losses).mean()


def test_unrolled_loss_gradient_wrt_parameters_matches_finite_differences() -> None:
    """θ learns through ∇_y E: the energy head reaches the loss only through that gradient."""
    model = tiny_model("ebt", overrides={"think.step_size": 2.0})
    b, s = 2, 4
    ids = random_ids(b, s + 1)
    x, targets = ids[:, :-1], ids[:, 1:]
    y0 = torch.randn(b, 1, s, V, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    loss = _UnrolledLoss(model, y0)
    names = ("model.energy_head.weight", "model.step_size", "model.landscape_embedding.weight")
    params = tuple(dict(loss.named_parameters())[n].detach().clone().requires_grad_() for n in names)

    def f(*values: Tensor) -> Tensor:
        return torch.func.functional_call(loss, dict(zip(names, values)), (x, targets))

    assert torch.autograd.gradcheck(f, params)


# --- The training path through ∇E (second order) -------------------------------------------------


def test_s1_objective_gives_every_parameter_a_gradient() -> None:
    model = tiny_model("ebt", dtype=torch.float32)
    b, s = 4, 8
    ids = random_ids(b, s + 1, high=7)  # tokens 7..10 never occur
    torch.manual_seed(0)
    loss, stats = make_objective(model)(ids[:, :-1], ids[:, 1:])
    assert torch.isfinite(loss) and set(stats) >= {"loss", "energy_gap", "alpha"}
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} has no gradient"
        assert param.grad.abs().sum() > 0, f"{name} has a zero gradient"
    assert model.step_size.grad.abs() > 0
    landscape_grad = model.landscape_embedding.weight.grad  # one row per training step, each used once
    assert landscape_grad.shape[0] == 2 and torch.all(landscape_grad.abs().sum(-1) > 0)
    token_grad = model.token_embedding.weight.grad.abs().sum(-1)  # (V,)
    used = torch.zeros(V, dtype=torch.bool)
    used[ids[:, :-1].unique()] = True
    assert torch.all(token_grad[used] > 0) and torch.all(token_grad[~used] == 0)


@pytest.mark.parametrize("detach_steps", [True, False])
def test_detaching_between_steps_cuts_the_graph_to_earlier_steps(detach_steps: bool) -> None:
    model = tiny_model("ebt")
    b, s = 2, 5
    ids = random_ids(b, s + 1)
    x, targets = ids[:, :-1], ids[:, 1:]
    y0 = torch.randn(b, 1, s, V, dtype=torch.float64, requires_grad=True)
    thought = think(model.landscapes(x), y0, steps=2, step_size=model.alpha, prepare=softmax,
                    create_graph=True, detach_steps=detach_steps)
    step2_loss = model.task.loss(thought.candidates[1].squeeze(1), targets)
    to_step1, to_start = torch.autograd.grad(step2_loss, (thought.candidates[0], y0), allow_unused=True,
                                             retain_graph=True)
    if detach_steps:
        assert to_step1 is None and to_start is None
    else:
        assert to_step1 is not None and to_step1.abs().sum() > 0
        assert to_start is not None and to_start.abs().sum() > 0
    # Either way the step-2 loss reaches θ through step 2's own ∇E (the energy head only acts there).
    (head,) = torch.autograd.grad(step2_loss, model.energy_head.weight)
    assert head.abs().sum() > 0


# --- Best-of-M self-verification ------------------------------------------------------------------


@pytest.mark.parametrize("samples", [1, 4])
def test_best_of_m_keeps_the_lowest_final_energy_per_position(samples: int) -> None:
    # float64: batched and lone samples then agree to far below the tolerances used here, whatever
    # kernels the two batch shapes pick (in float32 logits of size ~500 differ in the 4th decimal).
    model = tiny_model("ebt", dtype=torch.float64)
    b, s, steps = 2, 6, 3
    ids = random_ids(b, s)
    thought = model.think(ids, steps=steps, samples=samples, generator=torch.Generator().manual_seed(3))
    assert thought.y.shape == (b, s, V)
    assert thought.forward_passes == (steps if samples == 1 else (steps + 1) * samples)

    # Recompute every sample alone from the same draws, and score its final prediction.
    y0 = model.task.initial_candidate(ids, samples, model.step_size, torch.Generator().manual_seed(3))  # (B, M, S, V)
    finals, final_energies = [], []
    for m in range(samples):
        alone = think(model.landscapes(ids), y0[:, m:m + 1], steps=steps, step_size=model.alpha.detach(),
                      prepare=softmax)
        finals.append(alone.y[:, 0])  # (B, S, V)
        with torch.no_grad():
            final_energies.append(model.energy(ids, softmax(alone.y[:, 0]), step=steps))  # (B, S)
    finals_t, energies_t = torch.stack(finals, 1), torch.stack(final_energies, 1)  # (B, M, S, V), (B, M, S)

    distance = (finals_t - thought.y[:, None]).abs().amax(-1)  # (B, M, S)
    chosen = distance.argmin(1)  # (B, S): which sample the returned prediction is
    assert torch.all(distance.amin(1) < 1e-4), "the prediction is none of the samples"
    chosen_energy = energies_t.gather(1, chosen[:, None]).squeeze(1)  # (B, S)
    assert torch.all(chosen_energy <= energies_t.amin(1) + 1e-5), "a lower-energy sample was passed over"
    if samples > 1:
        assert len(chosen.unique()) > 1, "test is vacuous: the same sample won everywhere"
        torch.testing.assert_close(thought.energies[-1], energies_t.amin(1), rtol=0, atol=1e-5)


def test_think_works_in_the_models_dtype() -> None:
    """A float64 (or bf16) model thinks in its own dtype: the random start must follow it."""
    model = tiny_model("ebt", dtype=torch.float64)
    ids = random_ids(2, 5)
    thought = model.think(ids, samples=2, generator=torch.Generator().manual_seed(0))
    assert thought.y.dtype == torch.float64
    loss, _ = make_objective(model)(ids[:, :-1], ids[:, 1:])  # training too (its loss is computed in float32)
    assert torch.isfinite(loss)


# --- Descent on a trained model, and divergence ----------------------------------------------------


def test_thinking_lowers_the_energy_of_a_trained_model(trained_runs) -> None:
    run = trained_runs["ebt"]
    model = ebt.load(run["dir"])
    cfg = run["config"]
    tokens = encode_documents(load_corpus(cfg.data.corpus).validation, ebt.load_run(run["dir"]).tokenizer)
    batch = next(sequential_windows(tokens, cfg.model.context_len + 1, batch_size=8))
    x = batch[:, :-1]
    energy = model.landscapes(x)
    y = model.task.initial_candidate(x, 1, model.step_size, torch.Generator().manual_seed(0))
    for step in range(cfg.think.steps):  # each trained step descends its own landscape
        one_step = lambda p, _, k=step: energy(p, k)  # noqa: E731
        after = think(one_step, y, steps=1, step_size=model.alpha.detach(), prepare=softmax).y
        with torch.no_grad():
            before_e, after_e = energy(softmax(y), step), energy(softmax(after), step)
        assert after_e.mean() < before_e.mean(), f"step {step} raised the mean energy"
        y = after


def test_non_finite_gradient_stops_thinking_with_the_step_and_alpha() -> None:
    y = torch.randn(1, 3, 5)

    def nan_at_second_step(p: Tensor, step: int) -> Tensor:
        e = p.pow(2).sum(-1)
        return e * float("nan") if step == 1 else e

    with pytest.raises(ThinkingDiverged, match=r"step 1\b.*α = 0\.25"):
        think(nan_at_second_step, y, steps=3, step_size=0.25, prepare=softmax)

    model = tiny_model("ebt", dtype=torch.float32)
    with torch.no_grad():
        model.candidate_embedding.weight[0, 0] = float("inf")
    with pytest.raises(ThinkingDiverged, match=rf"step 0\b.*α = {float(model.alpha.detach()):.4g}\)"):
        model.think(random_ids(1, 4))


@pytest.mark.parametrize("vocab", [256, 2048, 8192])
@pytest.mark.parametrize("dim", [32, 128, 256])
@pytest.mark.parametrize("recipe", ["text-ebt-tiny", "text-ebt-s2-tiny"])
def test_text_presets_start_from_the_uniform_guess(recipe: str, dim: int, vocab: int) -> None:
    """The text EBT presets start their energy head at zero (model.energy_head_init): the first
    training loss is the uniform guess, ln V, at every width and vocabulary. With a Xavier head,
    System 1's first step (α₀ = 80) lands on a confident wrong guess of thousands of nats
    (docs/results.md, "Where thinking starts"); System 2's α = 0.3 starts near ln V either way."""
    losses = {}
    for init in ("zero", "xavier"):
        config = preset(recipe)
        config.model.dim, config.model.n_heads, config.model.energy_head_init = dim, 4, init
        config.text.vocab_size = vocab
        torch.manual_seed(0)
        objective = make_objective(build_model(config.validated()))
        x, targets = random_ids(2, 32, seed=1, high=vocab), random_ids(2, 32, seed=2, high=vocab)
        losses[init] = float(objective(x, targets)[0].detach())
    assert losses["zero"] == pytest.approx(math.log(vocab), abs=0.01)
    if recipe == "text-ebt-tiny":
        assert losses["xavier"] > 10 * math.log(vocab)
