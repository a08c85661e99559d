"""Inputs read as the user means them (issue 23, items 5, 7, 8 and 9): a corpus folder's hidden
files and ebt's own outputs are not documents; a broken optional package is one line; nothing given
is silently dropped; messages and printed commands tell the truth (hints survive a shell).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config
from ebt.data.corpus import corpus_files, load_corpus
from ebt.errors import DataError
from ebt.rundata.text import corpus_fingerprint, load_data

# --- 5. A corpus directory is read as the user means it -----------------------------------------


def _corpus(root: Path) -> Path:
    """Five documents in nested folders, a .jsonl among them, and a file of another kind."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a.txt").write_text("alpha one\nline two\n")
    (root / "b" / "z.txt").write_text("beta\n")
    (root / "sub" / "docs.jsonl").write_text('{"text": "gamma doc"}\n{"text": "delta doc"}\n')
    (root / "sub" / "deeper" / "e.txt").write_bytes(b"eps\r\nilon\n")
    (root / "notes.md").write_text("not read")
    return root


def _litter(root: Path, trained_run: Path | None = None) -> None:
    """What notebooks, editors and earlier ebt commands leave in a corpus folder."""
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("alpha one\nline two\n")  # a.txt's copy
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / ".~lock.e.txt#").write_text("lock")
    (root / "sub" / ".draft.txt").write_text("a hidden draft")
    run = root / "runs" / "first"  # a run trained inside the folder: its metrics.jsonl is no corpus
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "samples.txt").write_text("a generated sample")
    prepared = root / "prepared"
    prepared.mkdir()
    (prepared / "index.json").write_text("{}")
    (prepared / "tokenizer.json").write_text("{}")
    (prepared / "train-00000.tokens").write_bytes(b"\0\0")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep.json").write_text("{}")
    (root / "sweep" / "notes.txt").write_text("a sweep's file")


def test_hidden_files_and_ebt_outputs_are_not_documents_and_the_hash_is_unchanged(tmp_path: Path) -> None:
    clean = _corpus(tmp_path / "clean")
    # The documents' sha256 (data.json) of this corpus as every release before hidden files were
    # skipped computed it: runs trained on a corpus without hidden files still resume.
    assert corpus_fingerprint(load_corpus(str(clean), 0.2), "x")["sha256"] == (
        "c31826ebb90f1852a582e402fc5c7de431265b2ef9ee03630248de17ae98f667")
    littered = _corpus(tmp_path / "littered")
    _litter(littered)
    a, b = load_corpus(str(clean), 0.2), load_corpus(str(littered), 0.2)
    assert (a.train, a.validation) == (b.train, b.validation)
    assert corpus_fingerprint(a, "x") == corpus_fingerprint(b, "x")
    files = b.files
    assert [p.relative_to(littered).as_posix() for p in files.files] == [
        "a.txt", "b/z.txt", "sub/deeper/e.txt", "sub/docs.jsonl"]
    assert files.hidden == (".ipynb_checkpoints/", "sub/.draft.txt", "sub/.~lock.e.txt#")
    assert files.outputs == ("prepared (a prepared corpus)", "runs/first (a run directory)",
                             "sweep (a scaling sweep)")
    line = files.summary()
    assert "read 4 .txt/.jsonl files" in line and "3 hidden" in line and ".ipynb_checkpoints/" in line
    assert "runs/first (a run directory)" in line and "ignored 1 other file(s) (.md ×1)" in line


def test_a_hidden_corpus_root_is_read_and_links_to_folders_are_not_followed(tmp_path: Path) -> None:
    root = _corpus(tmp_path / ".corpus")  # the folder given may itself be hidden: only what is under it counts
    (root / "elsewhere").symlink_to(_corpus(tmp_path / "other"), target_is_directory=True)
    files = corpus_files(root)
    assert len(files.files) == 4 and not files.hidden


def test_an_ebt_output_given_as_the_corpus_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    root = _corpus(tmp_path / "c")
    _litter(root)
    for folder, kind in (("runs/first", "a run directory"), ("sweep", "a scaling sweep")):
        with pytest.raises(DataError, match=f"is {kind}, not a corpus"):
            load_corpus(str(root / folder))
        code, out, err = run_cli(["prepare-data", root / folder, "--out", tmp_path / "p"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"is {kind}, not a corpus" in err
        assert not (tmp_path / "p").exists()
    # A folder holding nothing to read says what it skipped.
    only_hidden = tmp_path / "only-hidden"
    (only_hidden / ".ipynb_checkpoints").mkdir(parents=True)
    (only_hidden / ".ipynb_checkpoints" / "x.txt").write_text("copy")
    with pytest.raises(DataError, match=r"no .txt or .jsonl files \(read 0 .*\.ipynb_checkpoints/"):
        load_corpus(str(only_hidden))


def test_the_data_summary_and_prepare_data_say_what_was_read_and_skipped(tmp_path: Path, capsys) -> None:
    root = tmp_path / "c"
    root.mkdir()
    for i in range(6):
        (root / f"part{i}.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 8)
    _litter(root)
    data = load_data(tiny_config(corpus=root))
    assert "from the corpus directory: read 6 .txt/.jsonl files; skipped 3 hidden" in data.summary
    code, out, err = run_cli(["prepare-data", root, "--out", tmp_path / "prep"], capsys)
    assert code == 0, err
    assert "files: read 6 .txt/.jsonl files; skipped 3 hidden" in out and "runs/first (a run directory)" in out
    code, out, err = run_cli(["prepare-data", root, "--out", tmp_path / "prep2", "--json"], capsys)
    assert code == 0 and json.loads(out)["files"].startswith("read 6 .txt/.jsonl files")
