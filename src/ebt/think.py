"""Thinking: energy descent on a candidate, and best-of-M selection (SPEC §1, §4). Read this first.

    y_{i+1} = p_i − α ∇_p E(x, p_i),   p_i = prepare(y_i)

or, with mirror descent (`InnerOptimizer.mirror_descent`), y_{i+1} = y_i − α ∇_p E(x, p_i): the
step accumulates in y instead of restarting from p_i (text: the logits keep what earlier steps
found; the same update for tasks whose `prepare` is the identity).

One loop serves training (System 1 and System 2 recipes), evaluation and generation, in every
modality: the energy model arrives as a function `energy(p, step) -> (…, S)` energies and the
task supplies `prepare`. Training asks for `create_graph=True` so the loss reaches θ through
∇_p E (Hessian-vector products, never a full Hessian); inference needs first-order gradients only,
which a model may compute in one compiled function instead (`gradient`, `first_order`; `ebt.compiled`).

Gradients are always switched on inside (`enable_grad`): callers may wrap inference in
`torch.no_grad()`, never in `torch.inference_mode()` (gradients cannot be re-enabled there).

Precision. Under `torch.autocast` (`train.precision`, `--precision` bf16 or fp16; `ebt.precision`)
the energy model's matmuls run in 16 bits, while thinking's own arithmetic stays in the
candidate's dtype — float32, the weights' (float64 for a float64 model):
- the candidate y, its Langevin noise and its preparation (text: the softmax over V logits) run
  with autocast switched off, so no task's `prepare` is ever lowered (CUDA's autocast would
  keep a softmax in float32 anyway; the CPU's leaves it in its input's dtype);
- the energy comes back in 16 bits and is cast up to the candidate's dtype before it is summed
  and recorded: a float16 sum of B·S energies can overflow, and CPU autocast does not widen sums
  as CUDA's does; energies compared between steps (tolerance) and samples (best-of-M) are then
  in the candidate's dtype too;
- ∇_p E arrives in p's dtype (autograd casts a gradient back through each of autocast's casts),
  and the update p − α∇E is elementwise, which autocast never lowers.
So E and ∇E carry the rounding of 16-bit matmuls (bf16: about 1e-2 relative), the candidate none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ebt.errors import ConfigError, ThinkingDiverged

Energy = Callable[[Tensor, int], Tensor]

# Far past anything useful, and small enough that no count can exhaust memory by a typo.
MAX_THINKING_STEPS = 10_000
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class ThinkingOptions:
    """How an EBT thinks at inference (SPEC §4), checked once where it is made. Every command and
    API takes this one object (or its fields as keywords).

    steps: thinking steps (None: as trained; more = thinking longer).
    samples: self-verification, best of M candidates from independent starts, the lowest final
        energy kept per position.
    step_size: α (None: as trained).
    langevin_std: σ of the Gaussian noise added to the candidate before each step.
    tolerance: adaptive thinking, a position stops once its energy changes by less than this.
    momentum, nesterov, spectral_step, max_step_norm, mirror_descent: the inner optimizer
        (`InnerOptimizer`), each None for the value the model trained with (think.*).

    Raises ConfigError naming the option (and its command-line flag), the value and what is allowed.
    """

    steps: int | None = None
    samples: int = 1
    step_size: float | None = None
    langevin_std: float = 0.0
    tolerance: float | None = None
    # The inner optimizer (`InnerOptimizer`); None: as trained.
    momentum: float | None = None
    nesterov: bool | None = None
    spectral_step: float | None = None
    max_step_norm: float | None = None
    mirror_descent: bool | None = None

    def __post_init__(self) -> None:
        _check_count("steps", self.steps, MAX_THINKING_STEPS, optional=True)
        _check_count("samples", self.samples, MAX_SAMPLES)
        _check_real("step_size", self.step_size, positive=True, optional=True)
        _check_real("langevin_std", self.langevin_std)
        _check_real("tolerance", self.tolerance, optional=True, unset="off")
        if self.momentum is not None:
            m = self.momentum
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 <= m < 1:
                raise ConfigError(f"thinking option {_flag('momentum')} = {m!r} is not allowed; it must be a finite "
                                  "number in [0, 1) (the share of the last update kept) or left unset (None: as "
                                  "trained)")
        for name in ("nesterov", "mirror_descent"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"thinking option {_flag(name)} = {value!r} is not allowed; it must be true or false")
        _check_real("spectral_step", self.spectral_step, optional=True)
        _check_real("max_step_norm", self.max_step_norm, optional=True)

    def optimizer(self, trained: InnerOptimizer) -> InnerOptimizer:
        """The inner optimizer a model trained with `trained` thinks with under these options."""
        given = {name: getattr(self, name) for name in ("momentum", "nesterov", "spectral_step", "max_step_norm",
                                                        "mirror_descent")
                 if getattr(self, name) is not None}
        return dataclasses.replace(trained, **given)


    @classmethod
    def of(cls, options: ThinkingOptions | None = None, **given: Any) -> ThinkingOptions:
        """`options`, or one made from keyword fields (`steps=4, samples=3`); not both."""
        if options is not None and given:
            raise ConfigError(f"give thinking options as one ThinkingOptions or as keywords, not both ({sorted(given)})")
        if options is not None:
            if not isinstance(options, ThinkingOptions):
                raise ConfigError(f"thinking options must be a ThinkingOptions, got {type(options).__name__}")
            return options
        known = {f.name for f in fields(cls)}
        unknown = set(given) - known
        if unknown:
            raise ConfigError(f"unknown thinking options {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**given)

    def given(self) -> dict[str, Any]:
        """The options set away from their defaults (a Transformer++ rejects any)."""
        default = ThinkingOptions()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    def describe(self, names: set[str] | None = None) -> str:
        """The options set, as 'steps (--steps) = 3, samples (--samples) = 2' (only `names`, when given)."""
        return ", ".join(f"{_flag(k)} = {v!r}" for k, v in self.given().items() if names is None or k in names)

    def refused_by(self, model: str, names: set[str] | None = None) -> ConfigError:
        """The error for a model that cannot think (`model`: 'a Transformer++', 'a DiT') given these
        options (only `names`, when given)."""
        return ConfigError(f"{model} cannot think: the thinking options {self.describe(names)} are for EBT runs only")


@dataclass(frozen=True)
class InnerOptimizer:
    """How a thinking step turns ∇E into the update of the candidate (plain: p − α∇E).

    momentum μ: a velocity per candidate, v ← μ v + α∇E, the step −v (heavy ball); with
        `nesterov`, the step −(α∇E + μ v) (PyTorch's SGD form of Nesterov's look-ahead).
    spectral_step c > 0: α = c / λ_max per position, λ_max the largest eigenvalue of ∇²_p E there,
        estimated by `power_iterations` Hessian-vector products (each a forward-and-backward pass,
        counted in `forward_passes`); where the estimate is not finite or not positive (no
        curvature to scale by), the given α is used and the step counted in
        `Thought.spectral_fallbacks`. 0: off.
    max_step_norm b > 0: each position's step scaled down to L2 norm ≤ b (a cheap guard). 0: off.
    mirror_descent: the step is taken from the candidate y, not from p = prepare(y): y ← y − δ.
        For text, where p = softmax(y), this is mirror descent on the simplex (exponentiated
        gradient: p ∝ p·exp(−α∇_p E)): the logits accumulate, so each step continues the last
        and more steps keep lowering E, where the paper's p − δ restarts every step from
        probabilities ≤ 1 and so converges to a fixed point of p ↦ softmax(p − α∇E) within a few
        steps (docs/results.md, "Which System 2 recipe thinks best"). Off: the paper's update.

    Raises ConfigError naming the field for a value out of range.
    """

    momentum: float = 0.0
    nesterov: bool = False
    spectral_step: float = 0.0
    power_iterations: int = 3
    max_step_norm: float = 0.0
    mirror_descent: bool = False

    def __post_init__(self) -> None:
        checks = [("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
                  ("spectral_step", self.spectral_step, self.spectral_step >= 0, "≥ 0 (0 = off)"),
                  ("max_step_norm", self.max_step_norm, self.max_step_norm >= 0, "≥ 0 (0 = off)")]
        for name, value, ok, allowed in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
                raise ConfigError(f"{name} = {value!r} is not allowed; it must be a finite number {allowed}")
        if not isinstance(self.power_iterations, int) or isinstance(self.power_iterations, bool) \
                or not 1 <= self.power_iterations <= 100:
            raise ConfigError(f"power_iterations = {self.power_iterations!r} is not allowed; it must be an integer "
                              "in [1, 100]")
        for name in ("nesterov", "mirror_descent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not allowed; it must be true or false")
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov = true needs a momentum > 0 (Nesterov's look-ahead is along the velocity)")

    @property
    def plain(self) -> bool:
        return not (self.momentum or self.spectral_step or self.max_step_norm)

def _flag(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


def _check_count(name: str, value: Any, limit: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigError(f"thinking option {_flag(name)} = {value!r} is not allowed; it must be an integer in "
                          f"[1, {limit}]" + (" or left unset (None: as trained)" if optional else ""))


def _check_real(name: str, value: Any, positive: bool = False, optional: bool = False, unset: str = "as trained"
                ) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ConfigError(f"thinking option {_flag(name)} = {value!r} is not allowed; it must be a finite number "
                          f"{'> 0' if positive else '≥ 0'}" + (f" or left unset (None: {unset})" if optional else ""))


@dataclass
class Thought:
    """The trace of one thinking run.

    candidates[i] is the prediction after step i (for text: logits), energies[i] the energy of the
    candidate that step i started from, detached, in the candidate's dtype (float32 under
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
        return self.candidates[-1]

    @property
    def logits(self) -> Tensor:
        """The final prediction; for text candidates these are logits (…, V)."""
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


