"""Corpora larger than memory: a corpus tokenized once (`ebt prepare-data`) into memory-mapped shards.

A prepared directory holds

    index.json                  what is there: the source, the tokenizer (kind, vocabulary, sha256 of
                                tokenizer.json), the token dtype, and for each split ("train",
                                "validation") its shards with their token and document counts and
                                the sha256 of each file
    tokenizer.json              the tokenizer (`ebt.data.tokenizers` format)
    {split}-{i:05d}.tokens      token ids, little-endian uint16 (a vocabulary of at most 65,536) or uint32
    {split}-{i:05d}.documents   (d, 2) little-endian uint64: each document's [start, end) in the shard

A shard holds whole documents separated by the encoding of "\\n\\n", as `encode_documents` lays
them out in memory, so training on a prepared corpus sees the tokens training on the corpus itself
would (in one shard; a new shard starts after `shard_tokens`). The split into training and
validation is `load_corpus`'s (`ebt.data.corpus.split_stream`).

`prepare` writes a directory, reading the corpus one document at a time and encoding batches of
documents at once (in parallel threads for the BPE kinds); `open_prepared` reads one back, checking
every file against the index (its size and sha256: a damaged file is a DataError naming it) and
the tokenizer against its hash; `PreparedData.split` gives a split as a `TokenSplit` of `np.memmap`
shards, which training and evaluation read a window at a time.
"""

from __future__ import annotations

import hashlib
import mmap
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from ebt.data.corpus import DEFAULT_TEXT_FIELD, KNOWN_CORPORA, iter_documents, load_corpus, missing_corpus, split_stream
from ebt.data.tokenizers import KINDS, build_tokenizer, tokenizer_from_json
from ebt.data.tokens import DOCUMENT_SEPARATOR, TokenSplit
from ebt.checks import check_int
from ebt.errors import CheckpointError, ConfigError, DataError
from ebt.files import DirectoryLock

INDEX = "index.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "validation")
_FORMAT, _VERSION = "ebt-prepared-data", 1
DEFAULT_SHARD_TOKENS = 1 << 28  # 512 MiB of uint16: few files, each well within any file system's limits
_BATCH_CHARACTERS = 1 << 23  # documents encoded at once: ~8 MB of text, whatever their number
_PIECE_CHARACTERS = 1 << 20  # a longer document is encoded in pieces of about this size (`_pieces`)


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a directory written by `prepare` (it holds an index.json)."""
    return (Path(path) / INDEX).is_file()


# --- Writing -------------------------------------------------------------------------------------


def resolve_tokenizer(spec: str, train_documents=None, bpe_vocab_size: int = 2048):
    """A tokenizer from `ebt prepare-data`'s tokenizer: a kind ("byte", "bpe" trained on `train_documents`, an
    iterable of str, "gpt2"), or a path to a tokenizer.json in our format or to a run directory
    holding one (to prepare data for an existing run's vocabulary)."""
    if spec in KINDS:
        return build_tokenizer(spec, train_documents if train_documents is not None else (), bpe_vocab_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"tokenizer {spec!r} is not allowed; it must be one of {', '.join(KINDS)}, a "
                          "tokenizer.json or a run directory that holds one", field="tokenizer")
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, CheckpointError) as err:
        raise DataError(f"tokenizer {str(path)!r} cannot be read: {err}", field="tokenizer") from None


def _documents(source: str, validation_fraction: float, text_field: str) -> Iterator[tuple[str, str]]:
    """("train" | "validation", document) pairs of a corpus name or path, read one at a time."""
    if source in KNOWN_CORPORA:  # small, and split as `load_corpus` does
        corpus = load_corpus(source, validation_fraction)
        yield from (("train", d) for d in corpus.train)
        yield from (("validation", d) for d in corpus.validation)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise missing_corpus(source)
    if is_prepared(path):
        raise DataError(f"{source} is already a prepared directory; give the corpus it was prepared from")
    yield from split_stream(iter_documents(path, text_field=text_field), validation_fraction, source)


