"""The commands `ebt train | eval | generate | denoise | prepare-data | bench | scale run | scale fit`, on typed
arguments.

`ebt.cli` turns the command line into one of the argument classes below and calls the matching
function; Python code can do the same without argparse:

    from ebt.commands import EvalArgs, evaluate
    evaluate(EvalArgs(run=Path("runs/ebt"), options=ThinkingOptions(steps=4), json=True))

Each argument class checks its values when it is made (ConfigError naming the option, the value
and what is allowed). Each command prints its report and returns the process's exit code.
`eval`, `generate` and `denoise` run the model at `precision` (autocast: 'fp32', 'bf16', 'fp16' on
CUDA; `ebt.precision`), by default the one the run trained at (its config's train.precision).
`eval` and `generate` with `compile` run inference through torch.compile (`ebt.compiled`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ebt.compiled import check_compile
from ebt.files import standard_json
from ebt.errors import ConfigError, Interrupted
from ebt.options import ThinkingOptions
from ebt.precision import check_precision

MAX_COUNT = 10**9  # far past any useful count; an int beyond it is a typo
SUITES = ("paper", "downstream")  # ebt eval --suite


def _check_int(flag: str, value, low: int, high: int = MAX_COUNT, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{flag} = {value!r} is not allowed; it must be an integer in [{low}, {high}]")


def _check_real(flag: str, value, low: float, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ConfigError(f"{flag} = {value!r} is not allowed; it must be {allowed}")


def _device(request: str):
    from ebt.distributed import Distributed, pick_device

    return pick_device(request, Distributed())[0]


def _check_precision(precision: str | None, device: str) -> None:
    """--precision, when given: one of ebt.precision.PRECISIONS, fp16 only on a CUDA device."""
    if precision is not None:
        check_precision(precision, _device(device), "--precision")


def _check_compile(compile: bool, device: str) -> None:
    """--compile, when given: torch.compile must be able to run on the device here."""
    if compile:
        check_compile(_device(device))


def _precision(precision: str | None, run, device) -> str:
    """--precision, or when not given the precision `run` trained at (checked against the device)."""
    if precision is not None:
        return precision
    check_precision(run.config.train.precision, device, f"{run.path}'s train.precision (the default of --precision)")
    return run.config.train.precision


# --- train ---------------------------------------------------------------------------------------


@dataclass
class TrainArgs:
    """`ebt train`: a preset (or, with resume, the run's saved config) and `section.key` overrides.

    A directory that holds a run is refused unless `resume` (continue it: its saved config is the
    base of the overrides, which may change train.* fields but not the seed or batch size) or
    `overwrite` (replace it). With `resume`, `preset` is optional and must be of the run's kind."""

    out: Path
    preset: str | None = None
    data: str | None = None  # sets data.corpus
    overrides: list[tuple[str, str]] = field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.data is not None and any(key == "data.corpus" for key, _ in self.overrides):
            raise ConfigError("--data and --data.corpus both set the corpus; give one of them")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
        if self.preset is None and not self.resume:
            raise ConfigError("--preset is required to start a run (e.g. --preset text-ebt-tiny); "
                              "only --resume may leave it out")


def train(args: TrainArgs) -> int:
    from ebt.checkpoint import load_config
    from ebt.presets import preset
    from ebt.train import train as run_training

    if args.resume:
        config = load_config(args.out)  # the run's own config is the base of any overrides
        if args.preset is not None:
            named = preset(args.preset).model
            if (named.kind, named.task) != (config.model.kind, config.model.task):
                raise ConfigError(f"--preset {args.preset} is a {named.task} {named.kind} run but {args.out} holds a "
                                  f"{config.model.task} {config.model.kind} run; drop --preset to resume it")
    else:
        config = preset(args.preset)
    config = config.with_overrides(([("data.corpus", args.data)] if args.data is not None else []) + args.overrides)
    try:
        result = run_training(config, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except Interrupted as e:
        print(f"ebt train: {e}", file=sys.stderr)
        return e.exit_code
    if result:  # the main process of a distributed run reports for all
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"validation {shown}; run saved in {args.out}")
    return 0


@dataclass
class FinetuneArgs:
    """`ebt finetune RUN --data PAIRS --out DIR`: a new run in `out` that starts from the weights,
    tokenizer and config of the run in `run` (train.init), trained on `data` with `overrides` on
    top; the same trainer, checkpoints and resume as `ebt train`. On prompt/answer pairs
    (`ebt.data.pairs`) the layout is set to 'padded' and the loss is on the answers only; on a
    corpus it is continued pretraining. `resume` continues the fine-tuning run in `out`."""

    run: Path
    out: Path
    data: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
        if self.data is None and not self.resume:
            raise ConfigError("--data is required: the prompt/answer pairs (.jsonl) or the corpus to fine-tune on")
        fixed = [key for key, _ in self.overrides if key in ("data.corpus", "train.init")]
        if fixed:
            raise ConfigError(f"--{fixed[0]} is set by `ebt finetune` (--data, and the run it starts from); drop it")


def finetune(args: FinetuneArgs) -> int:
    from ebt.checkpoint import load_config
    from ebt.data.pairs import is_pairs_file

    if args.resume:
        init = load_config(args.out).train.init
        if not init or Path(init) != args.run.expanduser().resolve():
            raise ConfigError(f"--resume: the run in {args.out} was " + (f"fine-tuned from {init}" if init else
                              "not fine-tuned from a run") + f", not from {args.run}; pass that run, or resume "
                              f"with `ebt train --resume --out {args.out}`")
        return train(TrainArgs(out=args.out, data=args.data, overrides=args.overrides, resume=True, quiet=args.quiet))
    base = load_config(args.run)  # names the directory when it is not a run
    pairs = is_pairs_file(args.data)
    fixed = [("data.layout", "padded")] if pairs else []
    overrides = [("train.init", str(args.run))] + fixed + args.overrides
    layout = [value for key, value in args.overrides if key == "data.layout"]
    if pairs and layout and layout[-1] != "padded":
        raise ConfigError(f"data.layout = {layout[-1]!r}: prompt/answer pairs are one example each ('padded'); drop it")
    config = base.with_overrides([("data.corpus", args.data)] + overrides)
    from ebt.train import train as run_training

    try:
        result = run_training(config, args.out, overwrite=args.overwrite, quiet=args.quiet)
    except Interrupted as e:
        print(f"ebt finetune: {e}", file=sys.stderr)
        return e.exit_code
    if result:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"validation {shown}; fine-tuned run saved in {args.out}")
    return 0


