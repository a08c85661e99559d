"""The file formats of a text corpus, read one document at a time (`file_documents`), so that a
corpus of any size streams through `ebt prepare-data` in memory that does not grow with it.

- ``.txt``: the whole file is one document (UTF-8; a byte-order mark is dropped).
- ``.jsonl``, ``.jsonl.gz`` (gzip) and ``.jsonl.zst`` (Zstandard, the package zstandard): one
  JSON object per line, the document in its string field `text_field` ("text" unless told);
  the compressed ones are decompressed as they are read.
- ``.parquet`` (the package pyarrow): one document per row, in the string column `text_field`,
  read one row group at a time (made Python strings `PARQUET_BATCH_ROWS` rows at a time).

Extensions count in any case (``.JSONL.GZ``). A document is given as it is, with Windows line
ends made "\\n"; blank ones (whitespace only) are left out. Every problem is a one-line DataError
naming the file, and the line (JSON lines, from 1) or the row (parquet, from 0) where it can: a
missing field (naming the ones there are), a value that is not a string (naming its type), a
null, a damaged or cut-short file, an extension of no corpus format (naming the allowed ones).
Those about `text_field` itself (a missing field, a column of another type) carry
``field="text_field"``.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from ebt.checks import json_type
from ebt.data.folder import allowed_suffixes, corpus_suffix
from ebt.errors import DataError
from ebt.packages import import_package

DEFAULT_TEXT_FIELD = "text"
PARQUET_BATCH_ROWS = 1024  # rows converted to Python strings at once (a row group is read whole by pyarrow)
_CHUNK_BYTES = 1 << 16  # compressed bytes read at a time from a .zst file


def file_documents(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """The non-blank documents of one corpus file, in the file's order, read as its extension says
    (the module docstring). DataError for an extension of no corpus format, and for bad content."""
    suffix = corpus_suffix(path)
    if suffix is None:
        raise DataError(f"corpus file {str(path)!r} is of no corpus format by its extension; a corpus file is "
                        f"{allowed_suffixes()} (in any case), e.g. rename a UTF-8 text file to .txt")
    if suffix == ".txt":
        text = read_text_file(path)
        if text.strip():  # whitespace-only files contribute nothing
            yield text
    elif suffix == ".parquet":
        yield from parquet_documents(path, text_field)
    else:
        yield from jsonl_documents(path, text_field)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's text (a byte-order mark dropped, "\\r\\n" made "\\n"); DataError when it
    cannot be read or is not UTF-8 (naming the offset of the first bad byte)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read corpus file {str(path)!r}: {err.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"corpus file {str(path)!r} is not valid UTF-8 (bad byte at offset {err.start}); "
                        "only UTF-8 text files are supported") from None
    return text.replace("\r\n", "\n")


# --- JSON lines, plain or compressed ------------------------------------------------------------


def jsonl_form(text_field: str = DEFAULT_TEXT_FIELD) -> str:
    """What a JSON-lines corpus holds, in words, for an error message."""
    return (f'a JSON-lines corpus (.jsonl, .jsonl.gz, .jsonl.zst) holds one JSON object per line, with the document '
            f'in the string field "{text_field}" (text_field names another; prompt/answer pairs, from the first '
            'line on: the string fields "prompt" and "answer")')


def jsonl_documents(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """The non-blank documents of a .jsonl, .jsonl.gz or .jsonl.zst file: each line's string field
    `text_field`. DataError naming the line for a line without it, or with a null or a non-string."""
    form = jsonl_form(text_field)
    for where, record in json_lines(path, form):
        if not isinstance(record, dict):
            raise DataError(f"{where} is {json_type(record)}, not an object; {form}")
        if text_field not in record:
            raise DataError(f'{where} has no string field "{text_field}" (its fields: {_few(record)}); {form}',
                            field="text_field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f'{where}: its field "{text_field}" is {json_type(text)}, not a string; {form}',
                            field=None if text is None else "text_field")
        if text.strip():
            yield text.replace("\r\n", "\n")


def json_lines(path: Path, form: str, what: str = "corpus file") -> Iterator[tuple[str, object]]:
    """("FILE, line N", the parsed value) of every non-blank line of a JSON-lines file, decompressed
    as its name says (.gz, .zst). DataError naming the file (`what`: how to call it) when it cannot
    be read or decompressed (damaged, cut short: after which line), and the line when it is not
    UTF-8 or not JSON (`form`: what the file should hold, for the message)."""
    handle = open_binary(path, what)
    number = 0
    with handle:
        while True:
            try:
                raw = handle.readline()
            except (EOFError, OSError, zlib.error) as err:  # gzip's: cut short, not gzip, damaged
                raise DataError(f"{what} {str(path)!r} cannot be decompressed after line {number}: the gzip stream "
                                f"is damaged or cut short ({type(err).__name__}: {_first_line(err)})") from None
            if not raw:
                return
            number += 1
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(f"{where} is not valid UTF-8 (bad byte at offset {err.start})") from None
            except json.JSONDecodeError as err:
                raise DataError(f"{where} is not valid JSON ({err.msg}); {form}") from None


def open_binary(path: Path, what: str = "corpus file") -> BinaryIO:
    """`path` opened for reading bytes, decompressed as they are read when its name ends in .gz
    (gzip) or .zst (Zstandard); DataError naming it when it cannot be opened."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            return gzip.open(path, "rb")
        handle = path.open("rb")
    except OSError as err:
        raise DataError(f"cannot read {what} {str(path)!r}: {err.strerror}") from None
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdStream(handle, path, what), buffer_size=_CHUNK_BYTES)
    return handle


