"""A text run's data: a corpus tokenized into two splits (`TokenSplit`: in memory, or memory-mapped
from a directory made by `ebt prepare-data`), windows for training in the run's data.layout,
perplexity for validation, and the tokenizer saved with the run (`tokenizer.json`)."""

from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ebt.checkpoint import CONFIG, TOKENIZER, load_config
from ebt.files import atomic_write, read_text
from ebt.config import RunConfig
from ebt.data.batches import TrainingBatches
from ebt.data.corpus import KNOWN_CORPORA, Corpus, load_corpus
from ebt.data.pairs import encode_pairs, is_pairs_file, read_pairs, split_pairs
from ebt.data.prepared import PreparedData, is_prepared, open_prepared
from ebt.data.tokenizers import build_tokenizer, tokenizer_from_json
from ebt.data.tokens import PAD, TokenSplit, encode_split, split_window
from ebt.errors import CheckpointError, ConfigError, DataError
from ebt.evaluate import Scoring, evaluate
from ebt.rundata.fingerprint import content_hash, resolve_source, save_fingerprint

SIZES = ("model.context_len", "text.bpe_vocab_size")  # what sets the data's memory


@dataclass
class TextData:
    """A corpus's two splits, and how the trainer batches and scores them. Each split is read when
    first used (`ebt eval` needs only the validation split), and a split with no window to read
    is a DataError then."""

    tokenizer: Any
    load_split: Callable[[str], TokenSplit]  # "train" | "validation" → the split, in the run's layout
    context_len: int
    source: str  # the corpus name, or its absolute path
    fingerprint: dict[str, str]
    examples: str = "windows"  # or "pairs": prompt/answer pairs, one per example, scored on the answer
    files: str = ""  # a corpus directory's files read and left out (`CorpusFiles.summary`), for the log
    unused: dict[str, str] = field(default_factory=dict)  # config fields it leaves unused: why

    @functools.cached_property
    def train(self) -> TokenSplit:
        """The training split."""
        return self._checked("train")

    @functools.cached_property
    def validation(self) -> TokenSplit:
        """The validation split."""
        return self._checked("validation")

    def _checked(self, name: str) -> TokenSplit:
        split = self.load_split(name)
        split.check(self.context_len + 1)  # raises if too short
        return split

    @property
    def summary(self) -> str:
        return self._sizes + (f"; from the corpus directory: {self.files}" if self.files else "")

    @property
    def _sizes(self) -> str:
        if self.examples == "pairs":
            window = self.context_len + 1
            return (f"{self.train.examples(window):,} training / {self.validation.examples(window):,} validation "
                    f"prompt/answer pairs ({self.tokenizer.kind}), the loss on the answer's tokens only")
        line = f"{len(self.train):,} training / {len(self.validation):,} validation tokens ({self.tokenizer.kind}"
        if self.train.layout == "packed":
            return line + ")"
        window = self.context_len + 1
        return (line + f"; layout padded: {self.train.examples(window):,} training documents, of which windows hold "
                f"{self.train.tokens_read(window):,} tokens, the first {window} of each)")

    @property
    def overrides(self) -> dict[str, str]:
        return {"text.vocab_size": str(self.tokenizer.vocab_size), "data.corpus": self.source}

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                         micro_batches: int = 1) -> TrainingBatches:
        """Endless micro-batches of windows (b, context_len + 1) (`TokenSplit.training_batches`)."""
        return self.train.training_batches(self.context_len + 1, batch_size, seed, rank, world_size, micro_batches)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """A window (B, S+1) → context x (B, S) and next tokens (B, S), PAD where not predicted."""
        return split_window(batch)

    unit = "tokens"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return int((targets != PAD).sum())

    def validate(self, model, *, batch_size: int, max_examples: int, device) -> dict:
        """The summary of the first `max_examples` windows (`WindowScores.summary`, with bits per
        byte by the run's tokenizer), and
        "window_losses": each one's mean loss, in stream order (what a scaling fit's bootstrap
        resamples)."""
        windows = evaluate(model, self.validation, scoring=Scoring(device, batch_size=batch_size),
                           max_windows=max_examples, tokenizer=self.tokenizer)
        return {**windows.summary(), "window_losses": windows.loss.tolist()}

    def save(self, out: Path) -> None:
        save_tokenizer(out, self.tokenizer)
        save_fingerprint(out, **self.fingerprint)