# --- eval ----------------------------------------------------------------------------------------


@dataclass
class EvalArgs:
    """`ebt eval`: score a run on its validation split (or other data), or run the paper suite."""

    run: Path
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    data: str | None = None
    max_examples: int | None = None  # windows (text), images or clips
    batch_size: int = 16
    seed: int = 0
    json: bool = False
    suite: str | None = None
    baseline: Path | None = None
    plots: Path | None = None
    device: str = "auto"
    precision: str | None = None  # None: the run's train.precision
    compile: bool = False  # inference through torch.compile (ebt.models.compiled_inference)

    def __post_init__(self) -> None:
        _check_precision(self.precision, self.device)
        _check_compile(self.compile, self.device)
        _check_int("--max-examples", self.max_examples, 1, optional=True)
        _check_int("--batch-size", self.batch_size, 1, 65536)
        _check_int("--seed", self.seed, 0, 2**63 - 1)
        if self.suite not in (None, *SUITES):
            raise ConfigError(f"--suite = {self.suite!r} is not allowed; it must be 'paper' or 'downstream'")
        if self.baseline is not None and self.suite is None:
            raise ConfigError("--baseline goes with --suite paper or --suite downstream")


def evaluate(args: EvalArgs) -> int:
    from ebt.models import compiled_inference
    from ebt.runs import load_run

    from ebt.evaluate import Scoring

    scoring = Scoring(_device(args.device), args.precision, args.batch_size, args.seed)
    run = load_run(args.run, scoring.device)
    mine = scoring.for_run(run, "--precision")  # the run's own precision, checked here
    if args.suite:
        return _suite(args, run, scoring)
    scoring, precision = mine, mine.precision
    task = run.config.model.task
    if args.plots is not None and task != "video":
        raise ConfigError("--plots goes with --suite paper (text runs) or with video EBT runs; for image runs "
                          "use `ebt denoise RUN --vs OTHER --plots DIR`")
    score = {"text": _eval_text, "image": _eval_image, "video": _eval_video}[task]
    with compiled_inference(run.model, args.compile):
        result, line = score(args, run, scoring)
    result["precision"] = precision
    if args.options.given():  # the thinking options set, so saved results can be told apart
        result["thinking"] = args.options.given()
    given = f"; thinking {args.options.describe()}" if args.options.given() else ""
    print(standard_json(result) if args.json else f"{line}; precision {precision}{given}")
    return 0