class _ZstdStream(io.RawIOBase):
    """The decompressed bytes of a Zstandard file, frame after frame (as the zstd tool writes them);
    DataError naming the file for a damaged frame, or for a file that ends inside a frame (cut
    short), which zstandard's own stream_reader passes over in silence."""

    def __init__(self, handle: BinaryIO, path: Path, what: str) -> None:
        self._zstd = import_package("zstandard", needed_for=f"reading the Zstandard-compressed {what} {path}")
        self._handle, self._path, self._what = handle, path, what
        self._frame = None  # the decompressor of the frame being read, None between frames
        self._out, self._at, self._ended = b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out) and not self._ended:
            self._fill()
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = memoryview(self._out)[self._at:self._at + n]
        self._at += n
        return n

    def _fill(self) -> None:
        chunk = self._handle.read(_CHUNK_BYTES)
        if not chunk:
            if self._frame is not None:
                raise self._damaged("the file ends inside a frame: it is cut short")
            self._ended = True
            return
        parts = []
        while chunk:
            self._frame = self._frame or self._zstd.ZstdDecompressor().decompressobj()
            try:
                parts.append(self._frame.decompress(chunk))
            except self._zstd.ZstdError as err:
                raise self._damaged(f"it is not Zstandard, or a frame is damaged ({_first_line(err)})") from None
            chunk = b""
            if self._frame.eof:  # the rest is the next frame's
                chunk, self._frame = self._frame.unused_data, None
        self._out, self._at = b"".join(parts), 0

    def _damaged(self, why: str) -> DataError:
        return DataError(f"{self._what} {str(self._path)!r} cannot be decompressed as Zstandard: {why}")

    def close(self) -> None:
        self._handle.close()
        super().close()


# --- Parquet --------------------------------------------------------------------------------------


def parquet_documents(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """The non-blank documents of a .parquet file: its string column `text_field`, row by row,
    a row group at a time. DataError naming the file for one that is not parquet or is damaged
    (and in which row group), a missing column (naming the columns there are), a
    column of another type (naming it), and the row of a null."""
    pa = import_package("pyarrow", needed_for=f"reading the parquet corpus file {path}")
    pq = import_package("pyarrow.parquet", package="pyarrow", needed_for=f"reading the parquet corpus file {path}")
    errors = (OSError, ValueError, pa.ArrowException)
    try:
        file = pq.ParquetFile(path)
    except errors as err:
        raise DataError(f"corpus file {str(path)!r} is not a readable parquet file ({_first_line(err)}): it is "
                        "damaged, cut short or of another format") from None
    schema = file.schema_arrow
    if text_field not in schema.names:
        raise DataError(f"corpus file {str(path)!r} has no column {text_field!r} (its columns: {_few(schema.names)}); "
                        "text_field names the column holding the documents", field="text_field")
    kind = schema.field(text_field).type
    if not _is_string(pa, kind):
        raise DataError(f"corpus file {str(path)!r}: its column {text_field!r} holds {kind}, not strings; text_field "
                        "names the column holding the documents", field="text_field")
    row = 0
    for group in range(file.num_row_groups):
        first, rows = row, file.metadata.row_group(group).num_rows
        try:  # pyarrow reads a row group's column whole; it becomes Python strings a batch at a time
            batches = file.read_row_group(group, columns=[text_field], use_threads=False).to_batches(PARQUET_BATCH_ROWS)
            for batch in batches:
                texts = batch.column(0).to_pylist()
                for text in texts:
                    if text is None:
                        raise DataError(f"corpus file {str(path)!r}, row {row}: its column {text_field!r} is null, "
                                        "not a string (drop or fill the empty rows)")
                    if text.strip():
                        yield text.replace("\r\n", "\n")
                    row += 1
        except (*errors, UnicodeDecodeError) as err:
            raise DataError(f"corpus file {str(path)!r} cannot be read in row group {group} (rows {first} to "
                            f"{first + rows - 1}): the file is damaged ({type(err).__name__}: "
                            f"{_first_line(err)})") from None


def _is_string(pa, kind) -> bool:
    """Whether an arrow type holds strings (string, large_string, string_view, or a dictionary of them)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    views = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow ≥ 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or views(kind)


def _few(names) -> str:
    """Field or column names, quoted: up to eight, then how many more; "none" for none."""
    names = [json.dumps(str(n), ensure_ascii=False) for n in names]
    if not names:
        return "none"
    return ", ".join(names) if len(names) <= 8 else ", ".join(names[:7]) + f", and {len(names) - 7} more"


def _first_line(err: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else "no message"
    return line if len(line) <= limit else line[: limit - 1] + "…"
