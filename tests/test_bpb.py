"""Bits per byte beside perplexity (issue 24 item 4): the bytes each token stands for, the bytes a
scoring counts, and `bpb` in the summary, `ebt eval` and the validation rows of metrics.jsonl,
checked on runs whose bytes per token are known (byte tokenizer: 1) or computed from the text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_cli, synthetic_text, tiny_model
from ebt.data.tokenizers import ByteTokenizer, build_tokenizer, token_bytes
from ebt.data.tokens import encode_split
from ebt.evaluate import evaluate

TEXT = "Grüße aus Köln — 日本語 🙂 the cat sat.\n" + synthetic_text(40)
DOCUMENTS = [TEXT[:300], TEXT[300:900], TEXT[900:]]


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe", [TEXT], vocab_size=300)


def test_token_bytes_sum_to_the_texts_utf8_bytes(bpe) -> None:
    assert token_bytes(ByteTokenizer()) == [1] * 256
    for tokenizer in (bpe, build_tokenizer("gpt2")):
        table = token_bytes(tokenizer)
        assert len(table) == tokenizer.vocab_size and min(table) >= 1
        ids = tokenizer.encode(TEXT)
        assert sum(table[i] for i in ids) == len(TEXT.encode("utf-8"))
        assert len(ids) < len(TEXT.encode("utf-8"))  # merges: more than one byte per token on average
    assert token_bytes(bpe) is token_bytes(bpe)  # made once per tokenizer


def test_byte_tokenizer_bpb_is_the_loss_in_bits() -> None:
    tokenizer = ByteTokenizer()
    stream = encode_split(DOCUMENTS, tokenizer, "packed", "test")  # separators are "\n\n": 2 bytes, 2 tokens
    model = tiny_model("transformer", vocab_size=256)
    summary = evaluate(model, stream, tokenizer=tokenizer).summary()
    assert summary["bytes"] == summary["tokens"] > 0
    assert summary["bpb"] == pytest.approx(summary["loss"] / math.log(2), rel=1e-12)
    assert "bpb" not in evaluate(model, stream).summary()  # no tokenizer (and no run): no bytes


def test_bpe_bpb_divides_by_the_bytes_of_the_decoded_targets(bpe) -> None:
    ids = torch.tensor(bpe.encode("\n\n".join(DOCUMENTS)))
    model = tiny_model("transformer", vocab_size=bpe.vocab_size)
    windows = evaluate(model, ids, tokenizer=bpe)
    summary = windows.summary()
    n = summary["tokens"]
    assert len(ids) - 1 - model.config.context_len < n < len(ids)  # the stream's tokens in order, in whole windows
    direct = len(bpe.decode(ids[1:n + 1].tolist()).encode("utf-8"))  # the first token is one ASCII byte: "G"
    assert bpe.decode(ids[:1].tolist()) == "G"
    assert summary["bytes"] == direct > summary["tokens"]
    assert summary["bpb"] == pytest.approx(summary["loss"] * summary["tokens"] / direct / math.log(2), rel=1e-12)
    # per window: the bytes of that window's scored targets
    window = model.config.context_len + 1
    first = ids[1:window].tolist()
    assert int(windows.bytes[0]) == len(bpe.decode(first).encode("utf-8"))


def test_eval_and_validation_rows_report_bpb(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--preset", "text-transformer-tiny", "--out", out, "--data", corpus, "--quiet",
                            "--text.tokenizer=bpe", "--text.bpe_vocab_size=300", "--model.n_layers=1",
                            "--model.dim=32", "--model.n_heads=2", "--model.context_len=16", "--train.steps=4",
                            "--train.batch_size=4", "--train.eval_every=2", "--train.eval_examples=4",
                            "--train.device=cpu"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in rows if r.get("split") == "validation"]
    assert validation and all(r["bytes"] > r["tokens"] and r["bpb"] > 0 for r in validation)
    for r in validation:
        assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / r["bytes"] / math.log(2))
    code, text, err = run_cli(["eval", out, "--json", "--max-examples", "4"], capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / result["bytes"] / math.log(2))
    assert result["bpb"] == pytest.approx(validation[-1]["bpb"])  # the same windows as the last validation
    code, line, err = run_cli(["eval", out, "--max-examples", "4"], capsys)
    assert code == 0, err
    assert f"{result['bpb']:.4f} bits/byte" in line