def _eval_text(args: EvalArgs, run, scoring) -> tuple[dict, str]:
    """Loss and perplexity on the run's validation split, or on another corpus whole, or on the
    answers of prompt/answer pairs (with exact match)."""
    from ebt.data.corpus import load_corpus
    from ebt.data.pairs import is_pairs_file
    from ebt.data.prepared import is_prepared, open_prepared
    from ebt.data.tokens import encode_split
    from ebt.evaluate import evaluate as score
    from ebt.rundata import load_data, resolve_source
    from ebt.rundata.text import check_prepared_tokenizer

    cfg = run.config
    own = args.data is None or resolve_source(args.data) == cfg.data.corpus
    if is_pairs_file(cfg.data.corpus if own else args.data):
        return _eval_pairs(args, run, scoring, own)
    if own:
        source, split = cfg.data.corpus, "validation"  # never score the text a run trained on
        tokens = load_data(cfg, run.path).validation
    elif is_prepared(args.data):  # a prepared corpus may be large: its held-out split only
        source, split = args.data, "validation"
        prepared = open_prepared(args.data)
        check_prepared_tokenizer(prepared, cfg, run.path)
        tokens = prepared.split("validation", cfg.data.layout)
    else:
        source, split = args.data, "all"
        corpus = load_corpus(args.data, cfg.data.validation_fraction)
        tokens = encode_split(corpus.train + corpus.validation, run.tokenizer, cfg.data.layout, f"corpus {args.data!r}")
    result = score(run.model, tokens, args.options, scoring=scoring, max_windows=args.max_examples).summary()
    result = {"run": str(args.run), "kind": cfg.model.kind, "data": source, "split": split, **result}
    line = (f"{args.run} ({cfg.model.kind}) on {source} [{split}]: loss {result['loss']:.4f} nats/token, "
            f"ppl {result['ppl']:.4g}, {result['tokens']:,} tokens, {_passes(result, 'token')}")
    return result, line


def _eval_pairs(args: EvalArgs, run, scoring, own: bool) -> tuple[dict, str]:
    """Loss and perplexity of the answers given their prompts, and the share answered exactly by
    greedy decoding: every pair of a pairs file, or (`own`) the validation pairs of a run trained
    on pairs."""
    from ebt.data.pairs import encode_pairs, read_pairs
    from ebt.evaluate import evaluate as score
    from ebt.rundata import load_data

    window = run.config.model.context_len + 1
    if own:
        source, split, cut = run.config.data.corpus, "validation", None
        tokens = load_data(run.config, run.path).validation
    else:
        source, split = args.data, "all"
        encoded = encode_pairs(read_pairs(args.data), run.tokenizer, window, args.data)
        tokens, cut = encoded.split, encoded.cut_answers
    windows = score(run.model, tokens, args.options, scoring=scoring, max_windows=args.max_examples)
    result = {**windows.summary(), "exact_match": int(windows.greedy.sum()) / max(len(windows), 1)}
    pairs = min(tokens.examples(window), args.max_examples or tokens.examples(window))
    result = {"run": str(args.run), "kind": run.config.model.kind, "data": source, "split": split, "pairs": pairs,
              **({"answers_cut": cut} if cut is not None else {}), **result}
    line = (f"{args.run} ({run.config.model.kind}) on {source} [{split}, {pairs} pairs]: answer loss "
            f"{result['loss']:.4f} nats/token, ppl {result['ppl']:.4g}, exact match {result['exact_match']:.3f}, "
            f"{result['tokens']:,} answer tokens, {_passes(result, 'token')}"
            + (f"; {cut} answers cut at the context's end" if cut else ""))
    return result, line


def _passes(result: dict, unit: str) -> str:
    """"N forward passes per token" (and, with adaptive thinking, the mean steps taken)."""
    passes = result["forward_passes"]
    text = f"{passes:g} forward pass{'' if passes == 1 else 'es'} per {unit}"
    return text + (f" ({result['mean_steps']:.3g} steps on average)" if "mean_steps" in result else "")


def _eval_image(args: EvalArgs, run, scoring) -> tuple[dict, str]:
    """PSNR at the training noise level on the validation split, or on every image of --data."""
    from ebt.data.images import load_images
    from ebt.evaluate import denoise_metrics
    from ebt.rundata import load_data, resolve_source

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


def _eval_video(args: EvalArgs, run, scoring) -> tuple[dict, str]:
    """Errors on the run's validation clips against copying the last frame; --plots draws the
    EBT's energy along the clips."""
    from ebt.files import atomic_write
    from ebt.evaluate import energy_by_frame, evaluate_clips
    from ebt.models import is_energy_based
    from ebt.rundata.video import CORPUS, clips, encode

    if args.data is not None:
        raise ConfigError(f"a video run is scored on its own validation clips ({CORPUS}); drop --data")
    if args.plots is not None and not is_energy_based(run.model):
        raise ConfigError("--plots draws the energy along clips: EBT runs only (a Transformer++ has no energy)")
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
        from ebt.plots import plot_energy_by_frame

        profile = energy_by_frame(run.model, latents, appears, args.options, **common)
        args.plots.mkdir(parents=True, exist_ok=True)
        atomic_write(args.plots / "energy_by_frame.json", lambda p: p.write_text(standard_json(profile) + "\n"))
        path = plot_energy_by_frame(profile, args.plots / "energy_by_frame.png")
        result["energy_by_frame"] = profile
        line += f"; energy along clips in {path}"
    return result, line


