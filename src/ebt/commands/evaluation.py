"""`ebt eval`: score a run on its validation split or other data, one scorer per modality, or run
one of the paper's suites and print its table.

Text: loss and perplexity (`ebt.evaluate.evaluate`), on prompt/answer pairs also exact match;
images: PSNR at the training noise level (`denoise_metrics`); video: frame errors against copying
the last frame (`evaluate_clips`). The suites are `ebt.suite` (SPEC §6: thinking longer,
self-verification, out-of-distribution sets, uncertainty; the downstream sets).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ebt.checks import check, check_choice, check_int
from ebt.commands.common import (MAX_COUNT, MAX_SEED, check_inference, compile_field, device_field, for_run,
                                 json_field, option, pick, precision_field, required, seed_field)
from ebt.data.corpus import load_corpus
from ebt.data.images import load_images
from ebt.data.pairs import encode_pairs, is_pairs_file, read_pairs
from ebt.data.prepared import is_prepared, open_prepared
from ebt.data.tokens import encode_split
from ebt.errors import ConfigError
from ebt.evaluate import Scoring, denoise_metrics, energy_by_frame, evaluate, evaluate_clips
from ebt.files import atomic_write, standard_json
from ebt.models import compiled_inference, is_energy_based
from ebt.plots import plot_energy_by_frame
from ebt.rundata import load_data, resolve_source
from ebt.rundata.text import check_prepared_tokenizer
from ebt.rundata.video import CORPUS, clips, encode
from ebt.runs import load_run
from ebt.suite import BUDGETS, downstream_suite, paper_suite
from ebt.options import ThinkingOptions

SUITES = ("paper", "downstream")


@dataclass
class EvalArgs:
    """`ebt eval`: score a run on its validation split (or other data), or run the paper suite."""

    run: Path = required("the run to score", positional=True)
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    data: str | None = option(None, "corpus name or path, a prepared directory (its validation split), or a .jsonl "
                                    "of prompt/answer pairs (answer loss, exact match); default: the run's validation "
                                    "split")
    text_field: str | None = option(None, "with --data: the field (JSON lines) or column (parquet) holding each "
                                          "document (default: the run's data.text_field)")
    max_examples: int | None = option(None, "score at most this many windows (text), pairs, images or clips; with "
                                            "--suite downstream, pairs per set (default 200)", aliases=["--max-windows"])
    batch_size: int = option(16, "windows (images, clips) scored at once")
    seed: int = seed_field()
    json: bool = json_field()
    suite: str | None = option(None, "paper: the thinking / OOD / uncertainty evaluation; downstream: answer "
                                     "perplexity on the paper's downstream sets (make downstream-data)", choices=SUITES)
    baseline: Path | None = option(None, "with --suite: a Transformer++ run scored alongside")
    plots: Path | None = option(None, "with --suite: where to write the plots (default: RUN/suite); video EBT runs: "
                                      "write the energy along clips there")
    device: str = device_field()
    precision: str | None = precision_field()  # None: the run's train.precision
    compile: bool = compile_field()

    def __post_init__(self) -> None:
        ThinkingOptions.of(self.options)  # a ThinkingOptions, not a dict of its fields
        check_inference(self.device, self.precision, self.compile)
        check_int("max_examples", self.max_examples, 1, MAX_COUNT, optional=True)
        check_int("batch_size", self.batch_size, 1, 65536)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_choice("suite", self.suite, SUITES, optional=True)
        if self.text_field is not None:
            check("text_field", self.text_field, bool(self.text_field) and self.data is not None,
                  "a field or column name, with --data (a run's own data keeps its data.text_field)")
        if self.baseline is not None and self.suite is None:
            raise ConfigError("baseline goes with suite 'paper' or 'downstream'", field="baseline")


def eval_command(args: EvalArgs) -> int:
    scoring = Scoring(pick(args.device), args.precision, args.batch_size, args.seed)
    run = load_run(args.run, scoring.device)
    mine = for_run(scoring, run)  # the run's own precision, checked here
    if args.suite:
        return _suite(args, run, scoring)  # the suite resolves each run's own precision
    scoring, precision = mine, mine.precision
    task = run.config.model.task
    if args.plots is not None and task != "video":
        raise ConfigError("plots goes with suite 'paper' (text runs) or with video EBT runs; for image runs "
                          "use `ebt denoise RUN --vs OTHER --plots DIR`", field="plots")
    score = {"text": _eval_text, "image": _eval_image, "video": _eval_video}[task]
    with compiled_inference(run.model, args.compile):
        result, line = score(args, run, scoring)
    result["precision"] = precision
    if args.options.given():  # the thinking options set, so saved results can be told apart
        result["thinking"] = args.options.given()
    given = f"; thinking {args.options.describe()}" if args.options.given() else ""
    print(standard_json(result) if args.json else f"{line}; precision {precision}{given}")
    return 0


def _eval_text(args: EvalArgs, run, scoring: Scoring) -> tuple[dict, str]:
    """Loss and perplexity on the run's validation split, or on another corpus whole, or on the
    answers of prompt/answer pairs (with exact match)."""
    cfg = run.config
    own = args.data is None or resolve_source(args.data) == cfg.data.corpus
    if is_pairs_file(cfg.data.corpus if own else args.data):
        return _eval_pairs(args, run, scoring, own)
    if own:
        source, split = cfg.data.corpus, "validation"  # never score the text a run trained on
        tokens = load_data(cfg, run.path).validation
    elif is_prepared(args.data):  # a prepared corpus may be large: its held-out split only
        if args.text_field is not None:
            raise ConfigError(f"text_field does not apply to {args.data!r}: a prepared corpus is tokenized already "
                              "(prepare-data --text-field chose its field)", field="text_field")
        source, split = args.data, "validation"
        prepared = open_prepared(args.data)
        check_prepared_tokenizer(prepared, cfg, run.path)
        tokens = prepared.split("validation", cfg.data.layout)
    else:
        source, split = args.data, "all"
        corpus = load_corpus(args.data, cfg.data.validation_fraction, args.text_field or cfg.data.text_field)
        tokens = encode_split(corpus.train + corpus.validation, run.tokenizer, cfg.data.layout, f"corpus {args.data!r}")
    result = evaluate(run.model, tokens, args.options, scoring=scoring, max_windows=args.max_examples).summary()
    result = {"run": str(args.run), "kind": cfg.model.kind, "data": source, "split": split, **result}
    line = (f"{args.run} ({cfg.model.kind}) on {source} [{split}]: loss {result['loss']:.4f} nats/token, "
            f"ppl {result['ppl']:.4g}{_bpb(result)}, {result['tokens']:,} tokens, {_passes(result, 'token')}")
    return result, line


def _eval_pairs(args: EvalArgs, run, scoring: Scoring, own: bool) -> tuple[dict, str]:
    """Loss and perplexity of the answers given their prompts, and the share answered exactly by
    greedy decoding: every pair of a pairs file, or (`own`) the validation pairs of a run trained
    on pairs."""
    window = run.config.model.context_len + 1
    if own:
        source, split, cut = run.config.data.corpus, "validation", None
        tokens = load_data(run.config, run.path).validation
    else:
        source, split = args.data, "all"
        encoded = encode_pairs(read_pairs(args.data), run.tokenizer, window, args.data)
        tokens, cut = encoded.split, encoded.cut_answers
    windows = evaluate(run.model, tokens, args.options, scoring=scoring, max_windows=args.max_examples)
    result = {**windows.summary(), "exact_match": int(windows.greedy.sum()) / max(len(windows), 1)}
    pairs = min(tokens.examples(window), args.max_examples or tokens.examples(window))
    result = {"run": str(args.run), "kind": run.config.model.kind, "data": source, "split": split, "pairs": pairs,
              **({"answers_cut": cut} if cut is not None else {}), **result}
    line = (f"{args.run} ({run.config.model.kind}) on {source} [{split}, {pairs} pairs]: answer loss "
            f"{result['loss']:.4f} nats/token, ppl {result['ppl']:.4g}{_bpb(result)}, "
            f"exact match {result['exact_match']:.3f}, "
            f"{result['tokens']:,} answer tokens, {_passes(result, 'token')}"
            + (f"; {cut} answers cut at the context's end" if cut else ""))
    return result, line


def _bpb(result: dict) -> str:
    """", N bits/byte" when the result has bits per byte (a run with a tokenizer)."""
    return f", {result['bpb']:.4f} bits/byte" if "bpb" in result else ""


def _passes(result: dict, unit: str) -> str:
    """"N forward passes per token" (and, with adaptive thinking, the mean steps taken)."""
    passes = result["forward_passes"]
    text = f"{passes:g} forward pass{'' if passes == 1 else 'es'} per {unit}"
    return text + (f" ({result['mean_steps']:.3g} steps on average)" if "mean_steps" in result else "")


def _eval_image(args: EvalArgs, run, scoring: Scoring) -> tuple[dict, str]:
    """PSNR at the training noise level on the validation split, or on every image of --data."""
    cfg = run.config
    if args.data is None or resolve_source(args.data) == cfg.data.corpus:
        source, split = cfg.data.corpus, "validation"
        images = load_data(cfg, run.path).splits.validation
    else:
        source, split = args.data, "all"
        splits = load_images(args.data, cfg.image.image_size, cfg.data.validation_fraction)
        images = torch.cat((splits.train, splits.validation))
    if args.max_examples is not None:
        images = images[: args.max_examples]
    level = cfg.image.noise_level
    result = denoise_metrics(run.model, images, level, args.options, scoring=scoring)
    result = {"run": str(run.path), "kind": cfg.model.kind, "data": source, "split": split, "noise": level, **result}
    line = (f"{run.path} ({cfg.model.kind}) on {source} [{split}], noise {level}: "
            f"PSNR {result['psnr']:.2f} dB (noisy {result['noisy_psnr']:.2f}), MSE {result['mse']:.2f}, "
            f"loss {result['loss']:.4f}, {result['images']} images, {_passes(result, 'image')}")
    return result, line


def _eval_video(args: EvalArgs, run, scoring: Scoring) -> tuple[dict, str]:
    """Errors on the run's validation clips against copying the last frame; `plots` draws the
    EBT's energy along the clips."""
    if args.data is not None:
        raise ConfigError(f"a video run is scored on its own validation clips ({CORPUS}); leave data out",
                          field="data")
    if args.plots is not None and not is_energy_based(run.model):
        raise ConfigError("plots draws the energy along clips: EBT runs only (a Transformer++ has no energy)",
                          field="plots")
    frames, appears = clips(run.config, "validation")
    encoder = run.frame_encoder
    latents = encode(encoder, frames)
    common = dict(scoring=scoring, max_clips=args.max_examples)
    result = evaluate_clips(run.model, latents, encoder.pixels_per_latent, args.options, **common)
    kind = run.config.model.kind
    result = {"run": str(args.run), "kind": kind, "data": CORPUS, "split": "validation", **result}
    line = (f"{args.run} ({kind}) on {CORPUS} [validation]: smooth_l1 {result['smooth_l1']:.4f} "
            f"(copy-last-frame {result['copy_smooth_l1']:.4f}), mse {result['mse']:.4f} "
            f"(copy {result['copy_mse']:.4f}), {result['frames']:,} frames, "
            f"{_passes(result, 'frame')}")
    if args.plots is not None:
        profile = energy_by_frame(run.model, latents, appears, args.options, **common)
        args.plots.mkdir(parents=True, exist_ok=True)
        atomic_write(args.plots / "energy_by_frame.json", lambda p: p.write_text(standard_json(profile) + "\n"))
        path = plot_energy_by_frame(profile, args.plots / "energy_by_frame.png")
        result["energy_by_frame"] = profile
        line += f"; energy along clips in {path}"
    return result, line


