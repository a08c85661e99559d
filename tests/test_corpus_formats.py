"""Corpora as people have them (ebt.data.formats): parquet files with a text column, JSON lines
compressed with gzip or Zstandard, and folders mixing them with .txt and .jsonl.

Every format must give the documents the same corpus gives as plain .jsonl (so a prepared corpus
holds the same tokens whatever format it came in), `text_field` must pick another field or column,
and every bad input must be one line naming the file (and the line or row where it can), through
the command line and through the Python API.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import run_cli, synthetic_text, tiny_config
from ebt.data import formats
from ebt.data.corpus import corpus_files, iter_documents, load_corpus
from ebt.data.prepared import open_prepared, prepare
from ebt.errors import ConfigError, DataError
from ebt.packages import PackageError
from ebt.rundata import load_data, with_data_overrides
from ebt.rundata.text import corpus_fingerprint

# Windows line ends and a blank document, which every format treats alike.
DOCUMENTS = [synthetic_text(lines=3 + i % 4, seed=i) for i in range(23)]
DOCUMENTS[4] = "a line\r\nand another, ünïcödé ✓\r\n"
DOCUMENTS[9] = "   \n"
EXPECTED = [d.replace("\r\n", "\n") for d in DOCUMENTS if d.strip()]


def write_jsonl(path: Path, documents, field: str = "text", **extra) -> Path:
    """`documents` as JSON lines in `field` (plus `extra` fields), compressed as `path`'s name says."""
    data = "".join(json.dumps({field: d, **extra}) + "\n" for d in documents).encode("utf-8")
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.lower().endswith(".zst"):  # two frames, as `zstd` writes a file appended to
        half = len(data) // 2
        compress = zstandard.ZstdCompressor().compress
        data = compress(data[:half]) + compress(data[half:])
    path.write_bytes(data)
    return path


def write_parquet(path: Path, documents, field: str = "text", rows_per_group: int = 5, **columns) -> Path:
    table = pa.table({field: documents, "id": list(range(len(documents))), **columns})
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.JSONL.ZST", "c.parquet", "c.PARQUET"])
def test_every_format_gives_the_documents_of_plain_jsonl(tmp_path: Path, name: str, monkeypatch) -> None:
    monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 2)  # row groups of 5 rows, made strings 2 at a time
    path = tmp_path / name
    (write_parquet if name.lower().endswith(".parquet") else write_jsonl)(path, DOCUMENTS)
    if name.lower().endswith(".parquet"):
        assert pq.ParquetFile(path).num_row_groups == 5
    assert list(iter_documents(path)) == EXPECTED