def corpus_fingerprint(corpus: Corpus, source: str) -> dict[str, str]:
    """What identifies a corpus: its source and a hash of its documents, split by split."""
    parts = [b"train"] + [d.encode("utf-8", "surrogatepass") for d in corpus.train]
    parts += [b"validation"] + [d.encode("utf-8", "surrogatepass") for d in corpus.validation]
    return {"source": source, "sha256": content_hash(parts)}


def load_data(config: RunConfig, run_dir: Path | None = None, init: Path | None = None) -> TextData:
    """Read the corpus and build the tokenizer (or reuse the one of `run_dir`: resume, eval; or of
    `init`: a run started from that one's weights), or open a prepared directory, or read a pairs
    file (`ebt.data.pairs`: prompt/answer examples, the loss on the answers; data.layout must be
    'padded'); a new run reads both splits at once, so that a corpus too short for a window is
    refused before anything is written."""
    source = resolve_source(config.data.corpus)
    layout, context_len = config.data.layout, config.model.context_len
    saved = run_dir if run_dir is not None else init  # whose tokenizer to keep
    if is_prepared(source):
        prepared = open_prepared(source)
        check_prepared_tokenizer(prepared, config, saved)
        made = f"{source} is a prepared corpus, tokenized and split by `ebt prepare-data`"
        data = TextData(prepared.tokenizer, lambda name: prepared.split(name, layout), context_len, source,
                        prepared.fingerprint, unused={"data.validation_fraction": made, "text.bpe_vocab_size": made,
                                                      "data.text_field": made})
    elif is_pairs_file(source):
        data = _pairs_data(config, source, saved)
    else:
        corpus = _load_corpus(source, config)
        if saved is not None:
            # A resumed or fine-tuned run keeps its vocabulary (checked against its own config.json,
            # not the overrides, which refuse_fixed_changes names).
            tokenizer = load_tokenizer(saved, kind=load_config(saved).text.tokenizer)
        else:
            tokenizer = build_tokenizer(config.text.tokenizer, corpus.train, config.text.bpe_vocab_size)

        def encode(name: str) -> TokenSplit:
            return encode_split(getattr(corpus, name), tokenizer, layout, f"{name} split of {source!r}")

        data = TextData(tokenizer, encode, context_len, source, corpus_fingerprint(corpus, source),
                        files=corpus.files.summary() if corpus.files is not None else "", unused=_unused(config, saved))
    if run_dir is None:
        _ = (data.train, data.validation)  # read, and checked to hold a window, now
    return data


def _load_corpus(source: str, config: RunConfig) -> Corpus:
    """`load_corpus` with the run's data section; an error about the text field names data.text_field."""
    try:
        return load_corpus(source, config.data.validation_fraction, config.data.text_field)
    except DataError as e:
        if e.field == "text_field":
            e.field = "data.text_field"
        raise


def _unused(config: RunConfig, saved: Path | None, pairs: bool = False) -> dict[str, str]:
    """The config fields a corpus read now leaves unused (`TextData.unused`)."""
    unused = {}
    if config.data.corpus == "shakespeare":
        unused["data.validation_fraction"] = "the 'shakespeare' corpus is split by play (four fixed plays validate)"
    if config.data.corpus in KNOWN_CORPORA or pairs:
        unused["data.text_field"] = ("a prompt/answer pairs file has the fields prompt and answer" if pairs else
                                     f"the {config.data.corpus!r} corpus is read from its own files")
    if saved is None and config.text.tokenizer != "bpe":
        unused["text.bpe_vocab_size"] = f"it sizes a BPE, and text.tokenizer is {config.text.tokenizer!r}"
    return unused


