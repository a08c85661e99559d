"""Verifier diagnostics: how well an EBT's energy picks among its own candidates, and how its
descent behaves step by step (SPEC §4, self-verification).

Best-of-M (`ebt.best_of.think_best_of`) descends M candidates per position from independent
starts and keeps the one of lowest final energy. `diagnose` keeps all M
(`ebt.best_of.think_samples`) and asks, position by position: do the energies order the
candidates as their losses do (Spearman's ρ across the M), is the energy's pick the best
candidate, and how much of the gap between the mean candidate and the best one (an oracle) does
the pick close. It asks the same after every step of a descent run past the pick's steps (twice
them by default), so that thinking past the trained steps is seen.

- `CandidateScores`: the records, one row per scored position (windows pooled in stream order),
  each candidate's loss and energy after each step; `summary()` reduces them.
- `diagnose`: those records for a text EBT on a token stream.

Losses are cross-entropy at the position's target, in nats per token; energies in the model's
own units. Read next: `ebt/suite.py` (the paper suite reports `diagnose` per dataset) and
`benchmarks/verifier_diagnostics.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebt.checks import check_int
from ebt.data.tokens import PAD, TokenSplit, split_window
from ebt.best_of import think_samples
from ebt.errors import ConfigError, DataError
from ebt.evaluate import Scoring, evaluating, scoring_for_model
from ebt.models import is_energy_based
from ebt.options import MAX_SAMPLES, MAX_THINKING_STEPS, ThinkingOptions
from ebt.tasks.text import NextToken
from ebt.think import Thought

# Soft selection's temperatures τ (energy units) that `summary` reports: the mixture of the M
# candidates weighted by softmax(−E/τ), from nearly the argmin (0.01) to nearly the plain mean (10).
TEMPERATURES = (0.01, 0.1, 1.0, 10.0)


@dataclass
class CandidateScores:
    """What `diagnose` gives: one row per scored position (P), windows pooled in stream order; T
    steps of the descent, M candidates per position.

    loss: (P, T, M) float64, the cross-entropy (nats) of each candidate after each step at its target.
    energy: (P, T, M) float64, the energy of each candidate after each step: what a descent of
        that many steps scores it by (best-of-M's final scoring pass).
    agree: (P, T, M) bool, whether the candidate's most likely token is the first candidate's.
    start_energy: (P, M) float64, the energy of the random starts.
    pick_step: the step whose candidates best-of-M returns (ThinkingOptions.steps, or as trained).
    """

    loss: Tensor
    energy: Tensor
    agree: Tensor
    start_energy: Tensor
    pick_step: int

    def __len__(self) -> int:
        return len(self.loss)

    def summary(self, temperatures: tuple[float, ...] = TEMPERATURES) -> dict:
        """The figures at the pick step, nats per token: `spearman` (mean over positions of the
        rank correlation of energy and loss across the M; positions where either ties throughout
        are left out and counted in `spearman_skipped`), `pick_is_best` (share of positions whose
        lowest-energy candidate has the lowest loss, ties counting as best), `picked_loss`,
        `mean_loss` (the mean candidate), `oracle_loss` (the best per position), `gap_closed`
        ((mean − picked) / (mean − oracle); NaN when no candidate beats another), `soft_loss`
        (per τ: the loss of the mixture Σ softmax(−E/τ)ᵢ·softmax(yᵢ)), `ensemble_loss` (τ → ∞,
        the plain mixture), `argmax_agreement` (share of candidates whose most likely token is the
        first candidate's), `energy_spread` (mean over positions of the energies' std across the
        M), `start_energy` (the mean energy of the random starts); and `trace`, per step 1 … T:
        the candidates' mean energy and loss, and the pick's figures had it been made there."""
        t = self.pick_step - 1
        loss, energy = self.loss[:, t], self.energy[:, t]  # (P, M)
        rho, skipped = rank_correlations(energy, loss)
        return {
            "positions": len(self), "samples": self.loss.shape[2], "steps": self.pick_step,
            "trace_steps": self.loss.shape[1],
            "spearman": float(rho.mean()) if len(rho) else math.nan, "spearman_skipped": skipped,
            **picking(loss, energy),
            "soft_loss": {f"{tau:g}": soft_loss(loss, energy, tau) for tau in temperatures},
            "ensemble_loss": soft_loss(loss, energy, math.inf),
            "argmax_agreement": float(self.agree[:, t].double().mean()),
            "energy_spread": float(energy.std(dim=1).mean()),
            "start_energy": float(self.start_energy.mean()),
            "trace": [self.at_step(step) for step in range(1, self.loss.shape[1] + 1)],
        }

    def at_step(self, step: int) -> dict:
        """Step `step` (1 … T): the candidates' `mean_energy`, and `picking`'s figures (their
        `mean_loss` among them)."""
        check_int("step", step, 1, self.loss.shape[1], note=" (the steps traced)")
        loss, energy = self.loss[:, step - 1], self.energy[:, step - 1]
        return {"step": step, "mean_energy": float(energy.mean()), **picking(loss, energy)}

    @classmethod
    def cat(cls, parts: list[CandidateScores]) -> CandidateScores:
        """The records of consecutive batches as one (at least one part)."""
        columns = ("loss", "energy", "agree", "start_energy")
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in columns), parts[0].pick_step)


def picking(loss: Tensor, energy: Tensor) -> dict[str, float]:
    """Best-of-M's choice among candidates with losses and energies (P, M): the lowest energy, as
    `ebt.think.lowest_energy_sample` (the first on ties). Its `picked_loss` beside the `mean_loss`
    and `oracle_loss`, `pick_is_best` and `gap_closed` (see `CandidateScores.summary`)."""
    picked = loss.gather(1, energy.argmin(dim=1, keepdim=True)).squeeze(1)  # (P,)
    best = loss.min(dim=1).values  # (P,)
    mean, picked_mean, oracle = float(loss.mean()), float(picked.mean()), float(best.mean())
    return {"picked_loss": picked_mean, "mean_loss": mean, "oracle_loss": oracle,
            "pick_is_best": float((picked <= best).double().mean()),
            "gap_closed": (mean - picked_mean) / (mean - oracle) if mean > oracle else math.nan}


def soft_loss(loss: Tensor, energy: Tensor, temperature: float) -> float:
    """Mean loss (nats) of soft selection: per position, the mixture of the M candidates'
    distributions weighted by softmax(−E/τ) (τ = `temperature`; math.inf: equal weights), scored
    at the target; from losses and energies (P, M). τ → 0 is the argmin's loss (on distinct
    energies), τ → ∞ the plain ensemble's, at most the mean candidate's (−log is convex)."""
    if math.isinf(temperature):
        weights = torch.full_like(energy, -math.log(energy.shape[1]))
    else:
        if not temperature > 0:
            raise ConfigError(f"temperature = {temperature!r} is not allowed; it must be a number > 0 (math.inf: the "
                              "plain ensemble)", field="temperature")
        gap = (energy - energy.amin(dim=1, keepdim=True)).double()  # float64: a τ below float32's range is not 0
        weights = torch.log_softmax(-gap / temperature, dim=1).to(loss.dtype)  # (P, M): log wᵢ
    return float(-torch.logsumexp(weights - loss, dim=1).mean())  # −log Σ wᵢ pᵢ(target)


def rank_correlations(a: Tensor, b: Tensor) -> tuple[Tensor, int]:
    """Spearman's ρ of each row of a and b (P, M) (ties share their mean rank): the ρ of every row
    where neither is constant, and how many rows were left out for being constant."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    norm = (ra.pow(2).sum(dim=1) * rb.pow(2).sum(dim=1)).sqrt()  # (P,)
    kept = norm > 0
    return (ra * rb).sum(dim=1)[kept] / norm[kept], int((~kept).sum())


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks 1 … M along each row of v (P, M), tied values sharing their mean rank."""
    below = (v.unsqueeze(2) > v.unsqueeze(1)).sum(dim=2)  # (P, M): values below each
    tied = (v.unsqueeze(2) == v.unsqueeze(1)).sum(dim=2)  # itself included
    return below.double() + (tied.double() + 1) / 2


def diagnose(
    model: nn.Module,
    tokens: Tensor | TokenSplit,
    options: ThinkingOptions | None = None,
    *,
    scoring: Scoring | None = None,
    max_windows: int = 16,
    samples: int = 10,
    trace_steps: int | None = None,
    **given,
) -> CandidateScores:
    """The verifier's records of a text EBT on token ids (N,) or a TokenSplit (padding is not
    scored): best-of-`samples` on the first `max_windows` windows (as `ebt.evaluate.evaluate`
    reads them), every candidate kept, the descent run for `trace_steps` steps (default: twice the
    pick's). `diagnose(...).summary()` gives the figures.

    `options` (a ThinkingOptions, or its fields as keywords) say how the model thinks; the pick is
    made after `options.steps` steps (None: as trained), and the steps up to `trace_steps` show
    thinking longer. The candidates of each step are those a descent of that many steps would
    return, from the same starts (with Langevin noise, their energies are scored again without
    it). `scoring` (or its fields as keywords) as `evaluate`'s. Memory: T·M·B·S·V floats of
    candidates per batch of B windows.

    ConfigError naming the field for: a model other than a text EBT (`model`), samples < 2,
    max_windows < 1, trace_steps below the pick's steps, adaptive thinking (`tolerance`: positions
    would stop at different steps), `options.samples` other than 1 or `samples`, and as
    `evaluate` for the scoring.
    """
    given, thinking = Scoring.split(given)
    scoring = scoring_for_model(scoring, given)
    options = ThinkingOptions.of(options, **thinking)
    _check_text_ebt(model)
    for name in ("selection_temperature", "score_decoded"):
        if getattr(options, name) not in (None, False):
            raise ConfigError(f"ThinkingOptions.{name} = {getattr(options, name)!r} is not measured here: the verifier "
                              "reports the energy's argmin pick and soft selection at several temperatures "
                              "(summary's soft_loss) from the same candidates; leave it unset", field=name)
    check_int("samples", samples, 2, MAX_SAMPLES, note=" (the candidates per position the energy picks among)")
    check_int("max_windows", max_windows, 1)
    if options.tolerance is not None:
        raise ConfigError(f"ThinkingOptions.tolerance = {options.tolerance!r} is not allowed here; the verifier "
                          "compares candidates step by step, and adaptive thinking stops positions at different "
                          "steps: leave it unset", field="tolerance")
    if options.samples not in (1, samples):
        raise ConfigError(f"ThinkingOptions.samples = {options.samples} differs from samples = {samples}; give the "
                          "candidates per position once, as samples", field="samples")
    pick = options.steps if options.steps is not None else model.think_config.steps
    trace = check_int("trace_steps", 2 * pick if trace_steps is None else trace_steps, pick, MAX_THINKING_STEPS,
                      note=f" (the pick is made after {pick} steps; the trace runs at least as far)")
    options = dataclasses.replace(options, steps=trace, samples=samples)
    generator, parts = scoring.generator(), []
    with evaluating(model):
        for batch in TokenSplit.of(tokens, "evaluation split").windows(model.config.context_len + 1,
                                                                        scoring.batch_size, max_windows):
            x, targets = split_window(batch.to(scoring.device))  # (B, S) each
            with scoring.autocast():
                energy = model.landscapes(x, differentiable=False)
                thought = think_samples(model, energy, x, options, generator=generator, score_final=True)
                energies = _candidate_energies(model, energy, thought, options.langevin_std)
            parts.append(_records(thought, energies, targets, pick))
    if not parts:
        raise DataError(f"the tokens hold no window of model.context_len + 1 = {model.config.context_len + 1} "
                        "tokens to score")
    return CandidateScores.cat(parts)


def _check_text_ebt(model: nn.Module) -> None:
    """ConfigError unless `model` is a text EBT (an energy over next-token candidates)."""
    if is_energy_based(model) and isinstance(getattr(model, "task", None), NextToken):
        return
    config = getattr(model, "config", None)
    what = f"a {config.task} {config.kind} model" if config is not None else f"a {type(model).__name__}"
    raise ConfigError(f"the verifier diagnostics need a text EBT (an energy to rank next-token candidates by); "
                      f"model is {what}", field="model")


def _candidate_energies(model: nn.Module, energy, thought: Thought, langevin_std: float) -> list[Tensor]:
    """The energy (B, M, S) of each step's candidates as a descent of that many steps would score
    them (landscape t for the candidates after step t): read from the trace, where step t + 1
    started from them, unless Langevin noise was added there (then scored again)."""
    steps = len(thought.candidates)
    energies = thought.energies[1:steps + 1]  # the last one: the final scoring pass
    if not langevin_std:
        return energies
    with torch.no_grad():
        again = [energy(model.task.prepare(c), t + 1) for t, c in enumerate(thought.candidates[:-1])]
    return [e.to(energies[-1].dtype) for e in again] + [energies[-1]]


def _records(thought: Thought, energies: list[Tensor], targets: Tensor, pick: int) -> CandidateScores:
    """The rows of one batch's scored positions: candidates (B, M, S, V) and energies (B, M, S) per
    step, targets (B, S) (PAD: not scored)."""
    scored = targets != PAD  # (B, S)
    index = targets.clamp_min(0)[:, None, :, None]  # (B, 1, S, 1)
    loss, agree = [], []
    for y in thought.candidates:  # (B, M, S, V)
        logp = torch.log_softmax(y.to(torch.promote_types(y.dtype, torch.float32)), dim=-1)
        loss.append(-logp.gather(-1, index.expand(*y.shape[:-1], 1)).squeeze(-1))  # (B, M, S)
        top = y.argmax(dim=-1)  # (B, M, S)
        agree.append(top == top[:, :1])

    def rows(per_step: list[Tensor]) -> Tensor:  # T × (B, M, S) → (P, T, M)
        return torch.stack(per_step).permute(1, 3, 0, 2)[scored].cpu()

    start = thought.energies[0].permute(0, 2, 1)[scored].double().cpu()  # (P, M)
    return CandidateScores(rows(loss).double(), rows(energies).double(), rows(agree), start, pick)
