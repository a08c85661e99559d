"""A text run's data: a corpus tokenized into two streams, windows for training, perplexity for
validation, and the tokenizer saved with the run (`tokenizer.json`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ebt.checkpoint import TOKENIZER
from ebt.files import atomic_write, read_text
from ebt.config import RunConfig
from ebt.data.batches import TrainingBatches, count_windows, encode_documents, random_windows
from ebt.data.corpus import Corpus, load_corpus
from ebt.data.tokenizers import build_tokenizer, tokenizer_from_json
from ebt.errors import CheckpointError
from ebt.evaluate import evaluate
from ebt.rundata.fingerprint import content_hash, resolve_source, save_fingerprint


@dataclass
class TextData:
    """A corpus split in two token streams, and how the trainer batches and scores them. Each
    split is encoded when first used (`ebt eval` needs only the validation split), and a split
    too short for one window is a DataError then."""

    tokenizer: Any
    corpus: Corpus
    context_len: int
    source: str  # the corpus name, or its absolute path
    fingerprint: dict[str, str]

    @functools.cached_property
    def train(self) -> Tensor:
        """(N,) token ids of the training split."""
        return self._encode(self.corpus.train, "training split")

    @functools.cached_property
    def validation(self) -> Tensor:
        """(N',) token ids of the validation split."""
        return self._encode(self.corpus.validation, "validation split")

    def _encode(self, documents: list[str], name: str) -> Tensor:
        tokens = encode_documents(documents, self.tokenizer)
        count_windows(tokens, self.context_len + 1, name=f"{name} of {self.source!r}")  # raises if too short
        return tokens

    @property
    def summary(self) -> str:
        return f"{len(self.train):,} training / {len(self.validation):,} validation tokens ({self.tokenizer.kind})"

    @property
    def overrides(self) -> dict[str, str]:
        return {"text.vocab_size": str(self.tokenizer.vocab_size), "data.corpus": self.source}

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                         micro_batches: int = 1) -> TrainingBatches:
        """Endless micro-batches of windows (b, context_len + 1) (`random_windows`)."""
        return random_windows(self.train, self.context_len + 1, batch_size, seed, rank, world_size, micro_batches)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """A window (B, S+1) → context x (B, S) and next tokens (B, S)."""
        return batch[:, :-1], batch[:, 1:]

    unit = "tokens"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.numel()

    def validate(self, model, *, batch_size: int, max_examples: int, device) -> dict:
        return evaluate(model, self.validation, batch_size=batch_size, max_windows=max_examples, device=device,
                        window_losses=True)

    def save(self, out: Path) -> None:
        atomic_write(out / TOKENIZER, lambda p: p.write_text(self.tokenizer.to_json()))
        save_fingerprint(out, **self.fingerprint)


def corpus_fingerprint(corpus: Corpus, source: str) -> dict[str, str]:
    """What identifies a corpus: its source and a hash of its documents, split by split."""
    parts = [b"train"] + [d.encode("utf-8", "surrogatepass") for d in corpus.train]
    parts += [b"validation"] + [d.encode("utf-8", "surrogatepass") for d in corpus.validation]
    return {"source": source, "sha256": content_hash(parts)}


def load_data(config: RunConfig, run_dir: Path | None = None) -> TextData:
    """Read the corpus and build (or, with run_dir, reuse) the tokenizer; a new run encodes both
    splits at once, so that a corpus too short for a window is refused before anything is written."""
    source = resolve_source(config.data.corpus)
    corpus = load_corpus(source, config.data.validation_fraction)
    if run_dir is not None:
        tokenizer = load_tokenizer(run_dir)  # a resumed run keeps its vocabulary
    else:
        tokenizer = build_tokenizer(config.text.tokenizer, corpus.train, config.text.bpe_vocab_size)
    data = TextData(tokenizer, corpus, config.model.context_len, source, corpus_fingerprint(corpus, source))
    if run_dir is None:
        _ = (data.train, data.validation)  # encoded, and checked to fit a window, now
    return data


def load_tokenizer(run_dir: Path, vocab_size: int | None = None):
    """The tokenizer saved in a run directory, checked against the config's vocabulary size."""
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
    return tokenizer