def _pairs_data(config: RunConfig, source: str, saved: Path | None) -> TextData:
    """A pairs file as a run's data: its pairs split as a corpus's documents are, one example each."""
    if config.data.layout != "padded":
        raise ConfigError(f"data.layout = {config.data.layout!r}, but {source} holds prompt/answer pairs, one "
                          "example each: pass --data.layout=padded (`ebt finetune` sets it)")
    pairs = read_pairs(source)
    splits = split_pairs(pairs, config.data.validation_fraction, source)
    if saved is not None:
        tokenizer = load_tokenizer(saved, kind=load_config(saved).text.tokenizer)
    else:
        tokenizer = build_tokenizer(config.text.tokenizer, [p.prompt + p.answer for p in splits["train"]],
                                    config.text.bpe_vocab_size)
    window = config.model.context_len + 1

    def encode(name: str) -> TokenSplit:
        return encode_pairs(splits[name], tokenizer, window, f"{name} pairs of {source!r}").split

    fingerprint = {"source": source, "sha256": content_hash(
        [json.dumps([p.prompt, p.answer]).encode("utf-8", "surrogatepass") for p in pairs])}
    return TextData(tokenizer, encode, config.model.context_len, source, fingerprint, examples="pairs",
                    unused=_unused(config, saved, pairs=True))


def check_prepared_tokenizer(prepared: PreparedData, config: RunConfig, run_dir: Path | None = None) -> None:
    """A prepared directory's tokens are the run's only if it was tokenized by the run's tokenizer:
    the one saved in `run_dir` (resume, eval), else the kind config.text.tokenizer names."""
    if run_dir is not None:
        saved = load_tokenizer(run_dir)
        if saved.to_json() != prepared.tokenizer.to_json():
            raise DataError(
                f"{prepared.path} was prepared with another tokenizer ({prepared.tokenizer.kind}, "
                f"{prepared.tokenizer.vocab_size} tokens) than the run {run_dir} ({saved.kind}, {saved.vocab_size} "
                f"tokens); prepare it again with `ebt prepare-data ... --tokenizer {shlex.quote(str(run_dir))}`")
    elif config.text.tokenizer != prepared.tokenizer.kind:
        raise ConfigError(
            f"text.tokenizer = {config.text.tokenizer!r}, but {prepared.path} was prepared with a "
            f"{prepared.tokenizer.kind!r} tokenizer ({prepared.tokenizer.vocab_size} tokens); pass "
            f"--text.tokenizer={prepared.tokenizer.kind}, or prepare the data with --tokenizer {config.text.tokenizer}")


def save_tokenizer(out: Path, tokenizer) -> None:
    """tokenizer.json in directory `out`, what `load_tokenizer` reads back."""
    atomic_write(Path(out) / TOKENIZER, lambda p: p.write_text(tokenizer.to_json()))


def load_tokenizer(run_dir: Path, vocab_size: int | None = None, kind: str | None = None):
    """The tokenizer saved in a run directory, checked against the config's vocabulary size and
    tokenizer kind (text.vocab_size, text.tokenizer) when given: CheckpointError naming the field."""
    path = Path(run_dir) / TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no {TOKENIZER}")
    text = read_text(path)  # names the file when it is empty or not UTF-8
    try:
        tokenizer = tokenizer_from_json(text)
    except CheckpointError as e:  # its messages say "the saved tokenizer"; the user needs the file
        raise CheckpointError(f"{path}: {e}") from None
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"{path} has {tokenizer.vocab_size} tokens but the config says text.vocab_size = {vocab_size}")
    if kind is not None and tokenizer.kind != kind:
        raise CheckpointError(f"{Path(run_dir) / CONFIG} says text.tokenizer = {kind!r}, but {path} holds a "
                              f"{tokenizer.kind!r} tokenizer ({tokenizer.vocab_size} tokens): the config was edited or "
                              f"is another run's; set it back to {tokenizer.kind!r}")
    return tokenizer