def think(
    energy: Energy,
    y: Tensor,
    *,
    steps: int,
    step_size: Tensor | float,
    prepare: Callable[[Tensor], Tensor] = lambda y: y,
    create_graph: bool = False,
    truncate_graph: bool = False,
    detach_steps: bool = True,
    langevin_std: float = 0.0,
    tolerance: float | None = None,
    generator: torch.Generator | None = None,
    score_final: bool = False,
    recompute_steps: bool = False,
    gradient: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None,
    optimizer: InnerOptimizer | None = None,
) -> Thought:
    """Descend the energy from candidate y (…, S, C) for `steps` steps; see the module docstring.

    step_size: α, a scalar or a tensor broadcasting against y (System 2 draws one per position).
    create_graph: keep the second-order graph of ∇E so a loss on the result trains θ.
    truncate_graph: with create_graph, only the last step builds it (System 2's truncated backprop).
    detach_steps: start every step from a detached candidate (System 1; always the case when no
        graph is built, so inference never accumulates a graph across steps).
    langevin_std: σ of the Gaussian noise added to the candidate before each step (Langevin).
    tolerance: adaptive thinking; a position stops once its energy changes by less than this
        between steps, the loop once every position has stopped. `steps_taken` records the
        steps each position used; `forward_passes` what was actually run.
    score_final: one more energy evaluation of the last prediction (needed to pick among samples).
    recompute_steps: with create_graph, keep only each step's input p for the backward pass: the
        step's energy evaluation, ∇E and their second-order graph run again when the loss's
        backward pass reaches them (non-reentrant activation checkpointing, which allows the
        autograd.grad inside, SPEC §9). Costs about one more step in the forward pass (∇E
        recomputes the evaluation it differentiates) and one in the backward pass. `energy` must
        give the same result when called again and keep nothing it computes inside a call
        (`AutoregressiveEBT.landscapes(x, steps=…)` runs its context passes up front).
    gradient: `gradient(p, step)` → (E (…, S) in the dtype the model ran in, ∇_p E), used for the
        steps that build no graph in place of autograd on `energy`: a model's compiled one
        (`first_order` under `torch.compile`, `ebt.compiled`). It must equal `energy`'s.
    optimizer: how ∇E becomes the update (`InnerOptimizer`: momentum, Nesterov, a spectral step
        size, a bound on the step); None or the default: plain descent, p − α∇E. The velocity
        and the spectral α are detached: a loss reaches θ through each step's own ∇E only.

    Raises ThinkingDiverged, naming the cause, as soon as a step makes a non-finite candidate or energy.
    """
    if torch.is_inference_mode_enabled():
        raise ConfigError("thinking takes gradients of the energy, which torch.inference_mode() forbids; use "
                          "torch.no_grad() instead (thinking enables gradients inside it)")
    thought = Thought()
    active = None  # (…, S) positions still thinking, when adaptive
    optimizer = optimizer or InnerOptimizer()
    velocity = None  # (…, S, C): the momentum of each candidate
    with torch.enable_grad():
        for step in range(steps):
            graph = create_graph and (not truncate_graph or step == steps - 1)
            if detach_steps or not graph or not y.requires_grad:
                y = y.detach().requires_grad_()
            start = y
            with _without_autocast(y):  # the candidate's own dtype (see "Precision" above)
                if langevin_std:
                    y = y + langevin_std * _normal(y, generator)
                p = prepare(y)
            ran_in: list[torch.dtype] = []  # the dtype the model ran in (16 bits under autocast)
            if graph and recompute_steps:
                e, g = checkpoint(_energy_and_gradient, energy, p, step, True, ran_in, use_reentrant=False)
            else:
                e, g = _energy_and_gradient(energy, p, step, graph, ran_in, None if graph else gradient)
            model_dtype = ran_in[0]
            thought.forward_passes += 1
            base = y if optimizer.mirror_descent else p
            if optimizer.plain:
                update = base - step_size * g
            else:
                delta, velocity = _optimizer_step(optimizer, energy, p, step, e, g, step_size, velocity, thought,
                                                  generator)
                update = base - delta
            # One check (one device sync) per step: the candidate it makes and the energy it saw.
            # Which part went wrong is worked out only once something has.
            if not bool(torch.isfinite(update).all() & torch.isfinite(e).all()):
                raise ThinkingDiverged(_divergence(step, start, y, p, e, g, step_size, langevin_std, model_dtype))
            if tolerance is not None:
                if active is None:
                    active = torch.ones_like(e, dtype=torch.bool)
                    thought.steps_taken = torch.zeros_like(e, dtype=torch.long)
                else:  # converged: the candidate this step started from is final
                    active = active & ((e - thought.energies[-1]).abs() >= tolerance)
                if not bool(active.any()):
                    break
                thought.steps_taken += active
                keep = active.view(*active.shape, *(1,) * (update.dim() - active.dim()))  # over the candidate's dims
                update = torch.where(keep, update, thought.candidates[-1] if thought.candidates else y)
            y = update
            thought.candidates.append(y if graph else y.detach())
            thought.energies.append(e.detach())
    if score_final:
        with torch.no_grad():
            with _without_autocast(thought.y):
                p = prepare(thought.y)
            e = energy(p, steps).detach()
            thought.energies.append(e.to(torch.promote_types(e.dtype, p.dtype)))
        thought.forward_passes += 1
    return thought


