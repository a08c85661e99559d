"""Prompt/answer pairs: the loss on answer tokens only, `ebt finetune`, and `ebt eval --data PAIRS`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import _PHRASES, run_cli
from ebt.checkpoint import load_config
from ebt.data.pairs import Pair, encode_pairs, read_pairs, split_pairs
from ebt.data.tokenizers import build_tokenizer
from ebt.data.tokens import PAD, context_only, split_window
from ebt.errors import ConfigError, DataError
from ebt.evaluate import evaluate
from ebt.generate import generate
from ebt.runs import load_run


def phrase_pairs() -> list[dict[str, str]]:
    """The synthetic corpus's phrases cut in two: a prompt of ≤ 10 characters, the rest the answer."""
    return [{"prompt": p[:min(10, len(p) // 2)], "answer": p[min(10, len(p) // 2):]} for p in _PHRASES]


def write_pairs(path: Path, records: list, repeat: int = 1) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for _ in range(repeat) for r in records))
    return path


@pytest.fixture
def byte_tokenizer():
    return build_tokenizer("byte", ["x"])


def test_split_window_reads_prompts_but_predicts_only_answers():
    prompt, answer = torch.tensor([5, 6, 7]), torch.tensor([8, 9])
    window = torch.cat([context_only(prompt), answer, torch.full((2,), PAD)])[None]  # (1, 7)
    x, targets = split_window(window)
    assert x.tolist() == [[5, 6, 7, 8, 9, 0]]  # the prompt is read as its ids, padding as 0
    assert targets.tolist() == [[PAD, PAD, 8, 9, PAD, PAD]]  # only the answer is predicted


def test_answer_only_loss_has_no_gradient_through_prompt_positions(trained_runs, byte_tokenizer):
    """The gradient of the loss w.r.t. each position's logits is zero exactly at the prompt's
    positions (and padding), non-zero at every answer token's, for both model kinds."""
    pairs = [Pair("the cat", " sat."), Pair("a dog ran", " to")]
    split = encode_pairs(pairs, byte_tokenizer, 17).split
    batch = next(split.windows(17, 2))
    x, targets = split_window(batch)
    for kind in ("transformer", "ebt"):
        run = load_run(trained_runs[kind]["dir"])
        logits = run.model.predict(x, generator=torch.Generator().manual_seed(0)).y.detach().requires_grad_()
        run.model.task.loss(logits, targets).backward()
        moved = logits.grad.abs().sum(dim=-1) > 0  # (B, S)
        expected = torch.zeros_like(moved)
        for row, pair in enumerate(pairs):
            p, a = len(pair.prompt), len(pair.answer)
            expected[row, p - 1:p - 1 + a] = True  # position i predicts token i + 1
        assert torch.equal(moved, expected), kind


def test_encode_pairs_cuts_and_refuses(byte_tokenizer):
    long = Pair("x" * 20, " yes", "pairs.jsonl, line 7")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 7: the prompt is 20 tokens, more than the model's context of 16"):
        encode_pairs([long], byte_tokenizer, 17)
    both_long = Pair("q" * 40 + "?", "a" * 40)
    encoded = encode_pairs([long, Pair("ab", "c" * 30), both_long], byte_tokenizer, 17, cut_prompts=True)
    assert (encoded.cut_prompts, encoded.cut_answers) == (2, 2)
    rows = next(encoded.split.windows(17, 3))
    x, targets = split_window(rows)
    assert (targets[0] != PAD).sum() == 4 and bytes(x[0, :13].tolist()) == b"x" * 13  # the prompt's last 13
    assert (targets[1] != PAD).sum() == 15  # a short prompt stays whole: "c" * 30 cut to the 15 after it
    # a long prompt keeps at least half a window, its end (the question), before a long answer
    assert bytes(x[2, :8].tolist()) == b"q" * 7 + b"?" and (targets[2] != PAD).sum() == 9
    # a prompt of exactly context_len tokens leaves one answer token
    one = encode_pairs([Pair("y" * 16, "zz")], byte_tokenizer, 17)
    assert one.cut_answers == 1 and int((split_window(next(one.split.windows(17, 1)))[1] != PAD).sum()) == 1


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"}', r'line 2 has no field "answer"'),
    ('{"prompt": "a", "answer": "  "}', r'line 2 has an empty "answer"'),
    ('{"prompt": "", "answer": "b"}', r'line 2 has an empty "prompt"'),
    ('{"prompt": 3, "answer": "b"}', r'line 2 has the int 3 in the field "prompt"'),
    ('["a", "b"]', r"line 2 is a JSON list"),
    ("{oops", r"line 2 is not valid JSON"),
])
def test_read_pairs_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


