"""Prepared corpora (`ebt prepare-data`, ebt.data.prepared) and the two window layouts (ebt.data.tokens).

A prepared directory must hold exactly the tokens the corpus gives in memory, read back through
memory maps; the paper's padded layout must predict each document's own tokens and nothing after
them; damaged files and another tokenizer's data must be refused, naming the file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, synthetic_text, tiny_config, tiny_model
from ebt.data.corpus import load_corpus
from ebt.data.prepared import open_prepared, prepare
from ebt.data.tokenizers import ByteTokenizer, build_tokenizer
from ebt.data.tokens import PAD, TokenSplit, encode_documents, encode_split, random_windows, split_window
from ebt.errors import ConfigError, DataError
from ebt.evaluate import evaluate
from ebt.train import train


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve documents: .txt files and a .jsonl file, some short, one of a single character."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        (root / f"doc{i:02d}.txt").write_text(synthetic_text(lines=20 + 10 * i, seed=i))
    records = [{"text": synthetic_text(lines=30, seed=100 + i)} for i in range(3)] + [{"text": "x"}]
    (root / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _tokens(split: TokenSplit) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in split.shards])


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_prepared_tokens_equal_the_corpus_in_memory(corpus_dir: Path, tmp_path: Path, kind: str) -> None:
    index = prepare(str(corpus_dir), tmp_path / "prep", tokenizer=kind, bpe_vocab_size=300, progress=False)
    assert index["dtype"] == "uint16" and index["splits"]["train"]["documents"] + \
        index["splits"]["validation"]["documents"] == 12
    prepared = open_prepared(tmp_path / "prep")
    corpus = load_corpus(str(corpus_dir))
    tokenizer = build_tokenizer(kind, corpus.train, 300)
    assert prepared.tokenizer.to_json() == tokenizer.to_json()
    for name in ("train", "validation"):
        split = prepared.split(name)
        assert isinstance(split.shards[0], np.memmap) and split.shards[0].dtype == np.uint16
        expected = encode_documents(getattr(corpus, name), tokenizer).numpy()
        assert np.array_equal(_tokens(split), expected)
    # The same seed draws the same training windows from the prepared and the in-memory corpus.
    in_memory = random_windows(encode_documents(corpus.train, tokenizer), 17, 8, seed=3)
    from_disk = prepared.split("train").training_batches(17, 8, seed=3)
    for _ in range(3):
        assert torch.equal(next(in_memory)[0].data, next(from_disk)[0].data)


def test_shards_hold_whole_documents_and_windows_stay_inside(corpus_dir: Path, tmp_path: Path) -> None:
    prepare(str(corpus_dir), tmp_path / "prep", shard_tokens=1500, progress=False)
    split = open_prepared(tmp_path / "prep").split("train")
    assert len(split.shards) > 2
    for shard, spans in zip(split.shards, split.documents):  # every shard starts and ends with a document
        assert spans[0, 0] == 0 and spans[-1, 1] == len(shard)
    whole = _tokens(split)
    window = 33
    batch = torch.cat([b.data for b in next(split.training_batches(window, 64, seed=0))])
    starts_by_shard = [np.asarray(s, dtype=np.int64) for s in split.shards]
    for row in batch.numpy():  # each window is consecutive tokens of one shard
        assert any(any(np.array_equal(s[i:i + window], row) for i in np.nonzero(s == row[0])[0]) for s in starts_by_shard)
    # Evaluation predicts every token after each shard's first once (up to each shard's short tail).
    windows = torch.cat(list(split.windows(window, 16)))
    assert len(windows) == split.count_windows(window) == sum((len(s) - 1) // (window - 1) for s in split.shards)
    assert windows[:, 1:].numel() <= len(whole)


def test_padded_layout_predicts_each_documents_own_tokens(tmp_path: Path) -> None:
    documents = ["abcdef", "xy", "z", "0123456789abcdef"]
    split = encode_split(documents, ByteTokenizer(), layout="padded")
    window = 9
    assert split.examples(window) == 3  # "z" has nothing to predict
    assert split.tokens_read(window) == 6 + 2 + 9 and len(split) > 6 + 2 + 1 + 16
    rows = torch.cat(list(split.windows(window, 8)))
    assert rows.tolist()[0] == list(b"abcdef") + [PAD] * 3
    assert rows.tolist()[1] == list(b"xy") + [PAD] * 7
    assert rows.tolist()[2] == list(b"012345678")  # truncated to context + 1 tokens
    x, targets = split_window(rows)
    assert int(x.min()) >= 0 and targets[1].tolist() == [ord("y")] + [PAD] * 7
    # Training draws whole documents, from their first token.
    drawn = torch.cat([b.data for b in next(split.training_batches(window, 32, seed=1))])
    assert {tuple(r) for r in drawn.tolist()} <= {tuple(r) for r in rows.tolist()}


def test_padding_is_not_scored() -> None:
    """The loss of a padded window is the loss of its real positions: what stands after the
    document's end changes nothing, and only real targets are counted."""
    torch.manual_seed(0)
    model = tiny_model("transformer", vocab_size=256, dtype=torch.float64)  # context 8
    split = encode_split(["abc", "defghij"], ByteTokenizer(), layout="padded")
    result = evaluate(model, split, batch_size=4).summary()
    assert result["tokens"] == 2 + 6
    x, targets = split_window(torch.cat(list(split.windows(9, 4))))
    logits = model(x)
    real = targets != PAD
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real]).detach()
    assert result["loss"] == pytest.approx(float(expected), rel=1e-9)
    scrambled = x.clone()
    scrambled[0, 3:] = 7  # after "abc"'s end: causal attention keeps it from the real positions
    assert torch.allclose(model(scrambled)[0, :3], logits[0, :3])