def _suite(args: EvalArgs, run, scoring) -> int:
    from ebt.models import compiled_inference
    from ebt.runs import load_run
    from ebt.suite import BUDGETS, downstream_suite, paper_suite

    if args.data:
        raise ConfigError(f"--suite {args.suite} sets its own data; drop --data")
    if args.suite == "downstream" and args.plots is not None:
        raise ConfigError("--plots goes with --suite paper; the downstream suite prints a table (--json: all figures)")
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
        return 0
    if args.suite == "downstream":
        _print_downstream(result)
        return 0
    head = "".join(f"{f'{s}x{m}' if m > 1 else f'{s} steps':>11}" for s, m in BUDGETS)
    print(f"perplexity by thinking budget (forward passes: {', '.join(str(s * m) for s, m in BUDGETS)})")
    print(f"{'dataset':<12}{'shift':>10}{head}{'longer':>10}{'verify':>10}{'T++':>11}")
    for name, e in result["datasets"].items():
        ppl = "".join(f"{b['ppl']:>11.5g}" for b in e["budgets"])
        tpp = f"{e['transformer_ppl']:>11.5g}" if "transformer_ppl" in e else f"{'':>11}"
        print(f"{name:<12}{e['ood_shift']:>10.4g}{ppl}{e['gain_think_longer_pct']:>9.3g}%"
              f"{e['gain_self_verify_pct']:>9.3g}%{tpp}")
    u = result["uncertainty"]
    print(f"uncertainty: Spearman(energy, loss) = {u['spearman_energy_loss']:.3f} over {u['tokens']} tokens; "
          f"mean energy real text {u['mean_energy_real_text']:.4f} vs random characters {u['mean_energy_random_characters']:.4f}")
    print(f"plots in {plots}")
    return 0


def _print_downstream(result: dict) -> None:
    """The downstream suite as a table: perplexity of the answers by thinking budget (EBT), and the
    Transformer++ beside it."""
    from ebt.suite import BUDGETS

    entries = result["datasets"]
    thinking = any("budgets" in e for e in entries.values())
    print(f"answer perplexity given the question, {result['run']} ({result['kind']}); the validation row: the "
          "pretraining validation split" + ("; columns: thinking steps, then best of M candidates at 3 steps"
                                            if thinking else ""))
    head = "".join(f"{f'{s}x{m}' if m > 1 else f'{s} steps':>11}" for s, m in BUDGETS) if thinking else f"{'ppl':>11}"
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


@dataclass
class DownstreamDataArgs:
    """`ebt downstream-data [--dir DIR]`: install the paper's downstream sets (`ebt.data.downstream`)."""

    dir: Path | None = None


def downstream_data(args: DownstreamDataArgs) -> int:
    from ebt.data.downstream import install

    install(args.dir)
    return 0


# --- generate ------------------------------------------------------------------------------------


@dataclass
class GenerateArgs:
    """`ebt generate`: continue a prompt (text runs) or a validation clip (video runs)."""

    run: Path
    prompt: str | None = None  # text runs
    max_new_tokens: int = 200
    temperature: float = 1.0  # 0 = greedy
    cache: bool = True
    frames: int = 4  # video runs: conditioning frames
    length: int | None = None  # video runs: frames to predict (default: to the clip's end)
    clip: int = 0  # video runs: which validation clip
    out: Path | None = None  # video runs: PNG strip path
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    seed: int = 0
    device: str = "auto"
    precision: str | None = None  # None: the run's train.precision
    compile: bool = False  # inference through torch.compile (ebt.models.compiled_inference)

    def __post_init__(self) -> None:
        _check_precision(self.precision, self.device)
        _check_compile(self.compile, self.device)
        _check_int("--max-new-tokens", self.max_new_tokens, 0, 1_000_000)
        _check_real("--temperature", self.temperature, 0.0, "a finite number ≥ 0 (0 = greedy)")
        _check_int("--frames", self.frames, 1)
        _check_int("--length", self.length, 1, 100_000, optional=True)
        _check_int("--clip", self.clip, 0)
        _check_int("--seed", self.seed, 0, 2**63 - 1)