def test_read_and_split_pairs(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"prompt": "q1", "answer": "a1", "extra": 1}\n\n{"prompt": "q2", "answer": "a2"}\n')
    pairs = read_pairs(path)
    assert pairs == [Pair("q1", "a1"), Pair("q2", "a2")] and pairs[1].where.endswith("line 4")
    assert split_pairs(pairs * 10, 0.1)["validation"] == [pairs[1], pairs[1]]
    with pytest.raises(DataError, match="at least 2"):
        split_pairs(pairs[:1], 0.1)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no pairs"):
        read_pairs(tmp_path / "empty.jsonl")


def test_exact_match_is_what_greedy_decoding_answers(trained_runs, byte_tokenizer):
    """For the (deterministic) Transformer++, a pair counts as an exact match exactly when greedy
    generation from its prompt gives its answer; per-window log-likelihoods sum to the loss."""
    run = load_run(trained_runs["transformer"]["dir"])
    # 10 characters of a phrase, then its next 2: the tiny trained model gets a few right
    pairs = [Pair(p[i:i + 10], p[i + 10:i + 12]) for p in _PHRASES for i in range(0, len(p) - 12, 3)]
    split = encode_pairs(pairs, run.tokenizer, 17).split
    windows = evaluate(run.model, split)
    result = windows.summary()
    greedy = []
    for pair in pairs:
        answer = run.tokenizer.encode(pair.answer)[: 17 - len(pair.prompt)]
        out = generate(run.model, run.tokenizer.encode(pair.prompt), len(answer), temperature=0)
        greedy.append(out == answer)
    assert windows.greedy.tolist() == greedy and any(greedy)
    assert int(windows.tokens.sum()) == result["tokens"]
    log_likelihood = sum(windows.log_likelihood.tolist())
    assert -log_likelihood / result["tokens"] == pytest.approx(result["loss"], rel=1e-6)  # float32 sums


@pytest.mark.parametrize("kind", ["transformer", "ebt"])
def test_finetune_lowers_answer_loss_and_resumes(trained_runs, tmp_path, capsys, kind):
    pairs = write_pairs(tmp_path / "pairs.jsonl", phrase_pairs(), repeat=8)
    base = trained_runs[kind]["dir"]
    code, before, err = run_cli(["eval", base, "--data", pairs, "--json"], capsys)
    assert code == 0, err
    out = tmp_path / "ft"
    code, _, err = run_cli(["finetune", base, "--data", pairs, "--out", out, "--quiet", "--train.steps=15",
                            "--train.lr=3e-3"], capsys)
    assert code == 0, err
    saved = load_config(out)
    assert saved.train.init == str(Path(base).resolve()) and saved.data.layout == "padded"
    assert saved.model == load_config(base).model
    held = write_pairs(tmp_path / "held.jsonl", phrase_pairs(), repeat=8)  # the same pairs, not the run's data
    code, after, err = run_cli(["eval", out, "--data", held, "--json"], capsys)
    assert code == 0, err
    before, after = json.loads(before), json.loads(after)
    assert after["loss"] < before["loss"] - 0.1, (before["loss"], after["loss"])
    answer_tokens = sum(min(len(r["answer"]), 17 - len(r["prompt"])) for r in phrase_pairs())  # cut at the window
    assert after["tokens"] == before["tokens"] == answer_tokens * 8
    assert after["answers_cut"] == 8 * sum(len(r["prompt"]) + len(r["answer"]) > 17 for r in phrase_pairs())
    # without --data (or with its own data), the run's validation pairs
    code, own, err = run_cli(["eval", out, "--json"], capsys)
    assert code == 0, err
    own = json.loads(own)
    assert (own["split"], own["pairs"]) == ("validation", 4) and 0 <= own["exact_match"] <= 1
    # the same trainer's resume: continue to step 20
    code, _, err = run_cli(["finetune", base, "--out", out, "--resume", "--quiet", "--train.steps=20"], capsys)
    assert code == 0, err
    assert load_run(out).step == 20