def test_a_folder_mixes_every_format_in_path_order(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    write_parquet(root / "a.parquet", DOCUMENTS[:6])
    write_jsonl(root / "b.jsonl.gz", DOCUMENTS[6:11])
    write_jsonl(root / "sub" / "c.jsonl.zst", DOCUMENTS[11:15])
    write_jsonl(root / "sub" / "d.JSONL", DOCUMENTS[15:20])
    (root / "e.txt").write_text(DOCUMENTS[20])
    write_parquet(root / "f.Parquet", DOCUMENTS[21:])
    for ignored in ("notes.json.gz", "data.csv", "x.tar.zst"):
        (root / ignored).write_text("not read")
    files = corpus_files(root)
    assert [p.relative_to(root).as_posix() for p in files.files] == [
        "a.parquet", "b.jsonl.gz", "e.txt", "f.Parquet", "sub/c.jsonl.zst", "sub/d.JSONL"]
    assert files.summary().startswith("read 6 corpus files (.parquet ×2, .jsonl ×1, .jsonl.gz ×1, and 2 more); "
                                      "ignored 3 other file(s) (.csv ×1, .gz ×1, .zst ×1)")
    assert files.counts()["formats"] == {".parquet": 2, ".jsonl": 1, ".jsonl.gz": 1, ".jsonl.zst": 1, ".txt": 1}
    order = DOCUMENTS[:11] + [DOCUMENTS[20]] + DOCUMENTS[21:] + DOCUMENTS[11:20]
    assert list(iter_documents(root)) == [d.replace("\r\n", "\n") for d in order if d.strip()]


def test_a_prepared_parquet_corpus_holds_the_tokens_of_the_same_jsonl(tmp_path: Path, capsys) -> None:
    write_parquet(tmp_path / "c.parquet", DOCUMENTS, rows_per_group=3)
    write_jsonl(tmp_path / "c.jsonl", DOCUMENTS)
    for name in ("c.parquet", "c.jsonl"):
        code, out, err = run_cli(["prepare-data", tmp_path / name, "--out", tmp_path / f"prep-{name}",
                                  "--validation-fraction", "0.2", "--json"], capsys)
        assert code == 0, err
        assert "text_field" not in json.loads(out)  # the default leaves the index as it always was
    a, b = open_prepared(tmp_path / "prep-c.parquet"), open_prepared(tmp_path / "prep-c.jsonl")
    for split in ("train", "validation"):
        tokens = [np.concatenate([np.asarray(s) for s in p.split(split).shards]) for p in (a, b)]
        assert len(tokens[0]) > 0 and np.array_equal(*tokens)
    # Loaded in memory, the two are one corpus: the same documents, the same record of the data.
    assert (corpus_fingerprint(load_corpus(str(tmp_path / "c.parquet")), "x")
            == corpus_fingerprint(load_corpus(str(tmp_path / "c.jsonl")), "x"))


@pytest.mark.parametrize("name", ["c.parquet", "c.jsonl.gz"])
def test_text_field_names_another_field_or_column(tmp_path: Path, name: str, capsys) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    path = folder / name
    if name.endswith(".parquet"):
        write_parquet(path, DOCUMENTS, field="content", rows_per_group=4)
    else:
        write_jsonl(path, DOCUMENTS, field="content", url="https://example.org")
    code, out, err = run_cli(["prepare-data", folder, "--out", tmp_path / "prep", "--text-field", "content",
                              "--json"], capsys)
    assert code == 0, err
    index = json.loads(out)
    assert index["text_field"] == "content" and index["files"]["formats"] == {name[1:]: 1}
    assert sum(index["splits"][s]["documents"] for s in ("train", "validation")) == len(EXPECTED)
    # Without it, the default field is missing: one line naming the file, what it has, and the flag.
    code, _, err = run_cli(["prepare-data", folder, "--out", tmp_path / "prep2"], capsys)
    assert code == 2 and err.count("\n") == 1 and name in err and "--text-field" in err, err
    assert ("(its columns: \"content\", \"id\")" if name.endswith(".parquet") else '(its fields: "content", "url")') in err
    # A run reads the same field from its config (data.text_field), and names it when it is wrong.
    data = load_data(tiny_config(corpus=folder, overrides={"data.text_field": "content"}))
    assert len(data.train) + len(data.validation) > 0
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--data", folder, "--out", tmp_path / "run",
                            "--data.text_field=body", "--train.steps=1", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "body" in err and name in err and "--data.text_field" in err, err
    # `ebt eval --data` scores a file with another field given by --text-field (a run's own data keeps its own).
    code, out, err = run_cli(["train", "--preset", "text-ebt-tiny", "--out", tmp_path / "own", "--train.steps=1",
                              "--model.dim=32", "--model.n_heads=2", "--model.context_len=16", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", tmp_path / "own", "--data", path, "--max-examples", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--text-field" in err, err
    code, out, err = run_cli(["eval", tmp_path / "own", "--data", path, "--text-field", "content", "--max-examples",
                              "2", "--json"], capsys)
    assert code == 0 and json.loads(out)["tokens"] > 0, err
    code, _, err = run_cli(["eval", tmp_path / "own", "--text-field", "content"], capsys)
    assert code == 2 and "with --data" in err and err.count("\n") == 1, err
    code, _, err = run_cli(["eval", tmp_path / "own", "--data", tmp_path / "prep", "--text-field", "content"], capsys)
    assert code == 2 and "prepared corpus is tokenized already" in err and err.count("\n") == 1, err


def test_text_field_is_checked_and_refused_where_it_does_not_apply(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"data.text_field = '' is not allowed"):
        tiny_config(overrides={"data.text_field": ""})
    code, _, err = run_cli(["prepare-data", "shakespeare", "--out", tmp_path / "p", "--text-field="], capsys)
    assert code == 2 and "--text-field" in err and err.count("\n") == 1, err
    write_jsonl(tmp_path / "c.jsonl", DOCUMENTS)
    prepare(str(tmp_path / "c.jsonl"), tmp_path / "prep", progress=False)
    config = tiny_config(corpus=tmp_path / "prep", overrides={"data.text_field": "body"})
    with pytest.raises(ConfigError, match=r"data.text_field does not apply to this run: .* is a prepared corpus"):
        with_data_overrides(config, load_data(config), frozenset({"data.text_field"}))


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damaged_parquet(path: Path) -> Path:
    """A parquet file whose third row group (rows 10–14) holds bytes that are not UTF-8."""
    documents = [f"document {i}" if i != 12 else "MARK" for i in range(20)]
    pq.write_table(pa.table({"text": documents}), path, row_group_size=5, compression="none")
    data = path.read_bytes()
    assert data.count(b"MARK") >= 1
    path.write_bytes(data.replace(b"MARK", b"\xff\xfe\xff\xfe"))
    return path


def _bad_inputs(tmp_path: Path) -> list[tuple[Path, str]]:
    """(a corpus file, what its one-line error must say) for each kind of bad input."""
    docs = [synthetic_text(lines=40, seed=i) for i in range(40)]
    cases = [
        (write_parquet(tmp_path / "nofield.parquet", ["x"], field="body"),
         r"nofield.parquet' has no column 'text' \(its columns: \"body\", \"id\"\)"),
        (pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet") or tmp_path / "ints.parquet",
         r"ints.parquet': its column 'text' holds int64, not strings"),
        (write_parquet(tmp_path / "null.parquet", ["a", "b", "c", "d", None, "f"], rows_per_group=2),
         r"null.parquet', row 4: its column 'text' is null, not a string"),
        (write_parquet(tmp_path / "cut.parquet", docs, rows_per_group=10), r"cut.parquet' is not a readable parquet file"),
        (_damaged_parquet(tmp_path / "damaged.parquet"),
         r"damaged.parquet' cannot be read in row group 2 \(rows 10 to 14\): the file is damaged"),
        (write_jsonl(tmp_path / "nofield.jsonl", ["a"], field="body"),
         r'nofield.jsonl, line 1 has no string field "text" \(its fields: "body"\)'),
        (write_jsonl(tmp_path / "int.jsonl.gz", [1]), r'int.jsonl.gz, line 1: its field "text" is an integer, not a string'),
        (write_jsonl(tmp_path / "null.jsonl.zst", ["a", None]), r'null.jsonl.zst, line 2: its field "text" is null'),
        (write_jsonl(tmp_path / "cut.jsonl.gz", docs),
         r"cut.jsonl.gz' cannot be decompressed after line \d+: the gzip stream is damaged or cut short"),
        (write_jsonl(tmp_path / "cut.jsonl.zst", docs), r"cut.jsonl.zst' cannot be decompressed as Zstandard: the file "
                                                         "ends inside a frame"),
        (tmp_path / "notgzip.jsonl.gz", r"notgzip.jsonl.gz' cannot be decompressed after line 0"),
        (tmp_path / "notzstd.jsonl.zst", r"notzstd.jsonl.zst' cannot be decompressed as Zstandard: it is not "
                                                             "Zstandard, or a frame is damaged"),
        (tmp_path / "notes.csv", r"notes.csv' is of no corpus format by its extension; a corpus file is \.txt, \.jsonl, "
                                 r"\.jsonl\.gz, \.jsonl\.zst or \.parquet"),
    ]
    for name in ("cut.parquet", "cut.jsonl.gz", "cut.jsonl.zst"):
        _cut(tmp_path / name)
    for name in ("notgzip.jsonl.gz", "notzstd.jsonl.zst", "notes.csv"):
        (tmp_path / name).write_text('{"text": "plain, not compressed"}\n')
    return cases


def test_each_bad_input_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    for path, message in _bad_inputs(tmp_path):
        with pytest.raises(DataError, match=message):
            load_corpus(str(path))
        code, out, err = run_cli(["prepare-data", path, "--out", tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 1 and path.name in err, (path, err)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial"))
        # In a folder, the same error (the folder lists a .csv as ignored, not as an error).
        if path.suffix != ".csv":
            folder = tmp_path / f"folder-{path.name}"
            folder.mkdir()
            path.rename(folder / path.name)
            with pytest.raises(DataError, match=message):
                load_corpus(str(folder))


def test_a_missing_package_is_one_line_saying_what_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    write_jsonl(tmp_path / "c.jsonl.zst", DOCUMENTS)
    write_parquet(tmp_path / "c.parquet", DOCUMENTS)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(PackageError, match="needs the package zstandard, which is not installed; install it with: "
                                           "pip install zstandard"):
        load_corpus(str(tmp_path / "c.jsonl.zst"))
    code, _, err = run_cli(["prepare-data", tmp_path / "c.parquet", "--out", tmp_path / "out"], capsys)
    assert code != 0 and err.count("\n") == 1 and "c.parquet needs the package pyarrow" in err, err


def test_documents_stream_from_a_compressed_file(tmp_path: Path) -> None:
    """The first document comes before the file is read to its end (a cut-short file errs only there)."""
    for name in ("long.jsonl.gz", "long.jsonl.zst"):
        path = write_jsonl(tmp_path / name, [synthetic_text(lines=50, seed=i) for i in range(400)])
        _cut(path)
        documents = iter_documents(path)
        assert next(documents).strip()
        with pytest.raises(DataError, match="cannot be decompressed"):
            list(documents)


def test_a_run_from_before_text_field_resumes_on_its_prepared_corpus(tmp_path: Path, capsys) -> None:
    """A run whose config.json has no data.text_field (every run before it) resumes, its data's
    record unchanged: an index prepared with the default field is the index it always was."""
    from ebt.train import train

    write_jsonl(tmp_path / "c.jsonl", [synthetic_text(lines=30, seed=i) for i in range(12)])
    prepare(str(tmp_path / "c.jsonl"), tmp_path / "prep", progress=False)
    train(tiny_config(corpus=tmp_path / "prep", overrides={"train.steps": 2}), tmp_path / "run", quiet=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["data"]["text_field"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    prepare(str(tmp_path / "c.jsonl"), tmp_path / "prep", overwrite=True, progress=False)  # prepared again: same hash
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--resume", "--train.steps=3", "--quiet"], capsys)
    assert code == 0, err
