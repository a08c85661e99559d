"""The paper's thinking evaluation (SPEC §4): `ebt eval RUN --suite paper`.

For the run's validation split (in distribution) and each out-of-distribution set (KJV Bible,
Austen, Dyck languages, arithmetic), perplexity
at every thinking budget on the paper's axis — 2 steps (as trained, no extra thinking), 3
steps (thinking longer), then best-of-2/5/10 at 3 steps (self-verification): 2, 3, 6, 15, 30
forward passes (`forward_passes` also counts the scoring pass that best-of-M needs). From
those: the OOD shift (dataset ppl / in-distribution ppl, both without thinking) and the %
improvement from thinking, beside a Transformer++ run's perplexity when one is given.

The verifier (`ebt.verifier.diagnose`), per dataset under "verifier": on the first
min(max_windows, 16) windows, best-of-10 at 3 steps with every candidate kept: how often the
energy picks the best of the 10, the share of the mean → oracle gap its pick closes, the rank
correlation of energy and loss across the 10, soft selection's loss, and a per-step trace of the
descent to 6 steps. Its cost: 16 windows × 70 passes (10 samples × 6 steps and the scoring
pass) per dataset, against 73 passes per window for the budgets (2 + 3 + 8 + 20 + 40): a quarter
more at the default 64 windows, about twice the budgets' cost at 16 windows or fewer.

Uncertainty (SPEC §4): the Spearman correlation of per-token energy with per-token loss, a
heatmap of per-token energies across thinking steps for a sample text, and the mean energy of
random characters against real text.

Plots written to `out`: thinking_curve.png, gain_vs_shift.png, energy_heatmap.png,
energy_vs_loss.png.

Every run is scored at `precision` (autocast, `ebt.evaluate`), by default the one it trained at.
"""

from __future__ import annotations

import dataclasses
import random
import string
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebt import plots
from ebt.data.tokens import TokenSplit, encode_split, sequential_windows
from ebt.data.corpus import load_corpus
from ebt.data.probes import OOD_SETS
from ebt.errors import ConfigError, DataError
from ebt.evaluate import Scoring, evaluate
from ebt.models import is_energy_based
from ebt.options import ThinkingOptions
from ebt.rundata import load_data
from ebt.runs import Run
from ebt.verifier import diagnose

# (steps, samples): the paper's budgets of 2, 3, 6, 15 and 30 forward passes per token.
BUDGETS = ((2, 1), (3, 1), (3, 2), (3, 5), (3, 10))
IN_DISTRIBUTION = "validation"
# The verifier diagnostics: best-of-10 at 3 steps (the last budget), traced to twice its steps,
# on at most 16 windows per dataset.
VERIFIER_STEPS, VERIFIER_SAMPLES = BUDGETS[-1]
VERIFIER_WINDOWS = 16