def generate(args: GenerateArgs) -> int:
    from ebt.models import compiled_inference
    from ebt.runs import load_run

    device = _device(args.device)
    run = load_run(args.run, device)
    task = run.config.model.task
    if task == "image":
        raise ConfigError(f"{run.path} is an image run: it denoises rather than generates; use `ebt denoise {run.path}`")
    precision = _precision(args.precision, run, device)
    with compiled_inference(run.model, args.compile):
        print((_generate_text if task == "text" else _generate_video)(args, run, device, precision))
    return 0


def _generate_text(args: GenerateArgs, run, device, precision: str) -> str:
    from ebt.generate import generate as continue_ids

    if args.prompt is None:
        raise ConfigError("text runs continue a prompt: give --prompt TEXT")
    prompt = run.tokenizer.encode(args.prompt)
    ids = continue_ids(run.model, prompt, args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                       device=device, cache=args.cache, options=args.options, precision=precision)
    # Decoded from ids, prompt included: a prompt of raw bytes (not UTF-8) prints as U+FFFD.
    return run.tokenizer.decode(prompt + ids)


def _generate_video(args: GenerateArgs, run, device, precision: str) -> str:
    """A rollout from K frames of a validation clip, written as PNG strip (truth above, prediction
    below) and GIF (side by side)."""
    from ebt.files import atomic_write
    from ebt.data.video import write_gif, write_strip
    from ebt.generate import rollout
    from ebt.rundata.video import clips

    if args.prompt is not None:
        raise ConfigError("a video run continues clips, not prompts: drop --prompt; use --frames K --length N")
    frames, _ = clips(run.config, "validation")
    count, k = frames.shape[1], args.frames
    length = count - k if args.length is None else args.length
    if not 1 <= k <= count or length < 1:
        raise ConfigError(f"--frames must be in [1, {count}] and --length ≥ 1; got --frames {k}, --length {length}")
    if not 0 <= args.clip < len(frames):
        raise ConfigError(f"--clip = {args.clip} is not allowed; the run has {len(frames)} validation clips (0 … {len(frames) - 1})")
    encoder = run.frame_encoder
    truth = torch.from_numpy(frames[args.clip]).float() / 255  # (T, H, W)
    latents = encoder.encode(truth).to(device)  # (T, C)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    predicted = rollout(run.model, latents[None, :k], length, args.options, generator=generator,
                        precision=precision)[0]  # (N, C)
    decoded = encoder.decode(predicted.cpu()).clamp(0, 1).numpy()  # (N, H, W)
    shown = np.concatenate((truth[:k].numpy(), decoded))  # (K+N, H, W): context, then prediction
    true_row = np.zeros_like(shown)
    true_row[:min(count, k + length)] = truth[:k + length].numpy()
    out = Path(args.out) if args.out is not None else run.path / "generated.png"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the PNG path to write (a GIF is written beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".png"), lambda p: write_strip(np.stack((true_row, shown)), p))
    atomic_write(out.with_suffix(".gif"), lambda p: write_gif(np.concatenate((true_row, shown), axis=-1), p))
    known = min(length, count - k)
    errors = ((predicted[:known].cpu() - latents[k:k + known].cpu()) ** 2).mean(-1).tolist()
    per_frame = ", ".join(f"{e:.3f}" for e in errors)
    return (f"{length} frames predicted from {k} of validation clip {args.clip}: {out.with_suffix('.png')} "
            f"(top: truth, bottom: context then prediction), {out.with_suffix('.gif')}\n"
            f"latent mse per predicted frame vs truth: {per_frame or '(past the clip)'}")


# --- denoise -------------------------------------------------------------------------------------


@dataclass
class DenoiseArgs:
    """`ebt denoise`: PSNR of an image run at several noise levels, optionally beside a second run."""

    run: Path
    noise: str = "0.1,0.2"  # comma-separated noise levels λ
    vs: Path | None = None
    plots: Path | None = None
    images: int = 256
    repeats: int = 1
    batch_size: int = 64
    seed: int = 0
    json: bool = False
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    device: str = "auto"
    precision: str | None = None  # for both runs; None: each run's train.precision

    def __post_init__(self) -> None:
        from ebt.denoise import parse_levels

        _check_precision(self.precision, self.device)
        parse_levels(self.noise)
        _check_int("--images", self.images, 1)
        _check_int("--repeats", self.repeats, 1, 100)
        _check_int("--batch-size", self.batch_size, 1, 65536)
        _check_int("--seed", self.seed, 0, 2**63 - 1)


