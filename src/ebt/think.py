"""Thinking: energy descent on a candidate (SPEC §1, §4). Read this first.

    y_{i+1} = p_i − α ∇_p E(x, p_i),   p_i = prepare(y_i)

or, with mirror descent (`InnerOptimizer.mirror_descent`), y_{i+1} = y_i − α ∇_p E(x, p_i): the
step accumulates in y instead of restarting from p_i (text: the logits keep what earlier steps
found; the same update for tasks whose `prepare` is the identity).

One loop, `think`, serves training (System 1 and System 2 recipes), evaluation and generation, in
every modality: the energy model arrives as a function `energy(p, step) -> (…, S)` energies and the
task supplies `prepare`. Training asks for `create_graph=True` so the loss reaches θ through ∇_p E
(Hessian-vector products, never a full Hessian). How E and ∇E are computed is the energy's
business (`energy_and_gradient`): recomputed in the backward pass (`Checkpointed`) or compiled
(`FirstOrder`). Best-of-M self-verification picks among samples (`lowest_energy_sample`).

Gradients are always switched on inside (`enable_grad`): callers may wrap inference in
`torch.no_grad()`, never in `torch.inference_mode()` (gradients cannot be re-enabled there).
Its knobs are declared in `ebt.options`; read `energy.py` (the energy model) next.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ebt.errors import ConfigError, ThinkingDiverged
from ebt.options import InnerOptimizer

Energy = Callable[[Tensor, int], Tensor]


@dataclass
class Thought:
    """The trace of one thinking run.

    candidates[i] is the prediction after step i (for text: logits (…, V)), energies[i] the energy
    of the candidate that step i started from, detached, in the candidate's dtype (float32 under
    autocast); a final scoring pass, when asked for, appends the energy of the last prediction.
    `forward_passes` counts the energy evaluations run.
    """

    candidates: list[Tensor] = field(default_factory=list)
    energies: list[Tensor] = field(default_factory=list)
    forward_passes: int = 0
    steps_taken: Tensor | None = None  # (…, S) per-position steps, when thinking adaptively
    spectral_fallbacks: int = 0  # positions × steps where the spectral step size fell back to α

    @property
    def y(self) -> Tensor:
        """The final prediction (for text: logits (…, V))."""
        return self.candidates[-1]

    def take_sample(self, index: Tensor) -> Thought:
        """The trace of one sample per position, from a trace over (B, M, S, …) and an index (B, 1, S)."""
        return Thought(
            [take_sample(c, index) for c in self.candidates],
            [take_sample(e, index) for e in self.energies],
            self.forward_passes,
            None if self.steps_taken is None else take_sample(self.steps_taken, index),
            self.spectral_fallbacks,
        )


def think(energy: Energy, y: Tensor, *, steps: int, step_size: Tensor | float,
          prepare: Callable[[Tensor], Tensor] = lambda y: y, create_graph: bool = False, truncate_graph: bool = False,
          detach_steps: bool = True, langevin_std: float = 0.0, tolerance: float | None = None,
          generator: torch.Generator | None = None, score_final: bool = False,
          optimizer: InnerOptimizer | None = None, accept_steps: bool = False) -> Thought:
    """Descend the energy from candidate y (…, S, C) for `steps` steps; see the module docstring.

    step_size: α, a scalar or a tensor broadcasting against y (System 2 draws one per position).
    create_graph: keep the second-order graph of ∇E so a loss on the result trains θ; with
        truncate_graph, only the last step builds it (System 2's truncated backprop).
    detach_steps: start every step from a detached candidate (System 1; always the case when no
        graph is built, so inference never accumulates a graph across steps).
    langevin_std: σ of the Gaussian noise added to the candidate before each step (Langevin).
    tolerance: adaptive thinking; a position stops once its energy changes by less than this
        between steps, the loop once every position has stopped (`steps_taken`).
    score_final: one more energy evaluation of the last prediction (needed to pick among samples).
    optimizer: how ∇E becomes the update (`InnerOptimizer`; default: plain descent, p − α∇E).
    accept_steps: step acceptance (inference only, no graph): where a step raised a position's
        energy, the step is undone there and α halved for that position (`Backtracking`; every
        step after the first, which leaves the start); the last step is checked by a final
        scoring pass, so from the first prediction on `energies` never rise, and the last entry is
        the final prediction's energy.

    Raises ThinkingDiverged, naming the cause, as soon as a step makes a non-finite energy or a
    candidate that is not finite or is larger in magnitude than `largest_candidate` (√ of the
    dtype's largest value, float32: 1.8e19), where the next energy evaluation's squares overflow.
    """
    if torch.is_inference_mode_enabled():
        raise ConfigError("thinking takes gradients of the energy, which torch.inference_mode() forbids; use "
                          "torch.no_grad() instead (thinking enables gradients inside it)")
    thought, optimizer = Thought(), optimizer or InnerOptimizer()
    velocity = None  # (…, S, C): the momentum of each candidate
    if accept_steps and create_graph:
        raise ConfigError("accept_steps is for inference: an undone step has no place in an unrolled training graph",
                          field="accept_steps")
    backtracking = Backtracking() if accept_steps else None
    with torch.enable_grad():
        for step in range(steps):
            graph = create_graph and (not truncate_graph or step == steps - 1)
            if detach_steps or not graph or not y.requires_grad:
                y = y.detach().requires_grad_()
            start = y
            with _without_autocast(y):  # the candidate's own dtype ("Precision" below)
                if langevin_std:
                    y = y + langevin_std * _normal(y, generator)
                p = prepare(y)
            e, g = energy_and_gradient(energy, p, step, graph)
            model_dtype, e = e.dtype, e.to(torch.promote_types(e.dtype, p.dtype))  # E in p's dtype from here on
            thought.forward_passes += 1
            alpha = step_size
            if backtracking is not None:  # a candidate that raised its energy is replaced by the one before
                start, y, p, e, g, velocity, alpha = backtracking.check(start, y, p, e, g, velocity, step_size)
                if thought.candidates:  # the trace shows the candidate kept
                    thought.candidates[-1] = start.detach()
            delta, velocity = _optimizer_step(optimizer, energy, p, step, e, g, alpha, velocity, thought,
                                              generator)
            base = y if optimizer.mirror_descent else p
            update = (1 - optimizer.logit_decay) * base - delta if optimizer.logit_decay else base - delta
            # One check (one device sync) per step: the candidate it makes (finite, and small enough
            # to square: `largest_candidate`) and the energy it saw. Which part went wrong is worked
            # out only once something has.
            low, high = torch.aminmax(update.detach())  # NaN propagates: the comparison then fails
            bound = largest_candidate(update.dtype)
            if not bool((low >= -bound) & (high <= bound) & torch.isfinite(e).all()):
                raise _divergence(step, start, y, p, e, g, step_size, langevin_std, model_dtype, update)
            if tolerance is not None:
                update = _adaptive(thought, step, e, update, tolerance)
                if update is None:  # every position has stopped
                    break
            y = update
            thought.candidates.append(y if graph else y.detach())
            thought.energies.append(e.detach())
    if score_final or backtracking is not None:
        _score_final(thought, energy, prepare, steps)
        if backtracking is not None and thought.candidates:
            backtracking.final(thought)
    return thought


def energy_and_gradient(energy: Energy, p: Tensor, step: int, graph: bool) -> tuple[Tensor, Tensor]:
    """The energy (…, S) at prepared candidates p (…, S, C), in the dtype the model ran in (16 bits
    under autocast), and ∇_p E (…, S, C) in p's dtype, with the second-order graph when `graph`.
    An energy function that computes both its own way has a method `energy_and_gradient(p, step,
    graph)` (`Checkpointed`, `FirstOrder`); any other is differentiated by autograd."""
    own = getattr(energy, "energy_and_gradient", None)
    if own is not None:
        return own(p, step, graph)
    e = energy(p, step)
    # Summed in p's dtype: a float16 sum of B·S energies can overflow ("Precision" below).
    (g,) = torch.autograd.grad(e.to(torch.promote_types(e.dtype, p.dtype)).sum(), p, create_graph=graph)
    return e, g


def _optimizer_step(optimizer: InnerOptimizer, energy: Energy, p: Tensor, step: int, e: Tensor, g: Tensor,
                    step_size: Tensor | float, velocity: Tensor | None, thought: Thought,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """The step δ (p's shape; the update is p − δ) under `optimizer`, and the new velocity."""
    per = tuple(range(e.dim(), p.dim()))  # a position's candidate dimensions
    alpha = step_size
    if optimizer.spectral_step:
        lam = lambda_max(energy, p, step, optimizer.power_iterations, generator)  # (…, S)
        thought.forward_passes += 1 + optimizer.power_iterations
        usable = torch.isfinite(lam) & (lam > 0)
        thought.spectral_fallbacks += int((~usable).sum())
        spectral = optimizer.spectral_step / torch.where(usable, lam, torch.ones_like(lam))
        given = step_size if isinstance(step_size, Tensor) else torch.tensor(step_size, dtype=p.dtype, device=p.device)
        shape = (*e.shape, *(1,) * len(per))
        alpha = torch.where(usable.view(shape), spectral.view(shape).to(p.dtype), given.to(p.dtype))
    delta = alpha * g
    if optimizer.momentum:
        velocity = delta.detach() if velocity is None else optimizer.momentum * velocity + delta.detach()
        delta = delta + optimizer.momentum * velocity if optimizer.nesterov else delta + (velocity - delta.detach())
    if optimizer.max_step_norm:
        # A vector norm over all of a position's candidate dimensions (an image's are three); the
        # bound within the dtype's range (past its largest value no finite norm exceeds it; below
        # its smallest normal it would round to 0, and a zero step to 0/0).
        norm = torch.linalg.vector_norm(delta.detach(), dim=per, keepdim=True)
        info = torch.finfo(norm.dtype)
        bound = min(max(optimizer.max_step_norm, info.tiny), info.max)
        delta = delta * (bound / norm.clamp_min(bound))
    return delta, velocity


class Backtracking:
    """Step acceptance for `think(accept_steps=True)`: per position, a prediction whose energy is
    higher than that of the prediction the previous step started from is replaced by that one (its
    noisy form, prepared form, energy, gradient and velocity, kept from the previous step), and α
    there is halved for the rest of the descent. No energy evaluation is added: each check uses
    the energy the step computes anyway. The first step is always taken: the start is noise, not a
    prediction to fall back to (text: random logits, whose energy can be low by chance)."""

    def __init__(self) -> None:
        self.kept: tuple | None = None  # (start, y, p, e, g, velocity) the last step started from
        self.predicted = False  # whether `kept` is a prediction (not the start)
        self.scale: Tensor | None = None  # (…, S): α's factor per position, halved at each undone step

    def check(self, start: Tensor, y: Tensor, p: Tensor, e: Tensor, g: Tensor, velocity: Tensor | None,
              step_size: Tensor | float) -> tuple:
        """The step's (start, y, p, e, g, velocity) with the previous ones where its energy rose,
        and the step size to take from there."""
        now = (start, y, p, e, g, velocity)
        if self.predicted:
            raised = e > self.kept[3]  # (…, S)
            self.scale = torch.where(raised, self.scale / 2, self.scale)
            back = raised.view(*raised.shape, *(1,) * (p.dim() - raised.dim()))
            now = tuple(None if new is None else torch.where(back if new.dim() > raised.dim() else raised,
                                                            torch.zeros_like(new) if old is None else old, new)
                        for new, old in zip(now, self.kept))  # no velocity before the first step: zero
        self.predicted, self.kept = self.kept is not None, now
        if self.scale is None:
            self.scale = torch.ones_like(e)
        return (*now, step_size * self.scale.view(*self.scale.shape, *(1,) * (p.dim() - e.dim())))

    def final(self, thought: Thought) -> None:
        """After the scoring pass: where the last step raised the energy, the prediction is the
        candidate it started from, with that energy (unless that was the start)."""
        if not self.predicted:
            return
        start, e = self.kept[0], self.kept[3]
        raised = thought.energies[-1] > e
        back = raised.view(*raised.shape, *(1,) * (start.dim() - raised.dim()))
        thought.candidates[-1] = torch.where(back, start.detach(), thought.candidates[-1])
        thought.energies[-1] = torch.where(raised, e.detach(), thought.energies[-1])


def _adaptive(thought: Thought, step: int, e: Tensor, update: Tensor, tolerance: float) -> Tensor | None:
    """Adaptive thinking: `update` where a position still thinks, its last candidate where it has
    stopped (its energy changed by less than `tolerance` in its last step: the candidate this
    step started from is final); None once every position has stopped. Counts `steps_taken`."""
    if thought.steps_taken is None:  # the first step: every position thinks
        thought.steps_taken = torch.ones_like(e, dtype=torch.long)
        return update
    still = thought.steps_taken == step  # (…, S): every step so far taken
    active = still & ((e - thought.energies[-1]).abs() >= tolerance)
    if not bool(active.any()):
        return None
    thought.steps_taken += active
    keep = active.view(*active.shape, *(1,) * (update.dim() - active.dim()))  # over the candidate's dims
    return torch.where(keep, update, thought.candidates[-1])


def _score_final(thought: Thought, energy: Energy, prepare: Callable[[Tensor], Tensor], steps: int) -> None:
    """One more energy evaluation, of the final prediction, appended to the trace's energies."""
    with torch.no_grad():
        with _without_autocast(thought.y):
            p = prepare(thought.y)
        e = energy(p, steps)
    thought.energies.append(e.to(torch.promote_types(e.dtype, p.dtype)))
    thought.forward_passes += 1


# --- Energies that compute their own (E, ∇E): the systems side of a step --------------------------


class Checkpointed:
    """`energy` with activation checkpointing of each thinking step that builds the second-order
    graph: only the step's input p is kept for the backward pass, where the step's energy
    evaluation, ∇E and their graph run again (non-reentrant checkpointing, which allows the
    autograd.grad inside; SPEC §9). Costs about one more step in the forward pass (∇E recomputes
    the evaluation it differentiates) and one in the backward pass. `energy` must give the same
    result when called again and keep nothing it computes inside a call
    (`AutoregressiveEBT.landscapes(x, steps=…)` runs its context passes up front)."""

    def __init__(self, energy: Energy):
        self.energy = energy

    def __call__(self, p: Tensor, step: int) -> Tensor:
        return self.energy(p, step)

    def energy_and_gradient(self, p: Tensor, step: int, graph: bool) -> tuple[Tensor, Tensor]:
        if not graph:
            return energy_and_gradient(self.energy, p, step, graph)
        return checkpoint(energy_and_gradient, self.energy, p, step, True, use_reentrant=False)


class FirstOrder:
    """`energy` whose first-order steps (no graph: inference) take E and ∇_p E from one function
    `gradient(p, step)` → (E (…, S) in the dtype the model ran in, ∇_p E) instead of autograd on
    `energy`: a model's compiled `first_order` (`ebt.compiled`). It must equal `energy`'s."""

    def __init__(self, energy: Energy, gradient: Callable[[Tensor, int], tuple[Tensor, Tensor]]):
        self.energy, self.gradient = energy, gradient

    def __call__(self, p: Tensor, step: int) -> Tensor:
        return self.energy(p, step)

    def energy_and_gradient(self, p: Tensor, step: int, graph: bool) -> tuple[Tensor, Tensor]:
        if graph:
            return energy_and_gradient(self.energy, p, step, graph)
        with torch.no_grad():  # first order: nothing to differentiate again, no autograd graph to build
            return self.gradient(p.detach(), step)


def lambda_max(energy: Energy, p: Tensor, step: int, iterations: int = 3,
               generator: torch.Generator | None = None) -> Tensor:
    """The largest-magnitude eigenvalue of ∇²_p E at each position, (…, S), by `iterations` of power
    iteration on Hessian-vector products (SPEC §1: ∇²E is never formed). A position's energy
    depends on its own candidate only, so the Hessian is block-diagonal and one product serves
    every position. Detached; may be negative where E curves down, and not finite where E is."""
    p = p.detach().requires_grad_()
    with torch.enable_grad():
        e = energy(p, step)
        per = tuple(range(e.dim(), p.dim()))
        (g,) = torch.autograd.grad(e.to(p.dtype).sum(), p, create_graph=True)
        v = _normal(p, generator)
        v = v / torch.linalg.vector_norm(v, dim=per, keepdim=True).clamp_min(1e-30)
        lam = torch.zeros(e.shape, dtype=p.dtype, device=p.device)
        for _ in range(iterations):
            (hv,) = torch.autograd.grad((g * v).sum(), p, retain_graph=True)
            lam = (hv * v).sum(dim=per)  # the Rayleigh quotient of a unit vector
            v = hv / torch.linalg.vector_norm(hv, dim=per, keepdim=True).clamp_min(1e-30)
    return lam.detach()


def first_order(energy: Callable[[Tensor], Tensor], p: Tensor) -> tuple[Tensor, Tensor]:
    """E (…, S) at prepared candidates p (…, S, C) and ∇_p E, as one function of p
    (`torch.func.grad`): the form of a first-order step that `torch.compile` turns into one graph
    of the forward and backward passes (`ebt.compiled`). E is in the dtype the model ran in; the
    gradient of its sum equals that of the float32 sum autograd takes (a sum's gradient is ones)."""
    def total(p: Tensor) -> tuple[Tensor, Tensor]:
        e = energy(p)
        return e.sum(), e

    g, e = torch.func.grad(total, has_aux=True)(p)
    return e, g


def largest_candidate(dtype: torch.dtype) -> float:
    """The largest magnitude a candidate of `dtype` may reach: √ of the dtype's largest finite
    value (float32: 1.8e19; float16: 256), past which squaring it — a norm in the energy model,
    a quadratic energy — overflows. A step that goes past it stops thinking (`think`): the next
    energy evaluation would overflow (or, where `prepare` saturates, as text's softmax does,
    the prediction would only measure α)."""
    return math.sqrt(torch.finfo(dtype).max)


def _divergence(step: int, start: Tensor, noisy: Tensor, p: Tensor, e: Tensor, g: Tensor,
                step_size: Tensor | float, langevin_std: float, model_dtype: torch.dtype,
                update: Tensor) -> ThinkingDiverged:
    """Why step `step` made a non-finite energy or a candidate (`update`) past `largest_candidate`:
    the first non-finite link of start → (+ Langevin noise) → prepare → E → ∇E → p − α∇E, else
    the step's size, with the option to change as its field. `model_dtype`: the dtype the energy
    came out in (16 bits under autocast, while the candidate is float32)."""
    def finite(t: Tensor) -> bool:
        return bool(torch.isfinite(t).all())

    # α as given: a Python float is not rounded to the default float32 first (1e300 would read as inf).
    alpha_t = step_size.detach() if isinstance(step_size, Tensor) else torch.tensor(float(step_size), dtype=torch.float64)
    alpha = float(alpha_t.abs().max())
    at = f"at step {step} (α = {alpha:.4g})"
    dtype = torch.promote_types(p.dtype, g.dtype)
    # float16 overflows past 65504, so name the dtype: the candidate's, or E and ∇E's (the model's).
    dtype_hint = _overflow_hint(dtype, "think in float32")
    model_hint = dtype_hint if model_dtype == dtype else _overflow_hint(
        model_dtype, f"the energy model ran in it under autocast; use precision "
                     f"{'bf16 or fp32' if model_dtype == torch.float16 else 'fp32'}")
    noise_hint = f"; or the Langevin noise (langevin_std = {langevin_std:.4g}) is too large" if langevin_std else ""
    if not finite(start):
        return ThinkingDiverged(f"the candidate thinking starts from is not finite {at}; it holds NaN or Inf")
    if not finite(noisy):
        return ThinkingDiverged(f"Langevin noise with langevin_std = {langevin_std:.4g} makes the candidate non-finite "
                                f"{at}; langevin_std must be finite and small next to the candidate's scale{dtype_hint}",
                                field="langevin_std")
    noisiest = float(noisy.detach().abs().max())
    if langevin_std and noisiest > largest_candidate(noisy.dtype):
        return ThinkingDiverged(f"Langevin noise with langevin_std = {langevin_std:.4g} makes the candidate as large as "
                                f"{noisiest:.4g} {at}, past √(largest {noisy.dtype} value) = "
                                f"{largest_candidate(noisy.dtype):.4g}, where squaring it overflows; langevin_std must "
                                "be small next to the candidate's scale", field="langevin_std")
    if not finite(p):
        return ThinkingDiverged(f"preparing the candidate (the task's prepare) makes it non-finite {at}{dtype_hint}"
                                f"{noise_hint}", field="langevin_std" if langevin_std else None)
    if not finite(e):
        return ThinkingDiverged(f"the energy is not finite {at}: NaN or Inf in the model's weights or its input "
                                f"(ebt.load_run refuses non-finite weights){model_hint}{noise_hint}",
                                field="precision" if model_dtype != dtype and model_hint else None)
    if not finite(g):
        return ThinkingDiverged(f"∇E is not finite {at}; lower think.step_size or the learning rate{model_hint}"
                                f"{noise_hint}", field="step_size")
    if not finite(alpha_t):
        return ThinkingDiverged(f"step size α = {alpha:.4g} makes the candidate non-finite at step {step}; α must be "
                                "finite and > 0 (ThinkingOptions.step_size, or the trained think.step_size)",
                                field="step_size")
    wider = ", or think in float32" if torch.finfo(dtype).bits <= 16 else ""
    if not finite(update):
        return ThinkingDiverged(f"the step α·∇E overflows {dtype} (largest finite value {torch.finfo(dtype).max:.4g}) "
                                f"{at}, max |∇E| = {float(g.detach().abs().max()):.4g}; lower the step size{wider}",
                                field="step_size")
    bound = largest_candidate(update.dtype)
    return ThinkingDiverged(f"the step α·∇E makes the candidate as large as {float(update.detach().abs().max()):.4g} "
                            f"{at}, max |∇E| = {float(g.detach().abs().max()):.4g}: past √(largest {update.dtype} value) = "
                            f"{bound:.4g}, where squaring it (a norm, a quadratic energy) overflows; lower the step "
                            f"size{wider}", field="step_size")


def _overflow_hint(dtype: torch.dtype, fix: str) -> str:
    """'; or a value overflowed float16 …: `fix`' for 16-bit dtypes, '' for wider ones."""
    if torch.finfo(dtype).bits > 16:
        return ""
    return f"; or a value overflowed {dtype} (largest finite value {torch.finfo(dtype).max:.4g}): {fix}"


# Precision. Under `torch.autocast` (`ebt.precision`: bf16, fp16) the energy model's matmuls run in
# 16 bits, while thinking's own arithmetic stays in the candidate's dtype, float32 (the weights'):
# - the candidate y, its Langevin noise and its preparation (text: the softmax over V logits) run
#   with autocast switched off, so no task's `prepare` is ever lowered (CPU autocast would leave a
#   softmax in its input's dtype);
# - the energy comes back in 16 bits and is cast up to the candidate's dtype before it is summed
#   and recorded: a float16 sum of B·S energies can overflow, and CPU autocast does not widen sums
#   as CUDA's does; energies compared between steps (tolerance) and samples (best-of-M) too;
# - ∇_p E arrives in p's dtype (autograd casts a gradient back through each of autocast's casts),
#   and the update p − α∇E is elementwise, which autocast never lowers.
# So E and ∇E carry the rounding of 16-bit matmuls (bf16: about 1e-2 relative), the candidate none.


def _without_autocast(t: Tensor):
    """A region where autocast leaves t's arithmetic in t's own dtype (CPU and CUDA are the
    devices autocast runs on; elsewhere there is nothing to switch off)."""
    if t.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


# --- Best-of-M self-verification (`ebt.best_of.think_best_of`) ---------------------------------------


def lowest_energy_sample(energies: Tensor) -> Tensor:
    """Self-verification: per position, the index (B, 1, S) of the sample with the lowest energy among (B, M, S)."""
    return energies.argmin(dim=1, keepdim=True)


def take_sample(t: Tensor, index: Tensor) -> Tensor:
    """t (B, M, S, …) at a per-position sample index (B, 1, S) → (B, S, …)."""
    trailing = t.shape[3:]
    index = index.view(*index.shape, *(1 for _ in trailing)).expand(*index.shape, *trailing)
    return t.gather(1, index).squeeze(1)