# A cut right after a newline between two non-space characters: byte-level BPE's pre-tokenizer
# splits there anyway (the newline is a piece of its own), so encoding the two sides apart gives
# the ids of encoding them together.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def _pieces(text: str, size: int = _PIECE_CHARACTERS) -> list[str]:
    """`text` cut into pieces of about `size` characters at safe cuts (`_SAFE_CUT`), so that a long
    document is never encoded whole (HF tokenizers hold several bytes per token while encoding);
    a stretch with no safe cut stays whole."""
    pieces, begin = [], 0
    while len(text) - begin > size:
        match = _SAFE_CUT.search(text, begin + size)
        if match is None:
            break
        pieces.append(text[begin:match.end()])
        begin = match.end()
    pieces.append(text[begin:])
    return pieces


def _encode(tokenizer, documents: list[str], dtype) -> list[np.ndarray]:
    if tokenizer.kind == "byte":  # the UTF-8 bytes, without a Python int per byte
        return [np.frombuffer(d.encode("utf-8", "surrogateescape"), dtype=np.uint8).astype(dtype) for d in documents]
    pieces = [_pieces(d) for d in documents]
    flat = tokenizer.encode_batch([p for ps in pieces for p in ps])
    out, i = [], 0
    for ps in pieces:
        out.append(np.concatenate([np.asarray(ids, dtype=dtype) for ids in flat[i:i + len(ps)]]))
        i += len(ps)
    return out


class _ShardWriter:
    """Appends documents to {split}-{i}.tokens / .documents, starting a new shard past shard_tokens."""

    def __init__(self, out: Path, split: str, dtype, separator: np.ndarray, shard_tokens: int):
        self.out, self.split, self.dtype, self.separator = out, split, dtype, separator
        self.shard_tokens, self.shards = shard_tokens, []
        self.tokens_file = None

    def _open(self) -> None:
        stem = f"{self.split}-{len(self.shards):05d}"
        self.names = (f"{stem}.tokens", f"{stem}.documents")
        self.tokens_file = (self.out / self.names[0]).open("wb")
        self.hash, self.length, self.spans = hashlib.sha256(), 0, []

    def _write(self, array: np.ndarray) -> None:
        data = array.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self.tokens_file.write(data)
        self.hash.update(data)
        self.length += len(array)

    def add(self, ids: np.ndarray) -> None:
        if self.tokens_file is not None and self.length >= self.shard_tokens:
            self._close()
        if self.tokens_file is None:
            self._open()
        if self.spans:
            self._write(self.separator)
        self.spans.append((self.length, self.length + len(ids)))
        self._write(ids)

    def _close(self) -> None:
        self.tokens_file.close()
        spans = np.array(self.spans, dtype="<u8").reshape(-1, 2).tobytes()
        (self.out / self.names[1]).write_bytes(spans)
        self.shards.append({"tokens": self.names[0], "documents": self.names[1], "token_count": self.length,
                            "document_count": len(self.spans), "sha256": {
                                "tokens": self.hash.hexdigest(), "documents": hashlib.sha256(spans).hexdigest()}})
        self.tokens_file = None

    def close(self) -> dict[str, Any]:
        if self.tokens_file is not None:
            self._close()
        return {"tokens": sum(s["token_count"] for s in self.shards),
                "documents": sum(s["document_count"] for s in self.shards), "shards": self.shards}