def denoise(args: DenoiseArgs) -> int:
    from ebt.denoise import noise_report, parse_levels, validation_images, write_plots
    from ebt.runs import load_run

    levels = parse_levels(args.noise)
    if args.plots is not None and args.vs is None:
        raise ConfigError("--plots draws the comparison with --vs OTHER_RUN; give --vs or drop --plots")
    device = _device(args.device)
    runs = [load_run(args.run, device)] + ([load_run(args.vs, device)] if args.vs else [])
    for run in runs:
        if run.config.model.task != "image":
            raise ConfigError(f"{run.path} is a {run.config.model.task} run; ebt denoise scores image runs")
    precisions = [_precision(args.precision, run, device) for run in runs]
    images = validation_images(runs[0], args.images)
    reports = []
    for run, precision in zip(runs, precisions):
        # Thinking options are for the first run; the --vs run is scored as trained.
        mine = run is runs[0]
        reports.append(noise_report(run, images, levels, args.options if mine else None,
                                    repeats=args.repeats if mine else 1, batch_size=args.batch_size,
                                    seed=args.seed, device=device, precision=precision))
    if args.json:
        print(standard_json(reports[0] if len(runs) == 1 else
                        [{"run": str(r.path), "kind": r.config.model.kind, "levels": rep} for r, rep in zip(runs, reports)]))
    else:
        print(f"{len(images)} validation images; PSNR and MSE on 0–255 pixels after clamping")
        head = "".join(f"{f'{r.config.model.kind} PSNR':>12}{'passes':>8}" for r in runs)
        print(f"{'noise':>6}{'noisy PSNR':>12}{head}")
        for i, level in enumerate(levels):
            cells = "".join(f"{rep[i]['psnr']:>12.2f}{rep[i]['forward_passes']:>8g}" for rep in reports)
            print(f"{level:>6g}{reports[0][i]['noisy_psnr']:>12.2f}{cells}")
    if args.vs:
        plots = args.plots or args.run / "denoise"
        write_plots(runs, images, plots, seed=args.seed, device=device, batch_size=args.batch_size,
                    precision=args.precision)
        if not args.json:
            print(f"plots in {plots}")
    return 0


# --- prepare-data --------------------------------------------------------------------------------


@dataclass
class PrepareDataArgs:
    """`ebt prepare-data`: tokenize a corpus once into memory-mapped shards (`ebt.data.prepared`)."""

    source: str
    out: Path
    tokenizer: str = "byte"
    bpe_vocab_size: int | None = None  # with tokenizer "bpe" only (default 2048)
    validation_fraction: float = 0.1
    shard_tokens: int = 1 << 28
    overwrite: bool = False
    json: bool = False

    def __post_init__(self) -> None:
        _check_int("--bpe-vocab-size", self.bpe_vocab_size, 257, 1 << 32, optional=True)
        if self.bpe_vocab_size is not None and self.tokenizer != "bpe":
            raise ConfigError(f"--bpe-vocab-size sizes a BPE trained on the corpus; it goes with --tokenizer bpe, "
                              f"not {self.tokenizer!r}")
        _check_int("--shard-tokens", self.shard_tokens, 1, 1 << 40)
        _check_real("--validation-fraction", self.validation_fraction, 0.0, "a number in (0, 0.5]")
        if not 0 < self.validation_fraction <= 0.5:
            raise ConfigError(f"--validation-fraction = {self.validation_fraction!r} is not allowed; "
                              "it must be a number in (0, 0.5]")


