"""Token windows for training and evaluation, from a corpus held in memory or memory-mapped shards.

A corpus split becomes a `TokenSplit`: one or more shards, each a 1-D array of token ids (an int64
tensor for a corpus encoded in memory by `encode_documents`; an `np.memmap` of uint16 or uint32 for
a prepared directory, `ebt.data.prepared`), with the (start, end) span of every document in it. In
a shard, documents follow each other separated by the encoding of "\\n\\n"; no document spans two
shards. A window is ``window = context_len + 1`` tokens: the model reads the first ``context_len``
and predicts the last ``context_len`` (each token from the ones before it).

Two layouts (config ``data.layout``):

* ``"packed"``: a training window starts anywhere in a shard and may cross documents; evaluation
  walks each shard in windows that share one token with the previous, so that every token after
  a shard's first is predicted exactly once.
* ``"padded"`` (the paper's, SPEC §3 "Paper data"): every document is one example, its first
  ``window`` tokens, the rest of the window filled with ``PAD``; padding is not predicted (the
  text loss skips it) and is read as token 0 after the document's end, which causal attention
  keeps from every real position. Documents of one token predict nothing and are left out.

A window may also hold tokens that are read but not predicted, stored `context_only` (below PAD):
the prompts of prompt/answer pairs (`ebt.data.pairs`), so that the loss is on the answers alone.

`TokenSplit.training_batches` draws random windows (packed) or documents (padded) as a
`TrainingBatches`: the same global batches whatever the number of processes and micro-batches.
`TokenSplit.windows` gives the evaluation windows in order. `split_window` turns a window into
model input and targets. The functions `random_windows`, `sequential_windows` and
`count_windows` do the same for a 1-D tensor.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ebt.config import LAYOUTS
from ebt.data.batches import TrainingBatches, check_batch_size
from ebt.errors import ConfigError, DataError

DOCUMENT_SEPARATOR = "\n\n"
# A padded position of a window (layout "padded"): torch.nn.functional.cross_entropy's default
# ignore_index, which the text loss skips (ebt.tasks.text).
PAD = -100


def context_only(ids):
    """Token ids (any shape; int tensor or array) → how a window stores them when they are read
    as context but not predicted (a prompt's tokens, `ebt.data.pairs`): PAD − 1 − id, below PAD,
    so that one row of a window says both what the model reads and what it is scored on.
    `split_window` undoes it."""
    return PAD - 1 - ids


def encode_documents(documents: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """Encode documents into one 1-D int64 stream, separated by the encoding of "\\n\\n"."""
    return torch.from_numpy(encode_split(documents, tokenizer).shards[0])


def encode_split(documents: Sequence[str], tokenizer: Any, layout: str = "packed",
                 name: str = "token stream") -> TokenSplit:
    """Encode documents in memory into a one-shard `TokenSplit` (int64) that records where each
    document is, so that either layout can read it."""
    separator = tokenizer.encode(DOCUMENT_SEPARATOR)
    # Our tokenizers can encode many documents at once (in parallel for the BPE kinds); any
    # other object with just `encode` works too.
    encode_batch = getattr(tokenizer, "encode_batch", None)
    if encode_batch is not None:
        encoded = encode_batch(list(documents))
    else:
        encoded = [tokenizer.encode(document) for document in documents]
    ids: list[int] = []
    spans = []
    for i, document_ids in enumerate(encoded):
        if i > 0:
            ids.extend(separator)
        spans.append((len(ids), len(ids) + len(document_ids)))
        ids.extend(document_ids)
    documents_array = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return TokenSplit([torch.tensor(ids, dtype=torch.int64)], [documents_array], layout, name)


def split_window(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (B, S+1) → context x (B, S), padding read as token 0, and targets (B, S), PAD where
    nothing is predicted: padding, and tokens stored `context_only` (read as their ids)."""
    ids = torch.where(batch < PAD, context_only(batch), batch)
    return ids[:, :-1].clamp_min(0), torch.where(batch < 0, PAD, batch)[:, 1:]


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ConfigError(
            f"window={window!r} is not allowed; it must be an integer >= 2 "
            "(context_len + 1, with context_len >= 1)"
        )


class TokenSplit:
    """One split of a tokenized corpus: shards of token ids and the spans of their documents.

    `shards`: 1-D arrays of token ids (int64 tensors, or numpy arrays such as `np.memmap`);
    `documents`: for each shard an array (d, 2) of each document's [start, end) in it, or None
    (one document per shard); `layout`: "packed" or "padded" (module docstring); `name` says what
    the split is in messages; `files` names each shard's file, for errors; with `vocab_size`,
    every window read is checked to hold ids in [0, vocab_size) (DataError naming the shard).
    """

    def __init__(self, shards: Sequence, documents: Sequence[np.ndarray] | None = None, layout: str = "packed",
                 name: str = "token stream", files: Sequence[str] | None = None, vocab_size: int | None = None):
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout = {layout!r} is not allowed; it must be 'packed' or 'padded'")
        arrays = []
        for shard in shards:
            if isinstance(shard, torch.Tensor):
                if shard.dim() != 1:
                    raise DataError(f"the {name} must be a 1-D tensor of token ids, got {tuple(shard.shape)}")
                shard = shard.to("cpu", torch.int64).numpy()  # shares memory with the tensor
            elif not isinstance(shard, np.ndarray) or shard.ndim != 1:
                raise DataError(f"the {name} must be 1-D arrays of token ids, got {type(shard).__name__}")
            arrays.append(shard)
        self.shards, self.layout, self.name, self.vocab_size = arrays, layout, name, vocab_size
        self.files = list(files) if files is not None else [name] * len(arrays)
        if documents is None:
            documents = [np.array([[0, len(s)]], dtype=np.int64) for s in arrays]
        self.documents = [np.asarray(d, dtype=np.int64).reshape(-1, 2) for d in documents]
        self._cache: dict[int, Any] = {}  # window → `_starts`

    @classmethod
    def of(cls, tokens, name: str = "token stream") -> TokenSplit:
        """`tokens` as it is if a TokenSplit, else a 1-D tensor as one packed shard."""
        if isinstance(tokens, TokenSplit):
            return tokens
        if not isinstance(tokens, torch.Tensor):
            raise DataError(f"the {name} must be a 1-D tensor of token ids, got {type(tokens).__name__}")
        return cls([tokens], layout="packed", name=name)

    def with_layout(self, layout: str) -> TokenSplit:
        """The same shards read in another layout."""
        return TokenSplit(self.shards, self.documents, layout, self.name, self.files, self.vocab_size)

    def __len__(self) -> int:
        """Tokens in all shards."""
        return sum(len(s) for s in self.shards)

    # --- Examples: where each window starts ----------------------------------------------------

    def _starts(self, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, start, length) int64 arrays of every training example, in order: packed, every
        position a whole window fits (as one cumulative count per shard, expanded lazily by
        `_locate`); padded, every document of ≥ 2 tokens, its first `window` tokens."""
        if window not in self._cache:
            if self.layout == "packed":
                counts = np.array([max(0, len(s) - window + 1) for s in self.shards], dtype=np.int64)
                self._cache[window] = (np.cumsum(counts), None, None)
            else:
                shard_ids, starts, lengths = [], [], []
                for i, spans in enumerate(self.documents):
                    length = spans[:, 1] - spans[:, 0]
                    keep = length >= 2
                    shard_ids.append(np.full(int(keep.sum()), i, dtype=np.int64))
                    starts.append(spans[keep, 0])
                    lengths.append(np.minimum(length[keep], window))
                self._cache[window] = tuple(np.concatenate(a) if a else np.zeros(0, np.int64)
                                         for a in (shard_ids, starts, lengths))
        return self._cache[window]

    def examples(self, window: int) -> int:
        """How many training examples there are: windows (packed) or documents (padded)."""
        check_window(window)
        first, _, _ = self._starts(window)
        if self.layout == "packed":  # first: cumulative window counts per shard
            return int(first[-1]) if len(first) else 0
        return len(first)

    def tokens_read(self, window: int) -> int:
        """Tokens that training windows can hold: all (packed), or each document's first `window`
        (padded: the rest of a longer document is never read)."""
        if self.layout == "packed":
            return len(self)
        return int(self._starts(window)[2].sum())

    def _locate(self, indices: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example indices → (shard, start, length) of each."""
        if self.layout == "packed":
            cumulative, _, _ = self._starts(window)
            shard = np.searchsorted(cumulative, indices, side="right")
            before = np.where(shard > 0, cumulative[np.maximum(shard - 1, 0)], 0)
            return shard, indices - before, np.full(len(indices), window, dtype=np.int64)
        shard, starts, lengths = self._starts(window)
        return shard[indices], starts[indices], lengths[indices]

    def _read(self, shard: np.ndarray, start: np.ndarray, length: np.ndarray, window: int) -> torch.Tensor:
        """The windows (b, window) int64 at these places, PAD past each one's length."""
        out = np.full((len(start), window), PAD, dtype=np.int64)
        offsets = np.arange(window)
        for i in np.unique(shard):
            rows = np.nonzero(shard == i)[0]
            inside = offsets < length[rows, None]  # (b_i, window)
            positions = np.minimum(start[rows, None] + offsets, len(self.shards[i]) - 1)
            values = self.shards[i][positions].astype(np.int64)  # reads only these tokens of a memmap
            if self.vocab_size is not None and len(values) and (values.max() >= self.vocab_size or values.min() < 0):
                bad = values[(values >= self.vocab_size) | (values < 0)][0]
                raise DataError(f"{self.files[i]} holds token id {bad}, outside the vocabulary [0, {self.vocab_size}); "
                                "the shard is damaged or from another tokenizer: prepare the data again")
            out[rows] = np.where(inside, values, PAD)
        return torch.from_numpy(out)

    def fetch(self, indices: torch.Tensor, window: int) -> torch.Tensor:
        """Training examples by index (b,) → windows (b, window) int64."""
        located = self._locate(indices.numpy().astype(np.int64), window)
        return self._read(*located, window)

    def check(self, window: int) -> None:
        """DataError unless at least one window fits (packed: a shard of ≥ window tokens;
        padded: a document of ≥ 2 tokens)."""
        check_window(window)
        if self.layout == "packed" and not any(len(s) >= window for s in self.shards):
            if len(self) >= window:  # tokens enough, but a window never crosses a shard's end
                raise DataError(
                    f"the {self.name} has {len(self):,} tokens in {len(self.shards)} shards, the longest "
                    f"{max(len(s) for s in self.shards):,} tokens, and no window of the context window "
                    f"({window - 1}) + 1 = {window} tokens fits in one (a window never crosses shards); prepare "
                    f"the data again with shard_tokens of at least {window}, or use a shorter model.context_len")
            raise DataError(
                f"the {self.name} has {len(self)} tokens, fewer than the context window "
                f"({window - 1}) + 1 = {window} tokens; use a shorter model.context_len "
                "or a corpus with more text"
            )
        if self.layout == "padded" and self.examples(window) == 0:
            raise DataError(f"the {self.name} has no document of 2 or more tokens to train on (layout 'padded')")

    def training_batches(self, window: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                         micro_batches: int = 1) -> TrainingBatches:
        """Endless training micro-batches (b, window) int64 (`TrainingBatches`): windows at random
        positions (packed) or random documents (padded)."""
        self.check(window)
        return TrainingBatches(self.examples(window), lambda indices, seeds: self.fetch(indices, window),
                               batch_size, seed, rank, world_size, micro_batches)

    # --- Evaluation: every window in order -----------------------------------------------------

    def _evaluation_places(self, window: int) -> Iterator[tuple[int, int, int]]:
        if self.layout == "padded":
            shard, starts, lengths = self._starts(window)
            yield from zip(shard.tolist(), starts.tolist(), lengths.tolist())
            return
        for i, s in enumerate(self.shards):
            # Consecutive windows share one token, so they advance by window - 1.
            for k in range(max(0, (len(s) - 1) // (window - 1))):
                yield i, k * (window - 1), window

    def count_windows(self, window: int) -> int:
        """How many windows `windows` yields (before max_windows)."""
        self.check(window)
        if self.layout == "padded":
            return self.examples(window)
        return sum((len(s) - 1) // (window - 1) for s in self.shards)

    def windows(self, window: int, batch_size: int, max_windows: int | None = None) -> Iterator[torch.Tensor]:
        """Evaluation batches (≤ batch_size, window) int64, in order: packed, each shard's windows,
        each starting on the last token of the previous, so every token after a shard's first is
        predicted once (a tail shorter than a window is dropped); padded, each document's. Only
        the first `max_windows` windows when given."""
        total = self.count_windows(window)
        check_batch_size(batch_size)
        if max_windows is not None:
            if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
                raise ConfigError(f"max_windows={max_windows!r} is not allowed; it must be None or an integer >= 1")
            total = min(total, max_windows)

        # Checks above run when this method is called; only the reading is lazy.
        def batches() -> Iterator[torch.Tensor]:
            places = self._evaluation_places(window)
            for begin in range(0, total, batch_size):
                chunk = [next(places) for _ in range(min(batch_size, total - begin))]
                shard, start, length = (np.array(column, dtype=np.int64) for column in zip(*chunk))
                yield self._read(shard, start, length, window)

        return batches()


# --- The same for a 1-D tensor of token ids ------------------------------------------------------


def count_windows(tokens, window: int, name: str = "token stream") -> int:
    """How many windows ``sequential_windows`` yields for this stream (before ``max_windows``)."""
    check_window(window)
    return TokenSplit.of(tokens, name).count_windows(window)


def random_windows(tokens, window: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                   micro_batches: int = 1, name: str = "training split") -> TrainingBatches:
    """Training batches of `window` consecutive tokens (context + 1) starting anywhere in the 1-D
    stream `tokens` (or a TokenSplit, in its layout): each micro-batch is (b, window) int64."""
    check_window(window)
    return TokenSplit.of(tokens, name).training_batches(window, batch_size, seed, rank, world_size, micro_batches)


def sequential_windows(tokens, window: int, batch_size: int, max_windows: int | None = None,
                       name: str = "evaluation split") -> Iterator[torch.Tensor]:
    """Evaluation batches: windows in stream order, each starting on the last token of the previous.

    Window i covers ``tokens[i*(window-1) : i*(window-1) + window]``, so every token after the
    first is a prediction target exactly once. Batches are ``(batch_size, window)`` int64, the
    last one possibly smaller; a tail shorter than a window is dropped. ``max_windows`` keeps
    only the first that many windows. A TokenSplit is read in its own layout (`TokenSplit.windows`).
    """
    check_window(window)
    return TokenSplit.of(tokens, name).windows(window, batch_size, max_windows)

