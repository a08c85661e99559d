"""`ebt train` and `ebt finetune`: a preset (or a run) and `section.key` overrides into `ebt.train.train`;
`ebt consolidate`: a sharded checkpoint as one model.safetensors.

Both write an ordinary run directory (config.json, weights, train_state.pt, metrics.jsonl) and
resume it; `finetune` starts from another run's weights, tokenizer and config (train.init). The
trainer itself is `ebt.train`; the config and its overrides `ebt.config` and `ebt.presets`.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ebt.checkpoint import load_config
from ebt.config import RunConfig
from ebt.commands.common import directory, option, required
from ebt.data.pairs import is_pairs_file
from ebt.errors import ConfigError, Interrupted
from ebt.memory import naming
from ebt.models import size_options
from ebt.presets import preset
from ebt.sharded import consolidate_in_place
from ebt.train import train

OUT = "run directory to write"
QUIET = "no progress bar or config print-out"


@dataclass
class TrainArgs:
    """`ebt train`: a preset (or, with resume, the run's saved config) and `section.key` overrides.

    A directory that holds a run is refused unless `resume` (continue it: its saved config is the
    base of the overrides, which may change train.* fields but not the seed or batch size) or
    `overwrite` (replace it). With `resume`, `preset` is optional and must be of the run's kind."""

    out: Path = required(OUT, parse=directory)
    preset: str | None = option(None, "e.g. text-ebt-tiny, text-transformer-tiny, text-ebt-xxs (with --resume: "
                                      "optional, and it must be of the run's model kind and task)")
    data: str | None = option(None, "corpus name, path to a UTF-8 .txt / .jsonl file or a directory, or a directory "
                                    "made by `ebt prepare-data` (sets data.corpus)")
    overrides: list[tuple[str, str]] = field(default_factory=list)  # --section.key=value
    resume: bool = option(False, "continue the run in --out from its last checkpoint; overrides start from its "
                                 "saved config and may change train.* fields but not seed or batch_size")
    overwrite: bool = option(False, "replace the run in --out: the old run is set aside, removed once the new one "
                                    "saves its first checkpoint, and put back if it stops before")
    quiet: bool = option(False, QUIET)

    def __post_init__(self) -> None:
        if self.data is not None and any(key == "data.corpus" for key, _ in self.overrides):
            raise ConfigError("data and the override data.corpus both set the corpus; give one of them",
                              field="data.corpus")
        _one_of_resume_and_overwrite(self.resume, self.overwrite)
        if self.preset is None and not self.resume:
            raise ConfigError("preset is required to start a run (e.g. text-ebt-tiny); only resume may leave it out",
                              field="preset")


def _one_of_resume_and_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("resume continues the run in out and overwrite replaces it; set one of them",
                          field="resume")


def train_command(args: TrainArgs) -> int:
    config = _resumed_config(args) if args.resume else preset(args.preset)
    config = config.with_overrides(([("data.corpus", args.data)] if args.data is not None else []) + args.overrides)
    return _train(config, args.out, "train", "run saved", resume=args.resume, overwrite=args.overwrite,
                  quiet=args.quiet, given=[key for key, _ in args.overrides])


def _resumed_config(args: TrainArgs) -> RunConfig:
    """The config a resumed run continues from: its own, the base of any overrides."""
    config = load_config(args.out)
    if args.preset is not None:
        named = preset(args.preset).model
        if (named.kind, named.task) != (config.model.kind, config.model.task):
            raise ConfigError(f"preset {args.preset} is a {named.task} {named.kind} run but {args.out} holds a "
                              f"{config.model.task} {config.model.kind} run; leave preset out to resume it",
                              field="preset")
    return config


def _train(config: RunConfig, out: Path, name: str, saved: str, **how) -> int:
    """Train `config` into `out` and report: 0, or the exit code of the signal that stopped it. An
    allocation that fails while training is one line naming the sizes that set what it held."""
    tc = config.train
    sizes = {**size_options(config), "train.batch_size": tc.batch_size, "train.grad_accum": tc.grad_accum,
             "think.steps": config.think.steps}
    try:
        with naming("training", sizes):
            result = train(config, out, **how)
    except Interrupted as e:
        print(f"ebt {name}: {e}", file=sys.stderr)
        return e.exit_code
    if result:  # the main process of a distributed run reports for all
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"validation {shown}; {saved} in {out}")
    return 0


