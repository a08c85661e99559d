"""The knobs of thinking (SPEC §1, §4), each declared once: `InnerOptimizer` and `ThinkingOptions`.

A knob is a dataclass field made by `knob`: its default, and in its metadata the help of its
command-line flag, the check of its values (`ebt.checks`) and, when a flag is not derived from
the name, its flag. Everything else is derived from these declarations:

- the checks of `InnerOptimizer`, `ThinkingOptions` and the config's `think.*` inner-optimizer
  keys (`check_fields`);
- the config's `think.momentum`, `think.nesterov`, … fields (`ebt.config.ThinkConfig`) and the
  inference overrides `ThinkingOptions.momentum`, … (`adopt`), so an inner-optimizer knob is
  declared once, in `InnerOptimizer`, and used once, in `ebt.think`;
- the command line's flags (`ebt.cli`) and lm-evaluation-harness's `model_args` (`ebt.harness`).

Read next: `think.py`, the descent these knobs steer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Callable, Iterable

from ebt.checks import check_bool, check_int, check_real
from ebt.errors import ConfigError

# Far past anything useful, and small enough that no count can exhaust memory by a typo.
MAX_THINKING_STEPS = 10_000
MAX_SAMPLES = 1024


def knob(default: Any, help: str, check: Callable[..., Any], *, unset: str | None = None, **metadata: Any) -> Any:
    """A dataclass field declaring one knob: its `default`; the `help` of its flag; `check(name,
    value, optional=, unset=, field=)`, an `ebt.checks` function with the knob's range bound
    (`partial(check_real, low=0)`); `unset`: what None means where the default is None ("as
    trained"). More metadata: "metavar" and "flag" for the command line; "inference": False for an
    inner-optimizer knob that training uses and inference does not override (no ThinkingOptions
    field, no flag)."""
    return field(default=default, metadata={"help": help, "check": check, "unset": unset, **metadata})


def check_fields(values: Any, owner: str, declared: Iterable[dataclasses.Field] | None = None, *,
                 config: bool = False) -> None:
    """Check each declared field of `values` (default: all of its class's) by its knob's check,
    naming it `owner.name` ("ThinkingOptions.steps", "think.momentum"). A field whose default is
    None may be left None. `config`: `owner` is a config section, and an error's field is the key
    ("think.momentum") rather than the bare name. Raises ConfigError."""
    for f in fields(values) if declared is None else declared:
        check = f.metadata.get("check")
        if check is not None:
            name = f"{owner}.{f.name}"
            check(name, getattr(values, f.name), optional=f.default is None, unset=f.metadata.get("unset"),
                  field=name if config else f.name)


def adopt(source: type, *, as_overrides: bool = False) -> Callable[[type], type]:
    """A class decorator, under `@dataclass`: `source`'s knobs become fields of the class too,
    after its own. As they are (the config section that trains with them), or `as_overrides`:
    each `T | None = None`, None for the value the model trained with, knobs declared with
    `inference=False` left out (inference overrides, `ThinkingOptions`)."""
    def add(cls: type) -> type:
        annotations = cls.__dict__.get("__annotations__", {})
        for f in fields(source):
            if as_overrides and not f.metadata.get("inference", True):
                continue
            metadata, default, annotation = dict(f.metadata), f.default, f.type
            if as_overrides:
                metadata.update(help=f"EBT inner optimizer: {metadata['help']} (default: as trained)",
                                unset="as trained")
                default, annotation = None, f"{f.type} | None"
            annotations[f.name] = annotation
            setattr(cls, f.name, field(default=default, metadata=metadata))
        cls.__annotations__ = annotations
        return cls

    return add


@dataclass(frozen=True)
class InnerOptimizer:
    """How a thinking step turns ∇E into the update of the candidate (plain: p − α∇E); its use is
    `ebt.think._optimizer_step`. The config's `think.*` keys of the same names train with it.

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
    logit_decay λ in [0, 1): the update is (1 − λ)·base − δ, base = y (mirror descent) or p. With
        mirror descent this is the entropy-regularised (proximal) step: the logits shrink towards
        the uniform distribution by λ each step, so the random start is forgotten geometrically
        and E cannot be lowered by sharpening alone without bound. 0: off (the paper's update).

    Raises ConfigError naming the field, the value and what is allowed.
    """

    momentum: float = knob(0.0, "momentum μ in [0, 1): a velocity per candidate (heavy ball); 0 = plain descent",
                           partial(check_real, low=0, high=1, high_open=True))
    nesterov: bool = knob(False, "Nesterov's look-ahead form of the momentum", check_bool)
    spectral_step: float = knob(0.0, "α = C / λ_max of ∇²E per position, by power iteration (0 = off)",
                                partial(check_real, low=0, note=" (0 = off)"), metavar="C")
    power_iterations: int = knob(3, "Hessian-vector products per spectral estimate",
                                 partial(check_int, low=1, high=100), inference=False)
    max_step_norm: float = knob(0.0, "bound each position's step to this L2 norm (0 = off)",
                                partial(check_real, low=0, note=" (0 = off)"))
    mirror_descent: bool = knob(False, "step from the candidate y (y − α∇E; text: the logits accumulate) instead "
                                "of from p = prepare(y)", check_bool)
    logit_decay: float = knob(0.0, "λ in [0, 1): the step shrinks what it starts from, (1 − λ)·base − α∇E (with "
                              "mirror descent: the logits decay towards uniform, forgetting the start)",
                              partial(check_real, low=0, high=1, high_open=True), metavar="LAMBDA")

    def __post_init__(self) -> None:
        InnerOptimizer.check(self, "InnerOptimizer")

    @staticmethod
    def check(values: Any, owner: str, config: bool = False) -> None:
        """Check the inner-optimizer fields of `values` (an InnerOptimizer, or the config's think
        section: `owner` "think", `config` True), and that Nesterov has a momentum to look along."""
        check_fields(values, owner, fields(InnerOptimizer), config=config)
        if values.nesterov and not values.momentum:
            raise ConfigError(f"{owner}.nesterov = true needs a momentum > 0 ({owner}.momentum = {values.momentum!r}; "
                              "Nesterov's look-ahead is along the velocity)",
                              field=f"{owner}.nesterov" if config else "nesterov")

    @classmethod
    def of(cls, values: Any) -> InnerOptimizer:
        """The inner optimizer of an object with its fields (`ebt.config.ThinkConfig`)."""
        return cls(**{f.name: getattr(values, f.name) for f in fields(cls)})


@dataclass(frozen=True)
@adopt(InnerOptimizer, as_overrides=True)
class ThinkingOptions:
    """How an EBT thinks at inference (SPEC §4), checked once where it is made. Every command and
    API takes this one object (or its fields as keywords).

    steps: thinking steps (None: as trained; more = thinking longer).
    samples: self-verification, best of M candidates from independent starts, the lowest final
        energy kept per position.
    step_size: α (None: as trained).
    langevin_std: σ of the Gaussian noise added to the candidate before each step.
    tolerance: adaptive thinking, a position stops once its energy changes by less than this.
    selection_temperature τ: soft selection, best-of-M's answer is the mixture Σ_i w_i·p_i of the
        samples' predictions with w = softmax(−E/τ) over the M final energies of a position (the
        task's `mix`; text: a mixture of distributions). τ → 0 is the argmin, τ → ∞ the plain
        ensemble. Needs samples > 1.
    score_decoded: best-of-M compares energies at what each sample decodes to (the task's
        `decoded`; text: the one-hot of its argmax token, where a greedy decoder pays its loss)
        rather than at the soft prediction; one scoring pass, as before. Needs samples > 1.
    accept_steps: a step that raises a position's energy is undone there and α halved for that
        position (backtracking), so each position's energy never rises after its first prediction
        (the first step, which leaves the random start, is always taken); the energies it compares
        are the ones the next step computes anyway (one extra scoring pass for the last step).
        Not with tolerance (a rejected step changes the energy by 0 and would stop the position).
    momentum, nesterov, spectral_step, max_step_norm, mirror_descent: the inner optimizer
        (`InnerOptimizer`'s knobs, adopted), each None for the value the model trained with (think.*).

    Raises ConfigError naming the option ("ThinkingOptions.steps"; its `field` the bare name),
    the value and what is allowed.
    """

    steps: int | None = knob(None, "EBT thinking steps (default: as trained); DiT: DDIM passes",
                             partial(check_int, low=1, high=MAX_THINKING_STEPS), unset="as trained")
    samples: int = knob(1, "EBT self-verification: best of M candidates",
                        partial(check_int, low=1, high=MAX_SAMPLES))
    step_size: float | None = knob(None, "EBT: override the trained step size α",
                                   partial(check_real, low=0, low_open=True), unset="as trained")
    langevin_std: float = knob(0.0, "EBT: noise σ added before each step", partial(check_real, low=0))
    tolerance: float | None = knob(None, "EBT adaptive thinking: a position stops when its energy changes by "
                                   "less than this", partial(check_real, low=0), unset="off")
    selection_temperature: float | None = knob(
        None, "EBT soft selection over best-of-M (samples ≥ 2): the mixture Σ softmax(−E_i/T)·p_i of the samples, "
        "T in energy units (default: off, the lowest energy's sample)", partial(check_real, low=0, low_open=True),
        unset="off", metavar="T")
    score_decoded: bool = knob(False, "EBT best-of-M (samples ≥ 2): score each sample's energy at what it decodes to (text: "
                               "the one-hot of its most likely token) instead of at its soft prediction", check_bool)
    accept_steps: bool = knob(False, "EBT step acceptance: a step that raises a position's energy is undone "
                              "there and its α halved", check_bool)

    def __post_init__(self) -> None:
        check_fields(self, "ThinkingOptions")
        if self.accept_steps and self.tolerance is not None:
            raise ConfigError(f"ThinkingOptions.accept_steps = true cannot be combined with tolerance = "
                              f"{self.tolerance!r}: an undone step changes the energy by 0 and would stop the "
                              "position; use one of them", field="accept_steps")

    def check_selection(self) -> None:
        """ConfigError when a selection option (selection_temperature, score_decoded) is set for one
        sample: there is nothing to select among. Checked where thinking runs, not where options are
        made, so that a suite can give them for its best-of-M budgets only."""
        for name in ("selection_temperature", "score_decoded"):
            if getattr(self, name) not in (None, False) and self.samples < 2:
                raise ConfigError(f"ThinkingOptions.{name} = {getattr(self, name)!r} selects among samples; it "
                                  f"needs samples ≥ 2 (samples = {self.samples})", field=name)

    def optimizer(self, trained: InnerOptimizer) -> InnerOptimizer:
        """The inner optimizer a model trained with `trained` thinks with under these options."""
        given = {f.name: getattr(self, f.name) for f in fields(InnerOptimizer)
                 if getattr(self, f.name, None) is not None}
        if given.get("nesterov", trained.nesterov) and not given.get("momentum", trained.momentum):
            # The one rule across knobs: say which side of it came from training, and the way out.
            source = {k: "given" if k in given else "as trained" for k in ("nesterov", "momentum")}
            momentum = given.get("momentum", trained.momentum)
            raise ConfigError(f"ThinkingOptions: nesterov = true ({source['nesterov']}) needs a momentum > 0, and "
                              f"momentum = {momentum!r} ({source['momentum']}); set momentum > 0, or nesterov = "
                              "false to think without Nesterov's look-ahead",
                              field="momentum" if "momentum" in given else "nesterov")
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
        """The options set, as 'steps = 3, samples = 2' (only `names`, when given)."""
        return ", ".join(f"{k} = {v!r}" for k, v in self.given().items() if names is None or k in names)

    def refused_by(self, model: str, names: set[str] | None = None) -> ConfigError:
        """The error for a model that cannot think (`model`: 'a Transformer++', 'a DiT') given these
        options (only `names`, when given); its field is the first option named."""
        given = [k for k in self.given() if names is None or k in names]
        return ConfigError(f"{model} cannot think: the thinking options {self.describe(names)} are for EBT runs only",
                           field=given[0] if given else None)
