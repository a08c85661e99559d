"""Best-of-M self-verification (SPEC §4): the inference thinking both EBTs share.

`think_samples` descends M candidates per position from the model's start, together, on the
energy (`ebt.think.think`); `think_best_of` keeps, per position, the one of lowest final energy,
or with soft selection the mixture of all M weighted by their energies. The options that steer
the choice (`samples`, `selection_temperature`, `score_decoded`, `accept_steps`) are declared in
`ebt.options.ThinkingOptions`; `ebt.verifier` measures how well the energy chooses.

A model here is an EBT (`ebt.energy`): its `task`, `think_config`, `initial_candidate(x, M,
generator)`, `alpha` and `step_size`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ebt.errors import ConfigError
from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.think import Thought, lowest_energy_sample, think


def think_best_of(model: nn.Module, energy: Callable[[Tensor, int], Tensor], x: Tensor, options: ThinkingOptions, *,
                  generator: torch.Generator | None, score_final: bool) -> Thought:
    """Inference thinking shared by both EBTs, best of M (self-verification, SPEC §4): the M =
    `options.samples` candidates of `think_samples`, the lowest final energy kept per position —
    or, with `options.selection_temperature` τ, the trace of that sample with the mixture
    Σ softmax(−E/τ)·p of all M as its prediction (the task's `mix`). `forward_passes` counts every
    energy evaluation, all samples included."""
    thought = think_samples(model, energy, x, options, generator=generator, score_final=score_final)
    final = thought.energies[-1]  # (B, M, S)
    # With one sample this picks it; with M the one of lowest final energy, per position.
    picked = thought.take_sample(lowest_energy_sample(final))
    if options.selection_temperature is not None:
        # From each position's lowest energy: −(E − E_min)/τ ≤ 0, so a tiny τ gives weights (1, 0, …), never inf − inf.
        # In float64: τ below float32's range (1e-300) would round to 0 and make 0/0.
        gap = (final - final.amin(dim=1, keepdim=True)).double()
        weights = torch.softmax(-gap / options.selection_temperature, dim=1).to(final.dtype)
        picked.candidates[-1] = model.task.mix(thought.y, weights)
    return picked


def think_samples(model: nn.Module, energy: Callable[[Tensor, int], Tensor], x: Tensor, options: ThinkingOptions, *,
                  generator: torch.Generator | None, score_final: bool = True) -> Thought:
    """Every candidate of best-of-M before any is picked: M = `options.samples` candidates per
    position from the model's start for input x (text: ids (B, S)), descended together on `energy`
    (`landscapes(x)`); candidates (B, M, S, C), energies (B, M, S), and with `score_final` (or
    M > 1) the final energies last — scored at what each candidate decodes to with
    `options.score_decoded` (the task's `decoded`; ConfigError for a task without one).
    `forward_passes` counts every energy evaluation, all samples included (`ebt.verifier`
    measures how well the energy picks among them)."""
    options.check_selection()
    samples, steps = options.samples, model.think_config.steps if options.steps is None else options.steps
    if samples > 1 and model.think_config.start_std == 0 and not options.langevin_std:
        raise ConfigError(f"samples = {samples} would run {samples} identical candidates: this model starts every "
                          "sample at zero (think.start_std = 0); add Langevin noise (ThinkingOptions.langevin_std) so "
                          "that they differ, or use samples = 1", field="langevin_std")
    decoded = getattr(model.task, "decoded", None)
    if options.score_decoded and decoded is None:
        raise ConfigError(f"score_decoded = true scores a candidate at what it decodes to, which the candidate "
                          f"of a {model.config.task} run already is; use it for text", field="score_decoded")
    y = model.initial_candidate(x, samples, generator)  # (B, M, S, C)
    scoring = score_final or samples > 1
    thought = think(
        energy,
        y,
        steps=steps,
        step_size=model.alpha.detach() if options.step_size is None else options.step_size,
        prepare=model.task.prepare,
        langevin_std=options.langevin_std,
        tolerance=options.tolerance,
        generator=generator,
        score_final=scoring and not options.score_decoded,
        optimizer=options.optimizer(InnerOptimizer.of(model.think_config)),
        accept_steps=options.accept_steps,
    )
    if scoring and options.score_decoded:
        with torch.no_grad():
            e = energy(decoded(thought.y), steps)
        e = e.to(torch.promote_types(e.dtype, thought.y.dtype))
        if options.accept_steps:  # its own scoring pass checked the last step; this one replaces it
            thought.energies[-1] = e
        else:
            thought.energies.append(e)
        thought.forward_passes += 1
    thought.forward_passes *= samples  # every step (and the scoring pass) ran on M samples
    return thought
