"""`ebt prepare-data` and `ebt downstream-data`: data made once, before training or scoring.

`prepare-data` tokenizes a corpus into memory-mapped shards (`ebt.data.prepared`) that
`ebt train --data DIR` and `ebt eval` read a window at a time; `downstream-data` installs the
paper's downstream sets as prompt/answer JSON lines (`ebt.data.downstream`).
"""

from __future__ import annotations

import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ebt.checks import check, check_int, check_real
from ebt.commands.common import directory, json_field, option, required
from ebt.config import MAX_BPE_VOCAB
from ebt.data.corpus import KNOWN_CORPORA, corpus_files
from ebt.data.downstream_install import install
from ebt.data.prepared import DEFAULT_SHARD_TOKENS, is_prepared, prepare
from ebt.errors import ConfigError, Interrupted
from ebt.files import standard_json


@dataclass
class PrepareDataArgs:
    """`ebt prepare-data`: tokenize a corpus once into memory-mapped shards (`ebt.data.prepared`)."""

    source: str = required("corpus name (e.g. shakespeare), or path to a .txt, .jsonl, .jsonl.gz, .jsonl.zst or "
                           ".parquet file or a directory of them", positional=True)
    out: Path = required("directory to write", parse=directory)
    tokenizer: str = option("byte", "byte (default), bpe (trained on the training split), gpt2, or a tokenizer.json "
                                    "/ run directory to reuse its tokenizer")
    bpe_vocab_size: int | None = option(None, "with --tokenizer bpe (default 2048)")
    validation_fraction: float = option(0.1, "share of the documents held out for validation")
    text_field: str = option("text", "the field (JSON lines) or column (parquet) holding each document")
    shard_tokens: int = option(DEFAULT_SHARD_TOKENS, "a new shard file starts once one holds this many tokens; "
                                                     "documents are never split (default 2^28)")
    overwrite: bool = option(False, "replace a prepared directory at --out")
    json: bool = json_field("print the index as one JSON object")

    def __post_init__(self) -> None:
        check_int("bpe_vocab_size", self.bpe_vocab_size, 257, MAX_BPE_VOCAB, optional=True, unset="2048")
        if self.bpe_vocab_size is not None and self.tokenizer != "bpe":
            raise ConfigError(f"bpe_vocab_size sizes a BPE trained on the corpus; it goes with tokenizer 'bpe', "
                              f"not {self.tokenizer!r}", field="bpe_vocab_size")
        check_int("shard_tokens", self.shard_tokens, 1, 1 << 40)
        check_real("validation_fraction", self.validation_fraction, 0.0, 0.5, low_open=True)
        check("text_field", self.text_field, bool(self.text_field), "a field or column name")


def prepare_data_command(args: PrepareDataArgs) -> int:
    def stop(signum, frame):  # SIGTERM (kill, slurm) and SIGHUP (a closed terminal) clean up as Ctrl-C does
        raise Interrupted(f"prepare-data: stopped by {signal.Signals(signum).name}; nothing was written", 128 + signum)

    source = Path(args.source).expanduser()
    # A corpus directory's files, listed (and an ebt output refused) before the long tokenizing.
    files = (corpus_files(source) if args.source not in KNOWN_CORPORA and source.is_dir() and not is_prepared(source)
             else None)
    hangup = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, *hangup)}
    try:
        index = prepare(args.source, args.out, args.tokenizer, args.bpe_vocab_size or 2048, args.validation_fraction,
                        args.shard_tokens, args.overwrite, text_field=args.text_field)
    except Interrupted as e:
        print(f"ebt {e}", file=sys.stderr)
        return e.exit_code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if files is not None:  # the corpus directory's files: numbers for --json, a line for people
        index["files"] = files.counts() if args.json else files.summary()
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
    if files is not None:
        print(f"  files: {index['files']}")
    print(f"train on it with `ebt train --preset ... --data {shlex.quote(str(args.out))}` (add --data.layout=padded "
          "for the paper's one-document-per-window layout)")
    return 0


@dataclass
class DownstreamDataArgs:
    """`ebt downstream-data [--dir DIR]`: install the paper's downstream sets (`ebt.data.downstream`)."""

    dir: Path | None = option(None, "where to install (default: $EBT_DOWNSTREAM_DIR, else ~/.cache/ebt/downstream)",
                              parse=directory)


def downstream_data_command(args: DownstreamDataArgs) -> int:
    install(args.dir)
    return 0
