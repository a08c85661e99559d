"""Tests of the downstream sets (`ebt.data.downstream`): loading, the converters, the errors.

No network: the installed format comes from tiny files in tests/fixtures/downstream/, and the
converters are fed tiny inputs in each source's raw format. The installer's own tests, failures
included, are in test_downstream_install.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebt.data.pairs import Pair

from ebt.data import downstream
from ebt.data.downstream import (
    DOWNSTREAM_SETS,
    EXTRA_SETS,
    arithmetic_pairs,
    downstream_dir,
    dyck_pairs,
    gsm_symbolic_pairs,
    load_downstream,
    not_installed,
    olmes_gsm8k_pairs,
    olmes_squad_pairs,
)
from ebt.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "downstream"


@pytest.fixture
def fixture_dir(monkeypatch) -> Path:
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(FIXTURES))
    return FIXTURES


def test_sets_are_the_papers_four_in_order():
    assert DOWNSTREAM_SETS == ("gsm8k", "squad", "elementary_math_qa", "dyck_languages")
    assert EXTRA_SETS == ("gsm_symbolic", "arithmetic_train", "arithmetic_test")  # installed beside, not scored


@pytest.mark.parametrize("name", [*DOWNSTREAM_SETS, "gsm_symbolic"])
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


def unavailable_math(directory: Path) -> Path:
    """`directory` holding the fixture sets but Math QA, which its manifest says no registry serves."""
    for name in DOWNSTREAM_SETS:
        if name != "elementary_math_qa":
            (directory / f"{name}.jsonl").write_bytes((FIXTURES / f"{name}.jsonl").read_bytes())
    (directory / "MANIFEST.json").write_text(json.dumps({"version": 2, "files": {}, "missing": {
        "elementary_math_qa": {"kind": "unavailable", "reason": "no package registry serves it"}}}))
    return directory


def test_a_set_not_installed_is_named_with_the_installers_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(unavailable_math(tmp_path)))
    (tmp_path / "elementary_math_qa.jsonl").write_bytes((FIXTURES / "elementary_math_qa.jsonl").read_bytes())
    with pytest.raises(DataError) as error:  # a file the manifest does not vouch for is not used
        load_downstream("elementary_math_qa")
    assert str(error.value) == ("downstream set 'elementary_math_qa' is not installed: no package registry serves it "
                                f"(MANIFEST.json in {tmp_path})")
    assert not_installed("squad") is None and len(load_downstream("squad")) == 3


def test_a_set_no_registry_serves_says_the_installer_cannot_help_without_a_manifest(monkeypatch, tmp_path):
    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(tmp_path))  # a folder made by hand: no MANIFEST.json
    with pytest.raises(DataError) as error:
        load_downstream("elementary_math_qa")
    message = str(error.value)
    assert "make downstream-data` (or `ebt downstream-data`) cannot install it: no package registry serves" in message
    assert "install it with" not in message and "\n" not in message
    (tmp_path / "elementary_math_qa.jsonl").write_bytes((FIXTURES / "elementary_math_qa.jsonl").read_bytes())
    assert len(load_downstream("elementary_math_qa")) == 3  # a file kept from an earlier install is read


def test_an_unknown_set_lists_the_known_ones(fixture_dir):
    with pytest.raises(ConfigError) as error:
        load_downstream("gsm_8k")
    assert "'gsm_8k'" in str(error.value) and all(name in str(error.value) for name in DOWNSTREAM_SETS + EXTRA_SETS)


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


def test_olmes_squad_pairs_put_the_question_last_and_take_the_first_answer():
    rows = [{"doc": {"query": "Title: Warsaw\nBackground: Warsaw is the capital of Poland. It lies on the Vistula.\n"
                              "Question: Which river does Warsaw lie on? \nAnswer:",
                     "answers_text": ["the Vistula", "Vistula"]}},
            {"doc": {"query": "Title: Q\nBackground: A line with\nQuestion: inside it.\nQuestion: Which?\nAnswer:",
                     "answers_text": ["inside"]}}]
    assert olmes_squad_pairs(rows) == [
        ("Warsaw is the capital of Poland. It lies on the Vistula.\n\nQuestion: Which river does Warsaw lie on?\n"
         "Answer:", " the Vistula"),
        ("A line with\nQuestion: inside it.\n\nQuestion: Which?\nAnswer:", " inside"),  # the last question is asked
    ]
    for bad in ({"doc": {"query": "Background: x\nQuestion: y\nAnswer:", "answers_text": ["z"]}},
                {"doc": {"query": "Title: t\nBackground: x\nQuestion: y\nAnswer:", "answers_text": []}},
                {"query": "Title: t\nBackground: x\nQuestion: y\nAnswer:"}):
        with pytest.raises(DataError, match="row 2 is not an OLMES SQuAD request"):
            olmes_squad_pairs([rows[0], bad])


def test_dyck_pairs_follow_big_benchs_definition():
    """Dyck-4 words of 4–100 brackets, cut before their last 1–3 closing brackets; the answer closes
    exactly what the input left open; distinct inputs; the same seed gives the same set."""
    closing = {"(": ")", "[": "]", "{": "}", "<": ">"}
    pairs = dyck_pairs(300, seed=5)
    assert len(pairs) == 300 and len({p for p, _ in pairs}) == 300 and dyck_pairs(300, seed=5) == pairs
    assert dyck_pairs(300, seed=6) != pairs
    for prompt, answer in pairs:
        head, _, rest = prompt.partition("\nInput: ")
        assert head == "Complete the rest of the sequence, making sure that the parentheses are closed properly."
        assert rest.endswith("\nOutput:") and answer.startswith(" ")
        given, wanted = rest.removesuffix("\nOutput:").split(" "), answer[1:].split(" ")
        stack = []
        for bracket in given:
            if bracket in closing:
                stack.append(closing[bracket])
            else:
                assert stack.pop() == bracket  # the input is a well-nested prefix
        assert wanted == stack[::-1] and 1 <= len(wanted) <= 3  # the answer closes all that is open
        assert 4 <= len(given) + len(wanted) <= 100
    assert {len(a.split()) for _, a in pairs} == {1, 2, 3}


def test_olmes_gsm8k_pairs_keep_gsm8ks_text_verbatim():
    """GSM8K's question and whole reference answer, as its test file writes them: the calculator
    annotations, the commas of "#### 2,100", a double space; nothing stripped or normalised."""
    answer = "It makes 1,050*2=$<<1050*2=2100>>2,100.\n#### 2,100"
    rows = [{"doc": {"question": "Eggs sell for $2 a dozen.  How much for 1,050 dozen?", "answer": answer,
                     "short_answer": "2,100", "id": 0,
                     "choices": ["It makes 1,050 * 2 = 2,100. So the answer is 2,100."]},
             "label": "2100"}]
    assert olmes_gsm8k_pairs(rows) == [("Question: Eggs sell for $2 a dozen.  How much for 1,050 dozen?\nAnswer:",
                                        " " + answer)]
    for bad in ({"doc": {"question": "How many?", "answer": "It is 3."}},  # no "#### N" line
                {"doc": {"question": "", "answer": "#### 3"}},
                {"doc": {"question": "How many?"}},
                {"question": "How many?", "answer": "#### 3"}):
        with pytest.raises(DataError, match="row 2 is not an OLMES GSM8K request"):
            olmes_gsm8k_pairs([rows[0], bad])


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
        assert entry["transformer_ppl"] > 1 and entry["transformer_bpb"] > 0
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


def test_downstream_suite_scores_the_installed_sets_and_names_the_missing_one(monkeypatch, tmp_path, trained_runs,
                                                                            capsys):
    from conftest import run_cli

    monkeypatch.setenv("EBT_DOWNSTREAM_DIR", str(unavailable_math(tmp_path)))
    run = trained_runs["ebt"]["dir"]
    code, out, err = run_cli(["eval", run, "--suite", "downstream", "--max-examples", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert list(result["datasets"]) == ["validation", "gsm8k", "squad", "dyck_languages"]
    assert result["missing"] == {"elementary_math_qa": f"no package registry serves it (MANIFEST.json in {tmp_path})"}
    code, out, err = run_cli(["eval", run, "--suite", "downstream", "--max-examples", "2"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[-1] == ("elementary_math_qa: not scored, not installed: no package registry serves it "
                                    f"(MANIFEST.json in {tmp_path})")