# --- the suites ------------------------------------------------------------------------------------


def _suite(args: EvalArgs, run, scoring: Scoring) -> int:
    if args.data:
        raise ConfigError(f"suite {args.suite!r} sets its own data; leave data out", field="data")
    if args.suite == "downstream" and args.plots is not None:
        raise ConfigError("plots goes with suite 'paper'; the downstream suite prints a table (json: all figures)",
                          field="plots")
    baseline = load_run(args.baseline, scoring.device) if args.baseline else None
    plots = args.plots or args.run / "suite"
    common = dict(baseline=baseline, scoring=scoring, options=args.options)
    with contextlib.ExitStack() as compiled:
        for model in [run.model] + ([baseline.model] if baseline else []):
            compiled.enter_context(compiled_inference(model, args.compile))
        if args.suite == "downstream":
            result = downstream_suite(run, max_examples=args.max_examples or 200, **common)
        else:
            result = paper_suite(run, out=plots, max_windows=args.max_examples or 64, **common)
    if args.options.given():
        result["thinking"] = args.options.given()
    if args.json:
        print(standard_json(result))
    elif args.suite == "downstream":
        _print_downstream(result)
    else:
        _print_paper(result, plots)
    return 0


def _budget_head(width: int = 11) -> str:
    return "".join(f"{f'{s}x{m}' if m > 1 else f'{s} steps':>{width}}" for s, m in BUDGETS)


