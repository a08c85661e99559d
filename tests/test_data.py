"""Tests of the text data layer: tokenizers, corpora and token-window batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ebt.data.batches import example_normal, example_randint
from ebt.data.corpus import SHAKESPEARE_VALIDATION_PLAYS, load_corpus, shakespeare_plays
from ebt.data.tokenizers import build_tokenizer, tokenizer_from_json
from ebt.data.tokens import count_windows, encode_documents, random_windows, sequential_windows
from ebt.errors import CheckpointError, ConfigError, DataError

SYNTHETIC = [
    f"The {animal} number {i} jumps over the {thing}; naïve café — 東京 {i * 7}.\n"
    for i in range(200)
    for animal, thing in [("fox", "fence"), ("cat", "wall"), ("hen", "gate")]
]


# --- Tokenizers --------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_non_ascii() -> None:
    tok = build_tokenizer("byte")
    text = "Héllo, wörld! 東京 🎭\n\ttab"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and tok.kind == "byte"
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    # Half of a multi-byte character decodes to U+FFFD instead of raising.
    emoji = tok.encode("🎭")
    assert len(emoji) == 4 and tok.decode(emoji[:2]) == "\ufffd"
    assert tokenizer_from_json(tok.to_json()).encode(text) == ids


def test_bpe_tokenizer_round_trip_and_serialization() -> None:
    tok = build_tokenizer("bpe", SYNTHETIC, vocab_size=400)
    assert tok.kind == "bpe" and 256 < tok.vocab_size <= 400
    text = "The fox number 12 jumps over the gate; naïve café — 東京.\nUnseen: Ωmega 🎭"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # Merges were learned, so common text is shorter than in bytes.
    assert len(tok.encode(SYNTHETIC[0])) < len(SYNTHETIC[0].encode("utf-8")) / 2
    restored = tokenizer_from_json(tok.to_json())
    assert restored.kind == "bpe" and restored.vocab_size == tok.vocab_size
    for sample in [text, *SYNTHETIC[:20]]:
        assert restored.encode(sample) == tok.encode(sample)
    # Same texts, same tokenizer.
    assert build_tokenizer("bpe", SYNTHETIC, vocab_size=400).to_json() == tok.to_json()
    # Bad byte sequences decode with replacement characters rather than raising.
    emoji_ids = tok.encode("🎭")
    assert "\ufffd" in tok.decode(emoji_ids[:1])


def test_gpt2_tokenizer() -> None:
    tok = build_tokenizer("gpt2")
    assert tok.kind == "gpt2" and tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    text = "To be, or not to be: that is the question. Café 東京"
    assert tok.decode(tok.encode(text)) == text
    assert tokenizer_from_json(tok.to_json()).encode(text) == tok.encode(text)


def test_tokenizer_errors() -> None:
    header = {"format": "ebt-tokenizer", "version": 1}
    with pytest.raises(ConfigError, match="'wordpiece'.*byte, bpe, gpt2"):
        build_tokenizer("wordpiece")
    with pytest.raises(ConfigError, match="vocab_size=100"):
        build_tokenizer("bpe", SYNTHETIC, vocab_size=100)
    with pytest.raises(DataError, match="empty"):
        build_tokenizer("bpe", ["", "  \n"])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        tokenizer_from_json("{not json")
    with pytest.raises(CheckpointError, match="not an EBT tokenizer"):
        tokenizer_from_json(json.dumps({"model": "x"}))
    with pytest.raises(CheckpointError, match="kind='sentencepiece'"):
        tokenizer_from_json(json.dumps({**header, "kind": "sentencepiece"}))
    with pytest.raises(CheckpointError, match="corrupt"):
        tokenizer_from_json(
            json.dumps({**header, "kind": "bpe", "hf_tokenizer": "{}"})
        )


# --- Corpora -----------------------------------------------------------------------------------


def test_shakespeare_corpus() -> None:
    plays = shakespeare_plays()
    assert len(plays) == 38
    assert "hamlet" in plays and all(name in plays for name in SHAKESPEARE_VALIDATION_PLAYS)
    hamlet = plays["hamlet"]
    assert "To be, or not to be" in hamlet
    # Markdown is gone: no heading, bold or italics markers, no hard-break spaces.
    assert not any(marker in hamlet for marker in ("#", "**", "_", "\\", "  \n", "\n\n\n"))
    assert hamlet.startswith("Hamlet\n")
    corpus = load_corpus("shakespeare")
    assert corpus.name == "shakespeare"
    assert len(corpus.train) + len(corpus.validation) == 38
    assert corpus.validation and set(corpus.train).isdisjoint(corpus.validation)
    train_chars = sum(map(len, corpus.train))
    validation_chars = sum(map(len, corpus.validation))
    assert 0.07 < validation_chars / (train_chars + validation_chars) < 0.13


def test_path_corpus_single_file(tmp_path: Path) -> None:
    lines = [f"line {i} of the file" for i in range(100)]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus(str(path), validation_fraction=0.2)
    assert corpus.name == "book.txt"
    (train,), (validation,) = corpus.train, corpus.validation
    assert train + validation == path.read_text(encoding="utf-8")
    assert train.endswith("\n")  # cut at a line boundary
    assert 0.15 < len(validation) / (len(train) + len(validation)) < 0.25


def test_path_corpus_directory(tmp_path: Path) -> None:
    for i in range(10):
        sub = tmp_path / ("a" if i < 5 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i}.txt").write_text(f"document number {i}\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a .txt file", encoding="utf-8")
    corpus = load_corpus(str(tmp_path), validation_fraction=0.2)
    assert len(corpus.train) == 8 and len(corpus.validation) == 2
    assert set(corpus.train).isdisjoint(corpus.validation)
    assert not any("not a .txt" in d for d in corpus.train + corpus.validation)
    assert load_corpus(str(tmp_path), validation_fraction=0.2) == corpus  # deterministic
    # Two files: one each side, even with a small fraction.
    two = tmp_path / "two"
    two.mkdir()
    (two / "x.txt").write_text("first", encoding="utf-8")
    (two / "y.txt").write_text("second", encoding="utf-8")
    corpus = load_corpus(str(two), validation_fraction=0.05)
    assert corpus.train == ["first"] and corpus.validation == ["second"]


def test_corpus_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match="missing.txt"):
        load_corpus(str(missing))
    with pytest.raises(DataError, match="'wikipedia'.*shakespeare"):
        load_corpus("wikipedia")
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    (empty_dir / "readme.md").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="empty_dir.*no corpus files"):
        load_corpus(str(empty_dir))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt.*not valid UTF-8"):
        load_corpus(str(latin1))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="blank.txt.*empty"):
        load_corpus(str(blank))
    good = tmp_path / "good.txt"
    good.write_text("some text\nmore text\n", encoding="utf-8")
    for fraction in (0.0, 0.6, -0.1):
        with pytest.raises(DataError, match=f"validation_fraction={fraction}"):
            load_corpus(str(good), validation_fraction=fraction)


# --- Batches -----------------------------------------------------------------------------------


def test_encode_documents_separates_documents() -> None:
    tok = build_tokenizer("byte")
    stream = encode_documents(["ab", "c"], tok)
    assert stream.dtype == torch.int64 and stream.dim() == 1
    assert tok.decode(stream.tolist()) == "ab\n\nc"


def _is_slice(stream: torch.Tensor, row: torch.Tensor) -> bool:
    windows = stream.unfold(0, row.numel(), 1)
    return bool((windows == row).all(dim=1).any())


def _windows(sampler) -> torch.Tensor:
    """The next optimizer step's examples of this process, its micro-batches joined."""
    return torch.cat([batch.data for batch in next(sampler)])