def prepare_data(args: PrepareDataArgs) -> int:
    import signal

    from ebt.data.prepared import prepare

    def stop(signum, frame):  # SIGTERM (kill, slurm) cleans up as Ctrl-C does
        raise Interrupted("prepare-data: stopped by SIGTERM; nothing was written", 128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        index = prepare(args.source, args.out, args.tokenizer, args.bpe_vocab_size or 2048, args.validation_fraction,
                        args.shard_tokens, args.overwrite)
    except Interrupted as e:
        print(f"ebt {e}", file=sys.stderr)
        return e.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(standard_json(index))
        return 0
    splits, seconds = index["splits"], index["seconds"]
    tokens = sum(split["tokens"] for split in splits.values())
    print(f"prepared {index['source']} in {args.out}: {index['tokenizer']['kind']} tokenizer "
          f"({index['tokenizer']['vocab_size']:,} tokens, stored as {index['dtype']}), in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9) / 1e6:.2f}M tokens/s)")
    for name, split in splits.items():
        print(f"  {name}: {split['tokens']:,} tokens, {split['documents']:,} documents, {len(split['shards'])} shard(s)")
    print(f"train on it with `ebt train --preset ... --data {args.out}` (add --data.layout=padded for the paper's "
          "one-document-per-window layout)")
    return 0


# --- bench ---------------------------------------------------------------------------------------


@dataclass
class BenchArgs:
    """`ebt bench`: step times and ratios of the EBT and the Transformer++ of one size, side by side."""

    size: str = "tiny"
    repeats: int = 10
    prompt_len: int = 256
    new_tokens: int = 16
    memory: bool = True
    json: bool = False
    device: str = "cpu"  # the figures this project records are CPU figures; "auto" takes CUDA when there is one
    precision: str = "fp32"  # or "bf16" (autocast, as train.precision)
    overrides: list[tuple[str, str]] = field(default_factory=list)  # applied to every kind's preset
    compile: bool = False  # also measure generation compiled, side by side

    def __post_init__(self) -> None:
        from ebt.presets import PRESETS, preset

        if f"text-ebt-{self.size}" not in PRESETS:
            sizes = sorted({name.rsplit("-", 1)[1] for name in PRESETS if name.startswith("text-ebt-")})
            raise ConfigError(f"--preset {self.size!r} is not a size; known: {', '.join(sizes)}")
        for kind in ("text-ebt-", "text-ebt-s2-", "text-transformer-"):
            preset(kind + self.size).with_overrides(self.overrides)  # a ConfigError naming a bad override
        _check_int("--repeats", self.repeats, 1, 10_000)
        _check_int("--prompt-len", self.prompt_len, 1, 1_000_000)
        _check_int("--new-tokens", self.new_tokens, 1, 1_000_000)
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"--precision = {self.precision!r} is not allowed for bench; it must be 'fp32' or "
                              "'bf16' (fp16 training needs loss scaling, which the benchmark's step leaves out)")
        _device(self.device)  # a ConfigError naming the allowed devices
        _check_compile(self.compile, self.device)


def bench(args: BenchArgs) -> int:
    from ebt.bench import report, run

    result = run(args.size, args.repeats, args.prompt_len, args.new_tokens, memory=args.memory,
                 device=_device(args.device), precision=args.precision, overrides=args.overrides, compile=args.compile)
    print(standard_json(result) if args.json else report(result))
    return 0


# --- scale -----------------------------------------------------------------------------------------


@dataclass
class ScaleRunArgs:
    """`ebt scale run`: a sweep over one axis for the EBT and the Transformer++ (ebt.scaling.sweep).

    With `out` already holding a sweep, fields left None are taken from its sweep.json, and any
    given must match it. `print_commands`: write sweep.json and print the `ebt train` line of
    every point not finished, instead of running them."""

    out: Path
    axis: str | None = None
    size: str | None = None
    recipe: str | None = None
    values: list[str] | None = None
    seeds: int | None = None
    steps: int | None = None
    data: str | None = None
    windows: int | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    jobs: int = 1
    print_commands: bool = False

    def __post_init__(self) -> None:
        _check_int("--jobs", self.jobs, 1, 256)

    def sweep(self):
        from ebt.scaling.sweep import SWEEP_FILE, Sweep

        given = {"axis": self.axis, "size": self.size, "recipe": self.recipe, "values": self.values,
                 "seeds": self.seeds, "steps": self.steps, "data": self.data, "windows": self.windows,
                 "overrides": self.overrides or None}
        if (self.out / SWEEP_FILE).is_file():
            saved = Sweep.load(self.out)
            return Sweep(**{k: getattr(saved, k) if v is None else v for k, v in given.items()})
        if self.axis is None:
            raise ConfigError(f"--axis is required to start a sweep ({self.out} holds none yet); "
                              "one of data, width, depth, batch, params")
        return Sweep(**{k: v for k, v in given.items() if v is not None})


def scale_run(args: ScaleRunArgs) -> int:
    from ebt.scaling.sweep import print_commands, run_sweep, summary

    sweep = args.sweep()
    if args.print_commands:
        n = print_commands(sweep, args.out)
        print(f"# {n} point(s) to run; then: ebt scale fit {args.out}", file=sys.stderr)
        return 0
    try:
        result = run_sweep(sweep, args.out, jobs=args.jobs)
    except Interrupted as e:
        print(f"ebt scale run: {e}", file=sys.stderr)
        return e.exit_code
    print(summary(result))
    failed = [r["name"] for r in result["points"] if r["state"] != "finished"]
    if failed:
        print(f"ebt scale run: error: {len(failed)} point(s) failed: {', '.join(failed)} (their logs are in "
              f"{args.out}/logs); fix the cause and run again: ebt scale run --out {args.out}", file=sys.stderr)
        return 2
    print(f"fit it with: ebt scale fit {args.out}")
    return 0