def suite_datasets(run: Run, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """Token streams: the run's validation split, then each OOD set whole, in the run's tokenizer
    (only `names`, in this order, when given; ConfigError naming the sets for another)."""
    names = (IN_DISTRIBUTION, *OOD_SETS) if names is None else names
    unknown = [n for n in names if n not in (IN_DISTRIBUTION, *OOD_SETS)]
    if unknown:
        raise ConfigError(f"sets {', '.join(map(repr, unknown))} not known; the suite's sets are "
                          f"{', '.join((IN_DISTRIBUTION, *OOD_SETS))}", field="sets")
    streams = {IN_DISTRIBUTION: load_data(run.config, run.path).validation} if IN_DISTRIBUTION in names else {}
    for name in (n for n in names if n != IN_DISTRIBUTION):
        corpus = load_corpus(name)
        streams[name] = encode_split(corpus.train + corpus.validation, run.tokenizer, run.config.data.layout, name)
    return streams


def paper_suite(
    run: Run,
    *,
    baseline: Run | None = None,
    out: Path | None = None,
    max_windows: int = 64,
    options: ThinkingOptions | None = None,
    scoring: Scoring | None = None,
    **given,
) -> dict:
    """Run the suite on an EBT run. The suite sets steps and samples per budget; the other
    `options` (step_size, langevin_std) apply to every budget, and setting steps, samples or
    tolerance is a ConfigError. `scoring` (a Scoring, or its fields as keywords: device, batch_size,
    seed, precision) applies to both runs; its precision None (the default) scores each at its own
    train.precision."""
    options = options or ThinkingOptions()
    scoring = Scoring.of(scoring, given, precision=None)
    if not is_energy_based(run.model) and run.config.model.task == "text":
        raise ConfigError("the paper suite evaluates an EBT run; pass a Transformer++ run as its baseline",
                          field="baseline")
    mine, theirs = _check_suite_runs("paper", run, baseline, options, scoring)
    streams = suite_datasets(run)
    datasets: dict[str, dict] = {}
    for name, tokens in streams.items():
        entry = thinking_budgets(run.model, tokens, options, scoring=mine, max_windows=max_windows)
        entry["verifier"] = verifier(run.model, tokens, options, scoring=mine, max_windows=max_windows)
        if baseline is not None:
            entry |= _figures(baseline.model, tokens, theirs, max_windows, "transformer_")
        datasets[name] = entry
    in_ppl = datasets[IN_DISTRIBUTION]["budgets"][0]["ppl"]
    for entry in datasets.values():
        entry["ood_shift"] = entry["budgets"][0]["ppl"] / in_ppl
    result = {"run": str(run.path), "baseline": str(baseline.path) if baseline else None,
              "max_windows": max_windows, "datasets": datasets,
              "uncertainty": uncertainty(run, streams[IN_DISTRIBUTION], scoring=mine, out=out)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plots.plot_thinking_curves(
            {n: [(b["budget"], b["ppl"]) for b in e["budgets"]] for n, e in datasets.items()},
            out / "thinking_curve.png",
            baselines={n: e["transformer_ppl"] for n, e in datasets.items()} if baseline else None,
        )
        plots.plot_gain_vs_shift({n: (e["ood_shift"], e["gain_self_verify_pct"]) for n, e in datasets.items()},
                                 out / "gain_vs_shift.png")
        result["plots"] = sorted(str(p) for p in out.glob("*.png"))
    return result


def _figures(model, tokens: Tensor | TokenSplit, scoring: Scoring, max_windows: int, prefix: str = "") -> dict:
    """A model's perplexity without thinking (a Transformer++, or an EBT as trained), and its bits
    per byte when its run has a tokenizer: {prefix + "ppl", prefix + "bpb"}."""
    summary = evaluate(model, tokens, scoring=scoring, max_windows=max_windows).summary()
    return {prefix + name: summary[name] for name in ("ppl", "bpb") if name in summary}


def _check_suite_runs(suite: str, run: Run, baseline: Run | None, options: ThinkingOptions,
                      scoring: Scoring) -> tuple[Scoring, Scoring | None]:
    """ConfigError unless `run` is a text run and `baseline` (if any) a text Transformer++ run with
    the same tokenizer, and `options` leave the budgets to the suite; the scoring of each run (at
    its own train.precision when `scoring` names none)."""
    fixed = set(options.given()) & {"steps", "samples", "tolerance"}
    if fixed:
        raise ConfigError(f"the {suite} suite sets its own thinking budgets; drop the thinking options "
                          f"{', '.join(sorted(fixed))}", field=min(fixed))
    if run.config.model.task != "text":
        raise ConfigError(f"the {suite} suite scores language models; {run.path} is a {run.config.model.task!r} run",
                          field="suite")
    if baseline is not None and (baseline.config.model.task != "text" or is_energy_based(baseline.model)):
        raise ConfigError(f"baseline = {str(baseline.path)!r} is a {baseline.config.model.task} "
                          f"{baseline.config.model.kind} run; the baseline must be a text Transformer++ run",
                          field="baseline")
    if baseline is not None and baseline.tokenizer.to_json() != run.tokenizer.to_json():
        raise ConfigError("the baseline was trained with a different tokenizer; perplexities would not be comparable",
                          field="baseline")
    return scoring.for_run(run), (scoring.for_run(baseline) if baseline is not None else None)


def downstream_suite(
    run: Run,
    *,
    baseline: Run | None = None,
    max_examples: int = 200,
    options: ThinkingOptions | None = None,
    sets: tuple[str, ...] | None = None,
    scoring: Scoring | None = None,
    **given,
) -> dict:
    """The paper's downstream measure (SPEC §7, Table 3): on each downstream set
    (`ebt.data.downstream`; all of DOWNSTREAM_SETS unless `sets`), the perplexity of the reference
    answers given their questions, answer tokens only, over the first `max_examples` pairs; an EBT
    at each budget of the paper suite (BUDGETS), a Transformer++ `run` or `baseline` without
    thinking; and the same on the run's pretraining validation split (`max_examples` windows).
    `scoring`: as `paper_suite`'s.

    A prompt longer than a model's context keeps its last tokens (the question comes last); how
    many were cut is reported per set. A set that is not installed is left out and named with the
    reason in ``missing`` (set → `not_installed`'s reason: no registry serves it, an install step
    failed, or nothing installed); DataError naming `make downstream-data` when none is installed,
    ConfigError as `paper_suite` for runs that cannot be compared."""
    from ebt.data.downstream import DOWNSTREAM_SETS, load_downstream, not_installed, nothing_installed
    from ebt.data.pairs import encode_pairs

    options = options or ThinkingOptions()
    mine, theirs = _check_suite_runs("downstream", run, baseline, options,
                                     Scoring.of(scoring, given, precision=None))
    if baseline is not None and not is_energy_based(run.model):
        raise ConfigError("a baseline is the Transformer++ scored beside an EBT run; this run is a Transformer++ itself",
                          field="baseline")
    if baseline is not None and baseline.config.model.context_len != run.config.model.context_len:
        raise ConfigError(f"baseline = {str(baseline.path)!r} reads {baseline.config.model.context_len} tokens "
                          f"(model.context_len) and {run.path} {run.config.model.context_len}: their answers would be "
                          "scored given different parts of the prompts; compare runs of one context length",
                          field="baseline")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ConfigError(f"max_examples = {max_examples!r} is not allowed; it must be an integer ≥ 1")
    names = sets or DOWNSTREAM_SETS
    missing = {name: why for name in names if (why := not_installed(name)) is not None}
    if len(missing) == len(names):
        raise DataError(nothing_installed(names))
    pairs = {name: load_downstream(name, limit=max_examples) for name in names if name not in missing}

    def score(tokens: Tensor | TokenSplit) -> dict:
        if is_energy_based(run.model):
            return thinking_budgets(run.model, tokens, options, scoring=mine, max_windows=max_examples)
        return _figures(run.model, tokens, mine, max_examples)

    datasets = {IN_DISTRIBUTION: score(load_data(run.config, run.path).validation) | {"pairs": None}}
    if baseline is not None:
        scored = load_data(baseline.config, baseline.path).validation
        datasets[IN_DISTRIBUTION] |= _figures(baseline.model, scored, theirs, max_examples, "transformer_")
    for name, examples in pairs.items():
        encoded = encode_pairs(examples, run.tokenizer, run.config.model.context_len + 1, name, cut_prompts=True)
        entry = score(encoded.split)
        entry.update(pairs=len(examples), prompts_cut=encoded.cut_prompts, answers_cut=encoded.cut_answers)
        if baseline is not None:
            theirs_encoded = encode_pairs(examples, baseline.tokenizer, baseline.config.model.context_len + 1, name,
                                          cut_prompts=True)
            entry |= _figures(baseline.model, theirs_encoded.split, theirs, max_examples, "transformer_")
        datasets[name] = entry
    return {"run": str(run.path), "baseline": str(baseline.path) if baseline else None, "kind": run.config.model.kind,
            "max_examples": max_examples, "datasets": datasets, "missing": missing}


def thinking_budgets(model, tokens: Tensor | TokenSplit, options: ThinkingOptions | None = None, *,
                     scoring: Scoring | None = None, max_windows: int | None = None, **given) -> dict:
    """An EBT's perplexity on token ids (N,) at each of the paper's budgets (BUDGETS), and the %
    improvement from thinking longer (3 steps against 2), from self-verification (best-of-10
    against 2 steps) and at the best budget. `options` (step_size, langevin_std, …) apply to every
    budget, the selection options (selection_temperature, score_decoded) to the best-of-M ones; `scoring` (or its fields as keywords) and `max_windows` go to `evaluate`."""
    options = options or ThinkingOptions()
    scoring = Scoring.of(scoring, given)
    budgets = []
    for steps, samples in BUDGETS:
        # Selection options (soft selection, decoded scoring) choose among samples: best-of-M budgets only.
        alone = {} if samples > 1 else {"selection_temperature": None, "score_decoded": False}
        budget = dataclasses.replace(options, steps=steps, samples=samples, **alone)
        windows = evaluate(model, tokens, budget, scoring=scoring, max_windows=max_windows)
        budgets.append({"steps": steps, "samples": samples, "budget": steps * samples, **windows.summary()})
    ppl = [b["ppl"] for b in budgets]
    return {"tokens": budgets[0]["tokens"], "budgets": budgets,
            "gain_think_longer_pct": 100 * (ppl[0] - ppl[1]) / ppl[0],
            "gain_self_verify_pct": 100 * (ppl[0] - ppl[-1]) / ppl[0],
            "gain_best_pct": 100 * (ppl[0] - min(ppl)) / ppl[0]}


def verifier(model, tokens: Tensor | TokenSplit, options: ThinkingOptions, *, scoring: Scoring,
             max_windows: int) -> dict:
    """The verifier's figures for the suite (`ebt.verifier.CandidateScores.summary`): best-of-10 at
    3 steps on min(max_windows, 16) windows, traced to 6 steps; `options` (step_size, langevin_std)
    as for the budgets. It measures the argmin pick (and soft selection at several temperatures)
    itself, so the selection options are not passed on."""
    steps = dataclasses.replace(options, steps=VERIFIER_STEPS, selection_temperature=None, score_decoded=False)
    return diagnose(model, tokens, steps, scoring=scoring, max_windows=min(max_windows, VERIFIER_WINDOWS),
                    samples=VERIFIER_SAMPLES, trace_steps=2 * VERIFIER_STEPS).summary()


def uncertainty(run: Run, tokens: Tensor | TokenSplit, *, scoring: Scoring | None = None, out: Path | None = None,
                windows: int = 8, heatmap_tokens: int = 96) -> dict:
    """Per-token energy against per-token loss, and random characters against real text, thinking
    on `scoring.device` at `scoring.precision` (None, the default: the run's train.precision)
    from `scoring.seed`."""
    scoring = (scoring or Scoring(precision=None)).for_run(run)
    model, s, device = run.model, run.config.model.context_len, scoring.device
    generator = scoring.generator()
    # Whole windows of text, whatever the run's layout: this compares energies position by position.
    packed = TokenSplit.of(tokens).with_layout("packed")
    batch = next(sequential_windows(packed, s + 1, windows)).to(device)  # (W, S+1)
    x, targets = batch[:, :-1], batch[:, 1:]
    with scoring.autocast():
        thought = model.think(x, score_final=True, generator=generator)
    energy = thought.energies[-1]  # (W, S): energy of the final prediction
    loss = torch.nn.functional.cross_entropy(thought.y.transpose(1, 2).float(), targets, reduction="none")
    rho = plots.spearman(energy.flatten().cpu().numpy(), loss.flatten().cpu().numpy())

    rng = random.Random(scoring.seed)
    noise_text = "".join(rng.choice(string.ascii_letters + string.punctuation + " ") for _ in range(4 * s))
    noise = torch.tensor(run.tokenizer.encode(noise_text)[: s], device=device)[None]  # (1, S)
    with scoring.autocast():
        noise_energy = float(model.think(noise, score_final=True, generator=generator).energies[-1].mean())
    real_energy = float(energy.mean())

    result = {"spearman_energy_loss": rho, "tokens": energy.numel(),
              "mean_energy_real_text": real_energy, "mean_energy_random_characters": noise_energy}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plots.plot_energy_vs_loss(energy.flatten().cpu().numpy(), loss.flatten().cpu().numpy(),
                                  out / "energy_vs_loss.png", spearman=rho)
        n = min(heatmap_tokens, s)
        sample = x[:1, -n:]  # (1, n): a sample text
        with scoring.autocast():
            trace = model.think(sample, steps=model.think_config.steps + 2, score_final=True, generator=generator)
        heat = np.stack([e[0].cpu().numpy() for e in trace.energies])  # (steps + 1, n)
        labels = [run.tokenizer.decode([int(t)]) for t in targets[0, -n:]]
        plots.plot_energy_heatmap(heat, labels, out / "energy_heatmap.png",
                                  title="Energy of each next-token prediction across thinking steps")
    return result