def _print_paper(result: dict, plots: Path) -> None:
    """The paper suite as a table: perplexity by thinking budget per dataset, the gains, the
    Transformer++ beside it; then a line of verifier figures per dataset, and the uncertainty
    figures."""
    print(f"perplexity by thinking budget (forward passes: {', '.join(str(s * m) for s, m in BUDGETS)})")
    print(f"{'dataset':<12}{'shift':>10}{_budget_head()}{'longer':>10}{'verify':>10}{'T++':>11}")
    for name, e in result["datasets"].items():
        ppl = "".join(f"{b['ppl']:>11.5g}" for b in e["budgets"])
        tpp = f"{e['transformer_ppl']:>11.5g}" if "transformer_ppl" in e else f"{'':>11}"
        print(f"{name:<12}{e['ood_shift']:>10.4g}{ppl}{e['gain_think_longer_pct']:>9.3g}%"
              f"{e['gain_self_verify_pct']:>9.3g}%{tpp}")
    for name, e in result["datasets"].items():
        print(f"verifier on {name}: {_verifier_line(e['verifier'])}")
    u = result["uncertainty"]
    print(f"uncertainty: Spearman(energy, loss) = {u['spearman_energy_loss']:.3f} over {u['tokens']} tokens; "
          f"mean energy real text {u['mean_energy_real_text']:.4f} vs random characters "
          f"{u['mean_energy_random_characters']:.4f}")
    print(f"plots in {plots}")