def _energy_and_gradient(energy: Energy, p: Tensor, step: int, graph: bool, ran_in: list[torch.dtype],
                         gradient: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None
                         ) -> tuple[Tensor, Tensor]:
    """One evaluation of the energy (…, S) at prepared candidates p (…, S, C) and its gradient
    ∇_p E (…, S, C), with the second-order graph when `graph`: the part of a thinking step that
    `recompute_steps` runs again in the backward pass. The energy is summed and returned in the
    candidate's dtype whatever the model ran in (appended to `ran_in`), and g has p's dtype.
    `gradient` (first order only): the function that computes both instead of autograd."""
    if gradient is not None:
        with torch.no_grad():  # first order: nothing to differentiate again, no autograd graph to build
            e, g = gradient(p.detach(), step)
        ran_in.append(e.dtype)
        return e.to(torch.promote_types(e.dtype, p.dtype)), g
    e = energy(p, step)  # (…, S), in the dtype the model ran in (16 bits under autocast)
    ran_in.append(e.dtype)
    e = e.to(torch.promote_types(e.dtype, p.dtype))
    (g,) = torch.autograd.grad(e.sum(), p, create_graph=graph)
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
        norm = delta.detach().norm(dim=per, keepdim=True)
        delta = delta * (optimizer.max_step_norm / norm.clamp_min(optimizer.max_step_norm))
    return delta, velocity


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
        v = v / v.norm(dim=per, keepdim=True).clamp_min(1e-30)
        lam = torch.zeros(e.shape, dtype=p.dtype, device=p.device)
        for _ in range(iterations):
            (hv,) = torch.autograd.grad((g * v).sum(), p, retain_graph=True)
            lam = (hv * v).sum(dim=per)  # the Rayleigh quotient of a unit vector
            v = hv / hv.norm(dim=per, keepdim=True).clamp_min(1e-30)
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