def test_training_from_a_prepared_directory(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "prep"], capsys)
    assert code == 0 and "train:" in out and "validation:" in out, err
    base = {"train.steps": 3, "model.context_len": 16}
    for layout in ("packed", "padded"):
        config = tiny_config("ebt", tmp_path / "prep", {**base, "data.layout": layout})
        result = train(config, tmp_path / f"run-{layout}", quiet=True)
        assert np.isfinite(result["loss"]) and result["tokens"] > 0
    code, out, err = run_cli(["eval", tmp_path / "run-padded", "--data", tmp_path / "prep", "--json"], capsys)
    assert code == 0 and json.loads(out)["split"] == "validation", err
    # Resuming keeps reading the prepared directory.
    code, _, err = run_cli(["train", "--out", tmp_path / "run-packed", "--resume", "--train.steps=4", "--quiet"], capsys)
    assert code == 0, err


def test_another_tokenizer_is_refused(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    prepare(str(corpus_dir), tmp_path / "bpe", tokenizer="bpe", bpe_vocab_size=300, progress=False)
    with pytest.raises(ConfigError, match=r"text.tokenizer = 'byte'.*prepared with a 'bpe' tokenizer.*--text.tokenizer=bpe"):
        train(tiny_config("ebt", tmp_path / "bpe"), tmp_path / "run", quiet=True)
    train(tiny_config("ebt", corpus_dir, {"train.steps": 1}), tmp_path / "byte-run", quiet=True)
    code, _, err = run_cli(["eval", tmp_path / "byte-run", "--data", tmp_path / "bpe"], capsys)
    assert code == 2 and "prepared with another tokenizer" in err and "--tokenizer" in err
    # Preparing with the run's own tokenizer makes data it can read.
    prepare(str(corpus_dir), tmp_path / "same", tokenizer=str(tmp_path / "byte-run"), progress=False)
    code, _, err = run_cli(["eval", tmp_path / "byte-run", "--data", tmp_path / "same", "--max-examples", "2"], capsys)
    assert code == 0, err


def test_damaged_files_are_named(corpus_dir: Path, tmp_path: Path) -> None:
    prepare(str(corpus_dir), tmp_path / "prep", progress=False)
    shard = tmp_path / "prep" / "train-00000.tokens"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1  # one bit: the size is right, the tokens are not
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-00000.tokens is damaged"):
        open_prepared(tmp_path / "prep")
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match=r"train-00000.tokens holds .* bytes where .*index.json says"):
        open_prepared(tmp_path / "prep")
    data[10] ^= 1
    shard.write_bytes(bytes(data))  # repaired
    open_prepared(tmp_path / "prep")
    (tmp_path / "prep" / "validation-00000.documents").unlink()
    with pytest.raises(DataError, match=r"validation-00000.documents is missing"):
        open_prepared(tmp_path / "prep", verify=False)
    (tmp_path / "prep" / "index.json").write_text('{"format": "ebt-prepared-data", "version": 1}')
    with pytest.raises(DataError, match=r"index.json is not a prepared-corpus index"):
        open_prepared(tmp_path / "prep")
    (tmp_path / "prep" / "index.json").write_text("{")
    with pytest.raises(DataError, match=r"index.json is damaged"):
        open_prepared(tmp_path / "prep")