@dataclass
class FinetuneArgs:
    """`ebt finetune RUN --data PAIRS --out DIR`: a new run in `out` that starts from the weights,
    tokenizer and config of the run in `run` (train.init), trained on `data` with `overrides` on
    top; the same trainer, checkpoints and resume as `ebt train`. On prompt/answer pairs
    (`ebt.data.pairs`) the layout is set to 'padded' and the loss is on the answers only; on a
    corpus it is continued pretraining. `resume` continues the fine-tuning run in `out`."""

    run: Path = required("the run to start from", positional=True)
    out: Path = required(OUT, parse=directory)
    data: str | None = option(None, "required unless --resume: a .jsonl file of {\"prompt\": ..., \"answer\": ...} "
                                    "lines (the loss on the answers only), or a corpus (continued pretraining)")
    overrides: list[tuple[str, str]] = field(default_factory=list)  # --section.key=value
    resume: bool = option(False, "continue the fine-tuning run in --out")
    overwrite: bool = option(False, "replace the run in --out: the old run is set aside, removed once the new one "
                                    "saves its first checkpoint, and put back if it stops before")
    quiet: bool = option(False, QUIET)

    def __post_init__(self) -> None:
        _one_of_resume_and_overwrite(self.resume, self.overwrite)
        if self.data is None and not self.resume:
            raise ConfigError("data is required: the prompt/answer pairs (.jsonl) or the corpus to fine-tune on",
                              field="data")
        fixed = [key for key, _ in self.overrides if key in ("data.corpus", "train.init")]
        if fixed:
            raise ConfigError(f"{fixed[0]} is set by `ebt finetune` (from data, and the run it starts from); "
                              "drop the override", field=fixed[0])


def finetune_command(args: FinetuneArgs) -> int:
    if args.resume:
        init = load_config(args.out).train.init
        if not init or Path(init) != args.run.expanduser().resolve():
            raise ConfigError(f"resume: the run in {args.out} was " + (f"fine-tuned from {init}" if init else
                              "not fine-tuned from a run") + f", not from {args.run}; pass that run, or resume "
                              f"with `{shlex.join(['ebt', 'train', '--resume', '--out', str(args.out)])}`",
                              field="resume")
        return train_command(TrainArgs(out=args.out, data=args.data, overrides=args.overrides, resume=True,
                                       quiet=args.quiet))
    base = load_config(args.run)  # names the directory when it is not a run
    pairs = is_pairs_file(args.data)
    if pairs and base.model.task != "text":
        raise ConfigError(f"{args.data} holds prompt/answer pairs, which fine-tune a text run; {args.run} is an "
                          f"{base.model.task} run: fine-tune it on {base.model.task} data", field="data")
    layout = [value for key, value in args.overrides if key == "data.layout"]
    if pairs and layout and layout[-1] != "padded":
        raise ConfigError(f"data.layout = {layout[-1]!r}: prompt/answer pairs are one example each ('padded'); "
                          "drop it", field="data.layout")
    fixed = [("data.layout", "padded")] if pairs else []
    config = base.with_overrides([("data.corpus", args.data), ("train.init", str(args.run))] + fixed + args.overrides)
    return _train(config, args.out, "finetune", "fine-tuned run saved", overwrite=args.overwrite, quiet=args.quiet,
                  given=[key for key, _ in args.overrides])


@dataclass
class ConsolidateArgs:
    """`ebt consolidate RUN`: the newest sharded checkpoint of a run (train.checkpoint_format =
    'sharded') written as one model.safetensors in the run directory (`ebt.sharded`)."""

    run: Path = required("the run directory whose shards to consolidate", positional=True)


def consolidate_command(args: ConsolidateArgs) -> int:
    print(consolidate_in_place(args.run))
    return 0