def _divergence(step: int, start: Tensor, noisy: Tensor, p: Tensor, e: Tensor, g: Tensor,
                step_size: Tensor | float, langevin_std: float, model_dtype: torch.dtype) -> str:
    """Why step `step` made a non-finite candidate or energy: the first non-finite link of
    start → (+ Langevin noise) → prepare → E → ∇E → p − α∇E. `model_dtype`: the dtype the energy
    came out in (16 bits under autocast, while the candidate is float32)."""
    def finite(t: Tensor) -> bool:
        return bool(torch.isfinite(t).all())

    # α as given: a Python float is not rounded to the default float32 first (1e300 would read as inf).
    alpha_t = step_size.detach() if isinstance(step_size, Tensor) else torch.tensor(float(step_size), dtype=torch.float64)
    alpha = float(alpha_t.abs().max())
    at = f"at step {step} (α = {alpha:.4g})"
    dtype = torch.promote_types(p.dtype, g.dtype)
    # float16 overflows past 65504: a value fine in float32 is not, so name the dtype. The
    # candidate's arithmetic runs in its dtype, E and ∇E in the model's (narrower under autocast).
    dtype_hint = _overflow_hint(dtype, "think in float32")
    model_hint = dtype_hint if model_dtype == dtype else _overflow_hint(
        model_dtype, f"the energy model ran in it under autocast; use --precision "
                     f"{'bf16 or fp32' if model_dtype == torch.float16 else 'fp32'}")
    noise_hint = f"; or the Langevin noise (langevin_std = {langevin_std:.4g}) is too large" if langevin_std else ""
    if not finite(start):
        return f"the candidate thinking starts from is not finite {at}; it holds NaN or Inf"
    if not finite(noisy):
        return (f"Langevin noise with langevin_std = {langevin_std:.4g} makes the candidate non-finite {at}; "
                f"langevin_std must be finite and small next to the candidate's scale{dtype_hint}")
    if not finite(p):
        return f"preparing the candidate (the task's prepare) makes it non-finite {at}{dtype_hint}{noise_hint}"
    if not finite(e):
        return (f"the energy is not finite {at}: NaN or Inf in the model's weights or its input "
                f"(ebt.load_run refuses non-finite weights){model_hint}{noise_hint}")
    if not finite(g):
        return f"∇E is not finite {at}; lower think.step_size or the learning rate{model_hint}{noise_hint}"
    if not finite(alpha_t):
        return (f"step size α = {alpha:.4g} makes the candidate non-finite at step {step}; α must be finite and "
                "> 0 (think.step_size, --step-size)")
    return (f"the step α·∇E overflows {dtype} (largest finite value {torch.finfo(dtype).max:.4g}) {at}, "
            f"max |∇E| = {float(g.abs().max()):.4g}; lower the step size"
            + (", or think in float32" if torch.finfo(dtype).bits <= 16 else ""))