def test_random_windows() -> None:
    stream = torch.randperm(1000)  # distinct values, so a window's position is unambiguous
    sampler = random_windows(stream, window=17, batch_size=8, seed=3)
    batches = [_windows(sampler) for _ in range(5)]
    assert all(b.shape == (8, 17) and b.dtype == torch.int64 for b in batches)
    assert all(_is_slice(stream, row) for b in batches for row in b)
    again = random_windows(stream, window=17, batch_size=8, seed=3)
    assert all(torch.equal(a, _windows(again)) for a in batches)
    other_seed = random_windows(stream, window=17, batch_size=8, seed=4)
    assert not torch.equal(_windows(other_seed), batches[0])


def test_global_batch_is_the_same_over_processes_and_micro_batches() -> None:
    """The same seed and global batch give the same windows (and example seeds) in the same order
    whatever the number of processes and micro-batches; each process gets its own share."""
    stream = torch.randperm(1000)
    whole = random_windows(stream, window=9, batch_size=8, seed=5)
    ranks = [random_windows(stream, window=9, batch_size=8, seed=5, rank=r, world_size=2, micro_batches=2)
             for r in range(2)]
    for _ in range(3):
        (step,) = next(whole)
        parts = [next(r) for r in ranks]
        assert [b.data.shape[0] for p in parts for b in p] == [2, 2, 2, 2]
        assert torch.equal(torch.cat([b.data for p in parts for b in p]), step.data)
        assert torch.equal(torch.cat([b.seeds for p in parts for b in p]), step.seeds)
    with pytest.raises(ConfigError, match=r"train.batch_size = 8 .*3 process.*multiple of 6"):
        random_windows(stream, window=9, batch_size=8, seed=5, world_size=3, micro_batches=2)