def _verifier_line(v: dict) -> str:
    """The verifier diagnostics (`ebt.verifier`) of one dataset in a line."""
    gap = "no gap to close" if math.isnan(v["gap_closed"]) else \
        f"closes {100 * v['gap_closed']:.0f}% of the mean→oracle gap"
    return (f"energy picks the best of {v['samples']} at {100 * v['pick_is_best']:.0f}% of positions, {gap}, "
            f"ρ = {v['spearman']:.2f} ({v['positions']} positions, {v['steps']} steps)")


def _print_downstream(result: dict) -> None:
    """The downstream suite as a table: perplexity of the answers by thinking budget (EBT), and the
    Transformer++ beside it."""
    entries = result["datasets"]
    thinking = any("budgets" in e for e in entries.values())
    print(f"answer perplexity given the question, {result['run']} ({result['kind']}); the validation row: the "
          "pretraining validation split" + ("; columns: thinking steps, then best of M candidates at 3 steps"
                                            if thinking else ""))
    head = _budget_head() if thinking else f"{'ppl':>11}"
    baseline = result["baseline"] is not None
    print(f"{'dataset':<20}{'pairs':>7}{head}{'best gain':>11}{'T++':>11}" if thinking else
          f"{'dataset':<20}{'pairs':>7}{head}")
    for name, e in entries.items():
        pairs = f"{e['pairs']:>7}" if e.get("pairs") is not None else f"{'':>7}"
        if thinking:
            ppl = "".join(f"{b['ppl']:>11.5g}" for b in e["budgets"])
            tpp = f"{e['transformer_ppl']:>11.5g}" if baseline else f"{'':>11}"
            print(f"{name:<20}{pairs}{ppl}{e['gain_best_pct']:>10.3g}%{tpp}")
        else:
            print(f"{name:<20}{pairs}{e['ppl']:>11.5g}")
    for what, key, where in (("prompts", "prompts_cut", "their start"), ("answers", "answers_cut", "their end")):
        cut = [f"{n} {e[key]}/{e['pairs']}" for n, e in entries.items() if e.get(key)]
        if cut:
            print(f"{what} cut at {where} to fit the context: {', '.join(cut)}")
    for name, why in result.get("missing", {}).items():
        print(f"{name}: not scored, not installed: {why}")
