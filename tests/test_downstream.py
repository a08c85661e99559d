"""Tests of the downstream sets (`ebt.data.downstream`): loading, the converters, the errors.

No network: the installed format comes from tiny files in tests/fixtures/downstream/, and the
converters are fed tiny inputs in each source's raw format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebt.data.pairs import Pair

from ebt.data import downstream
from ebt.data.downstream import (
    DOWNSTREAM_SETS,
    arithmetic_pairs,
    downstream_dir,
    gsm_symbolic_pairs,
    load_downstream,
    multiple_choice_pairs,
    squad_pairs,
)
from ebt.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "downstream"


@pytest.fixture
def fixture_dir(monkeypatch) -> Path:
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(FIXTURES))
    return FIXTURES


def test_sets_are_the_papers_four_in_order():
    assert DOWNSTREAM_SETS == ("gsm_symbolic", "squad", "elementary_math_qa", "dyck_languages")


@pytest.mark.parametrize("name", DOWNSTREAM_SETS)
def test_load_gives_the_files_pairs_in_order(fixture_dir, name):
    lines = (fixture_dir / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    expected = [Pair(row["prompt"], row["answer"]) for row in map(json.loads, lines)]
    pairs = load_downstream(name)
    assert pairs == expected and len(pairs) == 3
    assert all(p.answer.startswith(" ") for p in pairs)  # the answer follows the prompt
    assert pairs[2].where.endswith(f"{name}.jsonl, line 3")
    assert load_downstream(name) == pairs  # a fixed order


def test_limit_keeps_the_first_pairs(fixture_dir):
    every = load_downstream("squad")
    assert load_downstream("squad", limit=2) == every[:2]
    assert load_downstream("squad", limit=100) == every
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="limit"):
            load_downstream("squad", limit=bad)


def test_default_dir_follows_xdg_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("EBT_DOWNSTREAM_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert downstream_dir() == tmp_path / "ebt" / "downstream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert downstream_dir() == Path.home() / ".cache" / "ebt" / "downstream"
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(tmp_path / "here"))
    assert downstream_dir() == tmp_path / "here"


def test_a_missing_set_names_the_dir_and_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(tmp_path))
    with pytest.raises(DataError) as error:
        load_downstream("dyck_languages")
    message = str(error.value)
    assert "dyck_languages" in message and str(tmp_path) in message
    assert "make downstream-data" in message and "ebt downstream-data" in message


def test_an_unknown_set_lists_the_known_ones(fixture_dir):
    with pytest.raises(ConfigError) as error:
        load_downstream("gsm8k")
    assert "'gsm8k'" in str(error.value) and all(name in str(error.value) for name in DOWNSTREAM_SETS)


@pytest.mark.parametrize("content", [
    b'{"prompt": "Question: 1 + 1?\\nAnswer:", "answer": " 2"}\n{"prompt": "Question: 2 +',  # truncated
    b'{"prompt": "Question: 1 + 1?\\nAnswer:"}\n',  # no answer
    b'["Question: 1 + 1?", " 2"]\n',  # not an object
    b'{"prompt": "caf\xe9", "answer": " 2"}\n',  # not UTF-8
    b"",  # empty
])
def test_a_damaged_file_is_a_data_error_naming_it(monkeypatch, tmp_path, content):
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(tmp_path))
    (tmp_path / "squad.jsonl").write_bytes(content)
    with pytest.raises(DataError, match="squad.jsonl"):
        load_downstream("squad")


def test_squad_pairs_put_the_question_last_and_take_the_first_answer():
    raw = {"version": "1.1", "data": [{"title": "Warsaw", "paragraphs": [
        {"context": "Warsaw is the capital of Poland. It lies on the Vistula.",
         "qas": [{"id": "a", "question": "What is the capital of Poland?",
                  "answers": [{"answer_start": 0, "text": "Warsaw"}, {"answer_start": 0, "text": "Warsaw "}]},
                 {"id": "b", "question": "Which river does Warsaw lie on? ",
                  "answers": [{"answer_start": 45, "text": "the Vistula"}, {"answer_start": 49, "text": "Vistula"}]}]},
        {"context": "Poland joined the EU in 2004.",
         "qas": [{"id": "c", "question": "When did Poland join the EU?", "answers": [{"text": "2004"}]}]}]}]}
    paragraph = "Warsaw is the capital of Poland. It lies on the Vistula.\n\n"
    assert squad_pairs(raw) == [
        (paragraph + "Question: What is the capital of Poland?\nAnswer:", " Warsaw"),
        (paragraph + "Question: Which river does Warsaw lie on?\nAnswer:", " the Vistula"),
        ("Poland joined the EU in 2004.\n\nQuestion: When did Poland join the EU?\nAnswer:", " 2004"),
    ]
    with pytest.raises(DataError, match="SQuAD"):
        squad_pairs({"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "y", "answers": []}]}]}]})


def test_multiple_choice_pairs_take_the_target_of_highest_score():
    task = {"name": "dyck_languages", "examples": [
        {"input": "( < [ ( )", "target_scores": {")": 0, "] > )": 1, "] )": 0}},
        {"input": "{ [ ]", "target_scores": {"}": 1.0, ")": 0.0}},
        {"input": "< >  [", "target_scores": {"]": 0.5, ")": 0.5}},  # a tie: the first listed
    ]}
    assert multiple_choice_pairs(task, downstream.DYCK_TEMPLATE) == [
        ("Complete the rest of the sequence, making sure that the parentheses are closed properly.\n"
         "Input: ( < [ ( )\nOutput:", " ] > )"),
        ("Complete the rest of the sequence, making sure that the parentheses are closed properly.\n"
         "Input: { [ ]\nOutput:", " }"),
        ("Complete the rest of the sequence, making sure that the parentheses are closed properly.\n"
         "Input: < >  [\nOutput:", " ]"),
    ]
    math = {"examples": [{"input": "120 is what percent of 50 ?", "target_scores": {"5 %": 0, "240 %": 1}}]}
    assert multiple_choice_pairs(math) == [("Question: 120 is what percent of 50 ?\nAnswer:", " 240 %")]
    with pytest.raises(DataError, match="target_scores"):
        multiple_choice_pairs({"examples": [{"input": "x", "target_scores": {}}]})


def test_gsm_symbolic_pairs_answer_with_the_chain_of_thought():
    item = {"question": "Ann has 3 bags of 4 apples. How many apples does she have?" + downstream.GSM_INSTRUCTION,
            "answer": "12", "metadata": {"answer_cot": "She has 3 * 4 = 12 apples.\n#### 12"}}
    assert gsm_symbolic_pairs([item]) == [
        ("Question: Ann has 3 bags of 4 apples. How many apples does she have?\nAnswer:",
         " She has 3 * 4 = 12 apples.\n#### 12")]


def test_arithmetic_test_problems_are_distinct_and_held_out():
    items = [{"question": f"Calculate {a} + {b}.", "answer": str(a + b)} for a, b in
             [(1, 2), (3, 4), (1, 2), (5, 6), (3, 4), (7, 8), (9, 1)]]
    train, test = arithmetic_pairs(items, train=3, test=2)
    assert train == [("Question: Calculate 1 + 2.\nAnswer:", " 3"), ("Question: Calculate 3 + 4.\nAnswer:", " 7"),
                     ("Question: Calculate 5 + 6.\nAnswer:", " 11")]
    assert test == [("Question: Calculate 7 + 8.\nAnswer:", " 15"), ("Question: Calculate 9 + 1.\nAnswer:", " 10")]
    with pytest.raises(DataError, match="distinct"):
        arithmetic_pairs(items, train=5, test=2)


def test_install_keeps_files_whose_checksum_matches(monkeypatch, tmp_path):
    """A second install downloads nothing: every file is checked against MANIFEST.json."""
    made = {stem: [(f"Question: {stem}?\nAnswer:", " 1")] for stem in downstream.SOURCES}
    calls = []
    monkeypatch.setattr(downstream, "_bigbench_files", lambda tmp: calls.append("bigbench") or {
        "squad": {"data": []}, "elementary_math_qa": {"examples": []}, "dyck_languages": {"examples": []}})
    monkeypatch.setattr(downstream, "_generated_sets", lambda tmp: calls.append("gym") or {
        stem: made[stem] for stem in ("gsm_symbolic", "arithmetic_train", "arithmetic_test")})
    downstream.install(tmp_path)
    assert calls == ["bigbench", "gym"]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {f"{stem}.jsonl" for stem in downstream.SOURCES}
    assert manifest["files"]["arithmetic_test.jsonl"]["pairs"] == 1
    downstream.install(tmp_path)
    assert calls == ["bigbench", "gym"]  # nothing again
    (tmp_path / "gsm_symbolic.jsonl").write_text("damaged\n")
    downstream.install(tmp_path)
    assert calls == ["bigbench", "gym", "gym"]  # only the damaged file's source again
    assert json.loads((tmp_path / "gsm_symbolic.jsonl").read_text()) == {"prompt": "Question: gsm_symbolic?\nAnswer:",
                                                                          "answer": " 1"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary folder is gone


# --- The downstream suite: `ebt eval RUN --suite downstream` --------------------------------------


def test_downstream_suite_scores_answers_at_each_budget_beside_the_transformer(fixture_dir, trained_runs, capsys):
    """Each set's figure is the answer perplexity `ebt eval --data SET.jsonl` gives; prompts longer
    than the context (16 here) are cut from the left, so every pair is scored."""
    from conftest import run_cli
    from ebt.suite import BUDGETS

    ebt_run, transformer_run = trained_runs["ebt"]["dir"], trained_runs["transformer"]["dir"]
    code, out, err = run_cli(["eval", ebt_run, "--suite", "downstream", "--baseline", transformer_run, "--json"],
                             capsys)
    assert code == 0, err
    result = json.loads(out)
    assert list(result["datasets"]) == ["validation", *DOWNSTREAM_SETS]
    for name in DOWNSTREAM_SETS:
        entry = result["datasets"][name]
        assert entry["pairs"] == 3 and [(b["steps"], b["samples"]) for b in entry["budgets"]] == list(BUDGETS)
        assert entry["prompts_cut"] == 3  # every fixture prompt is longer than 16 bytes
        assert entry["transformer_ppl"] > 1
    # the Transformer++'s figure is what scoring the set's answers alone gives
    from ebt.data.pairs import encode_pairs
    from ebt.evaluate import evaluate
    from ebt.runs import load_run

    baseline = load_run(transformer_run)
    squad = encode_pairs(load_downstream("squad"), baseline.tokenizer, 17, cut_prompts=True).split
    alone = evaluate(baseline.model, squad).summary()["ppl"]
    assert result["datasets"]["squad"]["transformer_ppl"] == pytest.approx(alone)
    code, out, err = run_cli(["eval", ebt_run, "--suite", "downstream", "--max-examples", "2"], capsys)
    assert code == 0, err
    assert "answer perplexity given the question" in out and "dyck_languages" in out and "T++" in out


def test_downstream_suite_refuses_what_it_cannot_score(monkeypatch, tmp_path, trained_runs, capsys):
    from conftest import run_cli

    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(tmp_path))  # nothing installed
    code, _, err = run_cli(["eval", trained_runs["ebt"]["dir"], "--suite", "downstream"], capsys)
    assert code == 2 and "make downstream-data" in err and err.count("\n") == 1
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(FIXTURES))
    code, _, err = run_cli(["eval", trained_runs["ebt"]["dir"], "--suite", "downstream", "--steps", "3"], capsys)
    assert code == 2 and "sets its own thinking budgets" in err
    code, _, err = run_cli(["eval", trained_runs["transformer"]["dir"], "--suite", "downstream", "--baseline",
                            trained_runs["transformer"]["dir"]], capsys)
    assert code == 2 and "this run is a Transformer++ itself" in err
    longer = tmp_path / "longer"  # a Transformer++ that reads more of each prompt is no fair baseline
    import ebt.train
    from conftest import tiny_config

    ebt.train.train(tiny_config("transformer", trained_runs["transformer"]["config"].data.corpus,
                                {"train.steps": 1, "model.context_len": 24}), longer, quiet=True)
    code, _, err = run_cli(["eval", trained_runs["ebt"]["dir"], "--suite", "downstream", "--baseline", longer], capsys)
    assert code == 2 and "reads 24 tokens (model.context_len)" in err
    code, out, err = run_cli(["eval", trained_runs["transformer"]["dir"], "--suite", "downstream", "--json"], capsys)
    assert code == 0 and json.loads(out)["datasets"]["squad"]["ppl"] > 1