def test_random_windows_resume_on_another_number_of_processes() -> None:
    stream = torch.arange(500)
    sampler = random_windows(stream, window=9, batch_size=4, seed=0)
    next(sampler)
    state = sampler.state_dict()
    expected = [_windows(sampler) for _ in range(3)]
    resumed = random_windows(stream, window=9, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(e, _windows(resumed)) for e in expected)
    halves = [random_windows(stream, window=9, batch_size=4, seed=0, rank=r, world_size=2) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)
    assert all(torch.equal(e, torch.cat([_windows(h) for h in halves])) for e in expected)
    with pytest.raises(CheckpointError, match="seed"):
        random_windows(stream, window=9, batch_size=4, seed=1).load_state_dict(state)


def test_example_draws_depend_on_the_seed_alone() -> None:
    seeds = torch.tensor([3, 9, 3])
    draws = example_normal(seeds, (2, 5))
    assert draws.shape == (3, 2, 5) and torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    assert torch.equal(example_normal(seeds[1:2], (2, 5))[0], draws[1])
    assert not torch.equal(example_normal(seeds, (2, 5), stream=1), draws)
    ints = example_randint(seeds, 7)
    assert ints.dtype == torch.int64 and ints[0] == ints[2] and bool(((ints >= 0) & (ints < 7)).all())


def test_random_windows_edge_stream() -> None:
    # A stream exactly one window long has one possible window.
    stream = torch.arange(10)
    batch = _windows(random_windows(stream, window=10, batch_size=3, seed=0))
    assert torch.equal(batch, stream.expand(3, 10))


@pytest.mark.parametrize("length", [10, 11, 25, 26, 100])
def test_sequential_windows_predict_every_token_once(length: int) -> None:
    window = 6
    stream = torch.arange(length)
    batches = list(sequential_windows(stream, window=window, batch_size=3))
    windows = torch.cat(batches)
    assert windows.shape[0] == count_windows(stream, window)
    assert all(b.shape[0] == 3 for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= 3
    for i, row in enumerate(windows):
        assert torch.equal(row, stream[i * (window - 1) : i * (window - 1) + window])
    targets = windows[:, 1:].flatten().tolist()
    # Each predicted token appears once, in order, from the second token on; only a tail
    # shorter than a window is left out.
    assert targets == list(range(1, len(targets) + 1))
    assert length - 1 - len(targets) < window - 1


def test_sequential_windows_max_windows() -> None:
    batches = list(sequential_windows(torch.arange(100), window=5, batch_size=4, max_windows=6))
    assert [b.shape[0] for b in batches] == [4, 2]


def test_too_short_stream_raises() -> None:
    short = torch.arange(7)
    message = r"training split has 7 tokens.*\(7\) \+ 1 = 8.*context_len"
    with pytest.raises(DataError, match=message):
        random_windows(short, window=8, batch_size=2, seed=0)
    with pytest.raises(DataError, match="validation split has 7 tokens"):
        sequential_windows(short, window=8, batch_size=2, name="validation split")
    with pytest.raises(DataError, match="7 tokens"):
        count_windows(short, 8)
    with pytest.raises(ConfigError, match="window=1"):
        random_windows(short, window=1, batch_size=2, seed=0)
    with pytest.raises(ConfigError, match="rank=2"):
        random_windows(short, window=4, batch_size=2, seed=0, rank=2, world_size=2)