def test_out_of_vocabulary_tokens_are_refused_when_read(corpus_dir: Path, tmp_path: Path) -> None:
    """Without the hash check, a token id outside the vocabulary still never reaches a model."""
    prepare(str(corpus_dir), tmp_path / "prep", progress=False)
    shard = tmp_path / "prep" / "train-00000.tokens"
    tokens = np.fromfile(shard, dtype="<u2")
    tokens[:] = 300  # outside the byte vocabulary
    tokens.tofile(shard)
    split = open_prepared(tmp_path / "prep", verify=False).split("train")
    with pytest.raises(DataError, match=r"train-00000.tokens holds token id 300, outside the vocabulary \[0, 256\)"):
        next(split.training_batches(9, 4, seed=0))


def test_large_vocabularies_are_stored_as_uint32(corpus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    class Wide(ByteTokenizer):
        vocab_size = 70_000

    monkeypatch.setattr("ebt.data.prepared.resolve_tokenizer", lambda *a: Wide())
    index = prepare(str(corpus_dir), tmp_path / "prep", progress=False)
    assert index["dtype"] == "uint32"
    split = open_prepared(tmp_path / "prep").split("validation")
    assert split.shards[0].dtype == np.uint32
    corpus = load_corpus(str(corpus_dir))
    assert np.array_equal(_tokens(split), encode_documents(corpus.validation, ByteTokenizer()).numpy())


def test_bad_input_is_refused(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    code, _, err = run_cli(["prepare-data", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and 'a.jsonl, line 2 has no string field "text"' in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial"))  # nothing half-written
    (bad / "a.jsonl").write_text('{"text": "fine"}\nnot json\n')
    code, _, err = run_cli(["prepare-data", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "a.jsonl, line 2 is not valid JSON" in err
    prepare(str(corpus_dir), tmp_path / "prep", progress=False)
    code, _, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "prep"], capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "prep", "--overwrite"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["prepare-data", corpus_dir, "--out", corpus_dir, "--overwrite"], capsys)
    assert code == 2 and "not a prepared corpus" in err  # never deletes a folder of other files
    for flag, value in (("--tokenizer", "wordpiece"), ("--validation-fraction", "0.9"), ("--shard-tokens", "0"),
                        ("--bpe-vocab-size", "10")):
        code, _, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "x", flag, value], capsys)
        assert code == 2 and flag in err and value in err, (flag, err)
    code, _, err = run_cli(["prepare-data", tmp_path / "missing", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "neither a known corpus name" in err
    (tmp_path / "a-file").write_text("x")
    code, _, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "a-file", "--overwrite"], capsys)
    assert code == 2 and "--out" in err and "is a file" in err
    code, _, err = run_cli(["prepare-data", corpus_dir, "--out", tmp_path / "x", "--tokenizer", "gpt2",
                            "--bpe-vocab-size", "500"], capsys)
    assert code == 2 and "(flag --bpe-vocab-size)" in err and "tokenizer 'bpe'" in err
    with pytest.raises(ConfigError, match="split 'test' is not allowed"):
        open_prepared(tmp_path / "prep").split("test")
    headless = tmp_path / "headless"  # shards whose index was lost
    headless.mkdir()
    (headless / "train-00000.tokens").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="token shards but no index.json"):
        load_corpus(str(headless))
    with pytest.raises(ConfigError, match=r"data.layout = 'ragged'.*one of 'packed', 'padded'"):
        tiny_config("ebt", overrides={"data.layout": "ragged"})