def test_finetune_refuses_bad_input(trained_runs, tmp_path, capsys):
    base = trained_runs["transformer"]["dir"]
    pairs = write_pairs(tmp_path / "pairs.jsonl", phrase_pairs(), repeat=2)
    cases = [
        (["--data", pairs, "--model.dim=64"], r"train.init = .*model.dim = 64 \(the initial run has 32\)"),
        (["--data", pairs, "--data.layout=packed"], r"pairs are one example each"),
        (["--data", pairs, "--train.init=elsewhere"], r"train.init is set by `ebt finetune`.*\(flag --train.init\)"),
        ([], r"data is required.*\(flag --data\)"),
        (["--data", write_pairs(tmp_path / "bad.jsonl", [{"prompt": "q", "answer": "a"}, {"prompt": "q"}])],
         r'bad.jsonl, line 2 has no field "answer"'),
        (["--data", write_pairs(tmp_path / "long.jsonl", [{"prompt": "p" * 40, "answer": "a"}] * 3)],
         r"long.jsonl, line 1: the prompt is 40 tokens"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(["finetune", base, "--out", tmp_path / "out", "--quiet", "--train.steps=2", *extra],
                               capsys)
        assert code == 2 and err.count("\n") == 1, (extra, err)
        assert __import__("re").search(message, err), (message, err)
    code, _, err = run_cli(["finetune", tmp_path / "nowhere", "--data", pairs, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "does not exist" in err
    before = {p.name: p.read_bytes() for p in Path(base).iterdir() if p.is_file()}
    code, _, err = run_cli(["finetune", base, "--data", pairs, "--out", base, "--overwrite", "--quiet"], capsys)
    assert code == 2 and "is the run directory this run writes (--out)" in err
    assert {p.name: p.read_bytes() for p in Path(base).iterdir() if p.is_file()} == before  # the source is intact
    out = tmp_path / "ft"
    code, _, err = run_cli(["finetune", base, "--data", pairs, "--out", out, "--quiet", "--train.steps=2"], capsys)
    assert code == 0, err
    other = trained_runs["ebt"]["dir"]
    code, _, err = run_cli(["finetune", other, "--out", out, "--resume", "--quiet", "--train.steps=3"], capsys)
    assert code == 2 and f"was fine-tuned from {Path(base).resolve()}, not from {other}" in err
    # a pairs file named .json is read as pairs too
    as_json = tmp_path / "pairs.json"
    as_json.write_bytes(pairs.read_bytes())
    code, out_text, err = run_cli(["eval", base, "--data", as_json, "--json"], capsys)
    assert code == 0 and "exact_match" in json.loads(out_text), err
    code, _, err = run_cli(["eval", base, "--data", tmp_path / "long.jsonl"], capsys)
    assert code == 2 and "long.jsonl, line 1: the prompt is 40 tokens" in err


def test_training_from_scratch_on_pairs_needs_the_padded_layout(corpus_file, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", phrase_pairs(), repeat=4)
    code, _, err = run_cli(["train", "--preset", "text-transformer-tiny", "--out", tmp_path / "r", "--data", pairs,
                            "--quiet", "--train.steps=2", "--model.context_len=16"], capsys)
    assert code == 2 and "--data.layout=padded" in err
    code, _, err = run_cli(["train", "--preset", "text-transformer-tiny", "--out", tmp_path / "r", "--data", pairs,
                            "--quiet", "--train.steps=2", "--model.context_len=16", "--data.layout=padded",
                            "--train.device=cpu"], capsys)
    assert code == 0, err


def test_init_is_refused_when_not_a_run(tmp_path):
    from ebt.train import train
    from conftest import tiny_config

    config = tiny_config("transformer", overrides={"train.init": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"train.init = .*missing.* must be a run directory"):
        train(config, tmp_path / "out", quiet=True)