def prepare(source: str, out: str | Path, tokenizer: str = "byte", bpe_vocab_size: int = 2048,
            validation_fraction: float = 0.1, shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False,
            progress: bool = True, text_field: str = DEFAULT_TEXT_FIELD) -> dict[str, Any]:
    """Tokenize a corpus (a name of `KNOWN_CORPORA`, a corpus file or a directory: `ebt.data.corpus`;
    `text_field`, the field or column of its documents) into a prepared directory `out`, and return
    its index (plus "seconds", the time it took; "text_field" when not "text").

    `tokenizer`: see `resolve_tokenizer` ("bpe" is trained on the training documents first, a
    second pass over the corpus). The directory is written beside `out` and moved there when
    complete, so an interrupted run (an exception, Ctrl-C; `ebt prepare-data` also turns SIGTERM
    and SIGHUP into one; or a kill, repaired by the next `prepare`) leaves nothing half-written; an
    existing `out` is refused unless it is a prepared corpus and `overwrite`. `out` may be a
    symbolic link: the corpus it points to is the one replaced. The process holds `out`'s lock
    (`ebt.files.DirectoryLock`) throughout: a second `prepare` into it is a CheckpointError. Raises ConfigError for bad arguments, DataError for bad data (and for
    a `validation_fraction` outside (0, 0.5], as `load_corpus` does).
    """
    started = time.monotonic()
    given = Path(out).expanduser()
    out = given.resolve()  # a link to an earlier prepared corpus: that corpus is the one replaced
    check_int("shard_tokens", shard_tokens, 1)
    with DirectoryLock(out, field="out"):
        _recover(out)
        _check_out(given, out, overwrite)
        index = _prepare_into(source, out, tokenizer, bpe_vocab_size, validation_fraction, shard_tokens, progress,
                              text_field)
    return {**index, "seconds": time.monotonic() - started}