def _overflow_hint(dtype: torch.dtype, fix: str) -> str:
    """'; or a value overflowed float16 …: `fix`' for 16-bit dtypes, '' for wider ones."""
    if torch.finfo(dtype).bits > 16:
        return ""
    return f"; or a value overflowed {dtype} (largest finite value {torch.finfo(dtype).max:.4g}): {fix}"


def _without_autocast(t: Tensor):
    """A region where autocast leaves t's arithmetic in t's own dtype (CPU and CUDA are the
    devices autocast runs on; elsewhere there is nothing to switch off)."""
    if t.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def lowest_energy_sample(energies: Tensor) -> Tensor:
    """Self-verification: per position, the index (B, 1, S) of the sample with the lowest energy among (B, M, S)."""
    return energies.argmin(dim=1, keepdim=True)


def take_sample(t: Tensor, index: Tensor) -> Tensor:
    """t (B, M, S, …) at a per-position sample index (B, 1, S) → (B, S, …)."""
    trailing = t.shape[3:]
    index = index.view(*index.shape, *(1 for _ in trailing)).expand(*index.shape, *trailing)
    return t.gather(1, index).squeeze(1)


# --- Per-example draws (training: one seed per example, `ebt.data.batches.Batch`) --------------------


def _stream_seed(seed: int, stream: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + stream) % 2**63


def example_normal(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, stream: int = 0) -> torch.Tensor:
    """Standard normal numbers (b, *shape): row i drawn from a generator seeded by (seeds[i],
    `stream`), on `device`, so an example's draws do not depend on the other examples of its
    batch; different streams give independent draws for one example."""
    rows = [torch.randn(shape, generator=torch.Generator(device=device).manual_seed(_stream_seed(int(s), stream)),
                        device=device, dtype=dtype) for s in seeds.tolist()]
    return torch.stack(rows) if rows else torch.empty((0, *shape), device=device, dtype=dtype)


def example_randint(seeds: torch.Tensor, high: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Tensor:
    """One integer in [0, high) per example (b,) int64, from its seed (as `example_normal`)."""
    rows = [torch.randint(0, high, (), generator=torch.Generator(device=device).manual_seed(_stream_seed(int(s), stream)),
                          device=device) for s in seeds.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, dtype=torch.int64, device=device)