@dataclass
class ScaleFitArgs:
    """`ebt scale fit`: the scaling rate of each model kind over the finished points of one or
    more sweep directories, its bootstrap interval, and their ratio (ebt.scaling.fit)."""

    dirs: list[Path]
    axis: str | None = None
    json: bool = False
    plots: Path | None = None
    thinking: bool = False
    skip_failed: bool = False
    replicates: int = 2000
    seed: int = 0
    device: str = "auto"
    min_x: float | None = None  # fit only the points with x in [min_x, max_x]
    max_x: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--min-x", self.min_x), ("--max-x", self.max_x)):
            if value is not None:
                _check_real(flag, value, 0, "a finite number > 0")
                if value <= 0:
                    raise ConfigError(f"{flag} = {value!r} is not allowed; it must be a finite number > 0")
        if self.min_x is not None and self.max_x is not None and self.min_x >= self.max_x:
            raise ConfigError(f"--min-x = {self.min_x:g} must be below --max-x = {self.max_x:g}")
        if not self.dirs:
            raise ConfigError("ebt scale fit needs at least one sweep directory")
        self.dirs = list({Path(d).resolve(): Path(d) for d in self.dirs}.values())  # a directory given twice counts once
        _check_int("--replicates", self.replicates, 100, 1_000_000)
        _check_int("--seed", self.seed, 0, 2**63 - 1)
        _device(self.device)


def scale_fit(args: ScaleFitArgs) -> int:
    from ebt.plots import plot_scaling
    from ebt.scaling.curves import X_LABELS, collect, curves, thinking_gains
    from ebt.scaling.fit import PAPER_RATIOS, fit_scaling, report

    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    axis, measured, excluded = collect(args.dirs, args.axis, args.skip_failed)
    low, high = args.min_x or 0.0, args.max_x or math.inf
    in_range = [m for m in measured if low <= m.x <= high]
    points = curves(in_range)
    for kind, name in (("ebt", "EBT"), ("transformer", "Transformer++")):
        xs = sorted(m.x for m in measured if m.kind == kind)
        if kind not in points and xs:
            raise ConfigError(f"no {name} point has x in [{low:g}, {high:g}] (--min-x, --max-x); "
                              f"its x run from {xs[0]:g} to {xs[-1]:g}")
        if kind not in points:
            raise ConfigError(f"{', '.join(map(str, args.dirs))}: no finished {name} point to fit"
                              + (f" ({len(excluded)} point(s) left out: {excluded[0]['run']}: {excluded[0]['why']}, …)"
                                 if excluded else ""))
    try:
        result = fit_scaling(points, reps=args.replicates, seed=args.seed)
    except ValueError as e:
        raise ConfigError(f"cannot fit {', '.join(map(str, args.dirs))}: {e}") from None
    result = {"axis": axis, "x_label": X_LABELS[axis], "sweeps": [str(d) for d in args.dirs],
              "x_range": [args.min_x, args.max_x],
              "paper_ratio": PAPER_RATIOS.get(axis), **result,
              "points_used": [{"run": str(m.run), "kind": m.kind, "seed": m.seed, "step": m.step, "x": m.x}
                              for m in in_range],
              "excluded": excluded}
    if args.thinking:
        gains = thinking_gains(in_range, _device(args.device), say=say)
        for point in result["models"].get("ebt", {}).get("points", []):
            point["thinking"] = gains.get(point["x"])
    if args.plots is not None:
        path = args.plots / f"scale-{axis}.png"
        plot_scaling(result, path, axis=axis, x_label=X_LABELS[axis])
        result["plots"] = [str(path)]
    if args.json:
        print(standard_json(result))
        return 0
    print(report(result, axis))
    if args.thinking:
        print("thinking gains of the EBT (% lower perplexity than 2 steps): x, think longer (3 steps), "
              "self-verify (best of 10)")
        for point in result["models"].get("ebt", {}).get("points", []):
            t = point.get("thinking") or {}
            print(f"  {point['x']:<12.4g} {t.get('gain_think_longer_pct', math.nan):+7.2f}% "
                  f"{t.get('gain_self_verify_pct', math.nan):+7.2f}%")
    for e in excluded:
        print(f"left out: {e['run']}{' step ' + str(e['step']) if 'step' in e else ''}: {e['why']}")
    print(f"points used: {len(in_range)} ({len({str(m.run) for m in in_range})} runs)"
          + (f"; x in [{low:g}, {high:g}]" if args.min_x or args.max_x else ""))
    if args.plots is not None:
        print(f"plot: {result['plots'][0]}")
    return 0