def _prepare_into(source: str, out: Path, tokenizer: str, bpe_vocab_size: int, validation_fraction: float,
                  shard_tokens: int, progress: bool, text_field: str) -> dict[str, Any]:
    """`prepare`'s work, holding `out`'s lock: written into a hidden sibling, then `_put_in_place`."""
    train_documents = (d for split, d in _documents(source, validation_fraction, text_field) if split == "train")
    tok = resolve_tokenizer(tokenizer, train_documents if tokenizer == "bpe" else None, bpe_vocab_size)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    separator = np.asarray(tok.encode(DOCUMENT_SEPARATOR), dtype=dtype)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run left
    partial.mkdir()
    try:
        writers = {s: _ShardWriter(partial, s, dtype, separator, shard_tokens) for s in SPLITS}
        _write_documents(_documents(source, validation_fraction, text_field), tok, writers, dtype, progress)
        tokenizer_json = tok.to_json()
        (partial / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        index = {"format": _FORMAT, "version": _VERSION, "source": source if source in KNOWN_CORPORA else
                 str(Path(source).expanduser().resolve()),
                 # Shakespeare's split is fixed by play (ebt.data.corpus).
                 "validation_fraction": None if source == "shakespeare" else validation_fraction,
                 **({"text_field": text_field} if text_field != DEFAULT_TEXT_FIELD else {}),  # the index as before
                 "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size,
                               "sha256": hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()},
                 "dtype": dtype.name, "separator": separator.tolist(),
                 "splits": {s: writers[s].close() for s in SPLITS}}
        (partial / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    except OSError as e:  # a full disk: nothing was written to `out`
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"writing the prepared corpus into {partial} failed: {e.strerror or e}; nothing was written "
                        f"to {out}{' (it is as it was)' if out.exists() else ''}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _put_in_place(partial, out)
    return index


def _recover(out: Path) -> None:
    """What a killed `prepare` left beside `out`: a corpus set aside while the new one was not yet
    in place goes back, unless the new one was finished (a partial one is removed later)."""
    old, partial = out.parent / f".{out.name}.replaced", out.parent / f".{out.name}.partial"
    if old.is_dir() and not out.exists():  # killed between the two renames of `_put_in_place`
        if is_prepared(partial):  # the new corpus was finished: it goes in place
            os.rename(partial, out)
            print(f"{out}: put in place the corpus a killed prepare-data had finished", file=sys.stderr)
        else:
            os.rename(old, out)
            print(f"{out}: put back the prepared corpus a killed prepare-data was replacing", file=sys.stderr)
    shutil.rmtree(old, ignore_errors=True)


def _put_in_place(partial: Path, out: Path) -> None:
    """Move the finished corpus `partial` to `out`, replacing what is there: the old one is renamed
    aside first and removed only once the new one is in place. If a rename fails, the old corpus
    is put back and the finished one stays in `partial`, named in the DataError: finished work is
    never deleted because the last step failed."""
    old = out.parent / f".{out.name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    try:
        if out.exists():
            os.rename(out, old)
        os.rename(partial, out)
    except OSError as e:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise DataError(f"the prepared corpus is complete in {partial} but could not be moved to {out}: "
                        f"{e.strerror}; move it there yourself (mv {shlex.quote(str(partial))} "
                        f"{shlex.quote(str(out))})") from None
    shutil.rmtree(old, ignore_errors=True)


def _check_out(given: Path, out: Path, overwrite: bool) -> None:
    """`out` (the resolved `given`) may be written: it does not exist, or is empty, or (with
    `overwrite`) is a prepared corpus."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {str(given)!r} is a file; give a directory to write", field="out")
    link = f" (a link to {str(out)!r})" if given.is_symlink() else ""
    if out.exists() and not is_prepared(out) and any(out.iterdir()):
        raise ConfigError(f"out {str(given)!r}{link} holds files that are not a prepared corpus; choose another "
                          "directory (overwrite replaces only a prepared corpus)", field="out")
    if out.exists() and not overwrite:
        raise ConfigError(f"out {str(given)!r}{link} holds a prepared corpus; set overwrite to replace it, or choose "
                          "another directory", field="overwrite")


def _write_documents(documents: Iterator[tuple[str, str]], tok, writers: dict[str, _ShardWriter], dtype,
                     progress: bool) -> None:
    """Encode (split, document) pairs in batches of about `_BATCH_CHARACTERS` and append each to
    its split's shards."""
    batch: list[tuple[str, str]] = []
    characters = 0
    bar = _progress(progress)

    def flush() -> None:
        for (split, _), ids in zip(batch, _encode(tok, [d for _, d in batch], dtype)):
            writers[split].add(ids)
        bar.update(len(batch))
        batch.clear()

    for split, document in documents:
        batch.append((split, document))
        characters += len(document)
        if characters >= _BATCH_CHARACTERS:
            flush()
            characters = 0
    flush()
    bar.close()


def _progress(enabled: bool):
    return tqdm(unit=" documents", desc="tokenizing", disable=not enabled or not sys.stderr.isatty())


# --- Reading -------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """A prepared directory, checked: its index, its tokenizer, and its splits as TokenSplits."""

    path: Path
    index: dict[str, Any]
    tokenizer: Any

    def split(self, name: str, layout: str = "packed") -> TokenSplit:
        """The split `name` ("train" or "validation") as memory-mapped shards, read in `layout`."""
        if name not in SPLITS:
            raise ConfigError(f"split {name!r} is not allowed; it must be 'train' or 'validation'")
        dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        shards, documents, files = [], [], []
        for shard in self.index["splits"][name]["shards"]:
            tokens, spans = self.path / shard["tokens"], self.path / shard["documents"]
            count = shard["token_count"]
            # A memmap of an empty file is refused; an empty shard is an empty array.
            shards.append(np.memmap(tokens, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype))
            spans_array = np.fromfile(spans, dtype="<u8").reshape(-1, 2).astype(np.int64)
            if len(spans_array) and not (bool((spans_array[:, 0] <= spans_array[:, 1]).all())
                                         and int(spans_array[:, 1].max()) <= count):
                raise DataError(f"{spans} holds document spans outside its shard ({count:,} tokens): the file is "
                                "damaged; prepare the data again")
            documents.append(spans_array)
            files.append(str(tokens))
        for array, file in zip(shards, files):
            _advise_random(array)
        return TokenSplit(shards, documents, layout, f"{name} split of {self.path}", files, self.tokenizer.vocab_size)

    @property
    def fingerprint(self) -> dict[str, str]:
        """What identifies the data (`ebt.rundata.fingerprint`): the directory and the hash of its
        index, which holds the hash of every file."""
        return {"source": str(self.path), "sha256": hashlib.sha256((self.path / INDEX).read_bytes()).hexdigest()}

    @property
    def summary(self) -> str:
        s = self.index["splits"]
        return (f"{s['train']['tokens']:,} training / {s['validation']['tokens']:,} validation tokens "
                f"({self.tokenizer.kind}, prepared in {self.path}, {self.index['dtype']})")


def _advise_random(array: np.ndarray) -> None:
    # Windows are read at random places: no read-ahead, so the pages of a memory-mapped shard that
    # the process holds are the ones it read (not megabytes around each).
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(getattr(mmap, "MADV_RANDOM", 1))


def open_prepared(path: str | Path, verify: bool = True) -> PreparedData:
    """Read a prepared directory and check it: the index's form, every file's size against it and,
    with `verify`, every file's sha256 (reading each shard once, ~1 s per GB); the tokenizer
    always. DataError naming the file for anything missing, damaged or from another version."""
    path = Path(path).expanduser().resolve()
    index_file = path / INDEX
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is not a prepared corpus: it has no {INDEX} (make one with `ebt prepare-data`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{index_file} is damaged ({err}); prepare the data again with `ebt prepare-data`") from None
    _check_index(index, index_file)
    tokenizer_file = path / TOKENIZER_FILE
    try:
        text = tokenizer_file.read_bytes()
    except OSError as err:
        raise DataError(f"{tokenizer_file} cannot be read ({err.strerror}); prepare the data again") from None
    if hashlib.sha256(text).hexdigest() != index["tokenizer"]["sha256"]:
        raise DataError(f"{tokenizer_file} does not match {index_file} (its sha256 differs): the file is damaged or "
                        "was replaced; prepare the data again")
    try:
        tokenizer = tokenizer_from_json(text.decode("utf-8"))
    except (UnicodeDecodeError, CheckpointError) as err:
        raise DataError(f"{tokenizer_file}: {err}") from None
    itemsize = np.dtype(index["dtype"]).itemsize
    for split in SPLITS:
        for shard in index["splits"][split]["shards"]:
            for kind, size in (("tokens", shard["token_count"] * itemsize), ("documents", shard["document_count"] * 16)):
                file = path / shard[kind]
                if not file.is_file():
                    raise DataError(f"{file} is missing: {index_file} lists it; prepare the data again")
                if file.stat().st_size != size:
                    raise DataError(f"{file} holds {file.stat().st_size:,} bytes where {index_file} says "
                                    f"{size:,}: the file is damaged; prepare the data again")
                if verify:
                    if _sha256(file) != shard["sha256"][kind]:
                        raise DataError(f"{file} is damaged: its sha256 is not the one {index_file} recorded; "
                                        "prepare the data again")
    return PreparedData(path, index, tokenizer)


def _check_index(index: Any, file: Path) -> None:
    def bad(why: str) -> DataError:
        return DataError(f"{file} is not a prepared-corpus index ({why}); prepare the data again with "
                         "`ebt prepare-data`")

    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise bad(f"its format is not {_FORMAT!r}")
    if index.get("version") != _VERSION:
        raise bad(f"version {index.get('version')!r}; this version of ebt reads version {_VERSION}")
    def shard_ok(shard: Any) -> bool:
        return (isinstance(shard, dict)
                and all(isinstance(shard.get(k), str) and _PLAIN_NAME.fullmatch(shard[k]) for k in ("tokens", "documents"))
                and all(isinstance(shard.get(k), int) and shard[k] >= 0 for k in ("token_count", "document_count"))
                and isinstance(shard.get("sha256"), dict)
                and all(isinstance(shard["sha256"].get(k), str) for k in ("tokens", "documents")))

    if index.get("dtype") not in ("uint16", "uint32"):
        raise bad(f"dtype {index.get('dtype')!r}, not 'uint16' or 'uint32'")
    if not isinstance(index.get("tokenizer"), dict) or not isinstance(index["tokenizer"].get("sha256"), str):
        raise bad("no tokenizer sha256")
    splits = index.get("splits")
    for split in SPLITS:
        shards = splits.get(split, {}).get("shards") if isinstance(splits, dict) and isinstance(splits.get(split), dict) else None
        if not isinstance(shards, list) or not all(map(shard_ok, shards)):
            raise bad(f"the {split!r} split's list of shards is missing or malformed")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a file in the directory itself, never a path out of it


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
