"""`ebt.harness`: the "ebt" model type of lm-evaluation-harness, scored through `ebt.evaluate`.

lm_eval is installed by `make venv` (requirements-eval.txt) and imported plainly: these tests fail,
never skip, where it is missing. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from conftest import run_cli
from ebt.data.pairs import encode_pairs, read_pairs
from ebt.data.tokens import DOCUMENT_SEPARATOR, TokenSplit, encode_split
from ebt.errors import ConfigError
from ebt.evaluate import evaluate
from ebt.generate import generate
from ebt.harness import DOWNSTREAM_SETS, EBTLM, main, rolling_rows
from ebt.runs import load_run

BATCH = 4
# (context, continuation) pairs that fit the tiny runs' window of 17 tokens; the last two are what
# the tiny models predict greedily (the EBT: " r", the Transformer++: " t"), so that some are greedy.
PAIRS = [("the cat", " sat on"), ("a dog ran", " to the"), ("one two", " three"), ("to be or", " not to"),
         ("she sells", " sea"), ("sea shore", "?"), ("the cat sat", " r"), ("a dog ran ", "t")]
THINKING = {"ebt": [{}, {"steps": 3, "samples": 2}], "transformer": [{}]}
CASES = [(kind, options) for kind, budgets in THINKING.items() for options in budgets]


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def harness_model(run_dir: Path, **model_args) -> EBTLM:
    return EBTLM(str(run_dir), batch_size=BATCH, device="cpu", **model_args)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and no Hugging Face cache outside tmp_path. `datasets` reads its settings once, on
    import (lm_eval imports it), so its module constants are set too."""
    import datasets.config
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    for name, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache),
                        "HF_DATASETS_CACHE": str(cache / "datasets")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in pairs))
    return path


# --- loglikelihood: `ebt eval --data PAIRS`'s figures ---------------------------------------------


@pytest.mark.parametrize("kind, options", CASES)
def test_loglikelihood_equals_ebt_eval_on_the_same_pairs(trained_runs, tmp_path, capsys, kind, options):
    run_dir = trained_runs[kind]["dir"]
    data = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    code, out, _ = run_cli(["eval", run_dir, "--data", data, "--json", "--batch-size", BATCH, "--seed", 0, *flags],
                           capsys)
    assert code == 0
    reference = json.loads(out)
    model = harness_model(run_dir, **options)
    results = model.loglikelihood(requests("loglikelihood", PAIRS))
    answer_tokens = [len(model.tokenizer.encode(a)) for _, a in PAIRS]
    assert reference["tokens"] == sum(answer_tokens)
    assert -sum(ll for ll, _ in results) / sum(answer_tokens) == pytest.approx(reference["loss"], rel=1e-6)
    assert sum(greedy for _, greedy in results) / len(PAIRS) == pytest.approx(reference["exact_match"])
    # pair by pair: the flags and sums of `evaluate` on the windows `ebt eval` builds
    run = load_run(run_dir)
    split = encode_pairs(read_pairs(data), run.tokenizer, run.config.model.context_len + 1).split
    windows = evaluate(run.model, split, batch_size=BATCH, seed=0, **options)
    assert [greedy for _, greedy in results] == windows.greedy.tolist() and windows.greedy.any()
    assert [ll for ll, _ in results] == pytest.approx(windows.log_likelihood.tolist(), rel=1e-6)
    assert all(isinstance(ll, float) and ll < 0 and isinstance(g, bool) for ll, g in results)


def test_loglikelihood_edge_cases(trained_runs):
    model = harness_model(trained_runs["transformer"]["dir"])
    empty, separator, nothing = model.loglikelihood(requests("loglikelihood", [
        ("", "the cat"), (DOCUMENT_SEPARATOR, "the cat"), ("the cat", "")]))
    assert empty == separator  # an empty context is read as the document separator
    assert nothing == (0.0, True)  # log p of the empty string
    with pytest.warns(UserWarning, match=r"1 of 1 continuations do not fit the window \(16 tokens\)"):
        (cut, _), = model.loglikelihood(requests("loglikelihood", [("the", " cat sat on the mat. a dog ran")]))
    (fits, _), = model.loglikelihood(requests("loglikelihood", [("the", " cat sat on th")]))
    assert cut == pytest.approx(fits, rel=1e-6)  # the whole context, and the first 14 tokens that fit beside it
    short = harness_model(trained_runs["transformer"]["dir"], max_length=4)
    with pytest.warns(UserWarning, match=r"do not fit the window \(4 tokens\)"):
        short.loglikelihood(requests("loglikelihood", [("the cat", " sat on")]))


# --- loglikelihood_rolling ----------------------------------------------------------------------


def test_rolling_rows_score_every_token_once_with_the_most_context():
    ids, context, window = list(range(100, 150)), [1, 2], 17
    rows = rolling_rows(ids, context, window)
    assert [t for _, scored in rows for t in scored] == ids
    assert rows[0][0] == context and len(rows[0][1]) == window - len(context)
    for read, scored in rows:
        assert read and len(read) + len(scored) == window  # full windows, the last one included
    assert rows[-1][0][-1] == rows[-2][1][-1]  # the last window reads what came before it
    assert rolling_rows([], context, window) == []
    assert rolling_rows([7], [1, 2, 3], 3) == [([2, 3], [7])]  # a context too long keeps its end


@pytest.mark.parametrize("kind, options", CASES)
def test_loglikelihood_rolling_equals_evaluate_on_the_same_text(trained_runs, kind, options):
    """The library's packed evaluation windows of "\\n\\n" + text (`encode_split` of an empty
    document and the text): 3 whole windows, so they score every token after the first. Less the
    separator's second token, which the harness reads but does not score, that is the harness's figure."""
    run = load_run(trained_runs[kind]["dir"])
    window = run.config.model.context_len + 1
    text = ("the cat sat on the mat. a dog ran to the park! one two")[:3 * (window - 1) - 1]
    stream = encode_split(["", text], run.tokenizer)  # "\n\n" then the text
    assert len(stream) == 1 + 3 * (window - 1)
    common = dict(batch_size=BATCH, seed=0, **options)
    packed = sum(evaluate(run.model, stream, **common).log_likelihood.tolist())
    separator = torch.tensor(run.tokenizer.encode(DOCUMENT_SEPARATOR))
    first = evaluate(run.model, TokenSplit([separator], layout="padded"), **common).log_likelihood.tolist()
    model = harness_model(trained_runs[kind]["dir"], **options)
    rolling, empty = model.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), ("",)]))
    assert rolling == pytest.approx(packed - first[0], rel=1e-5)
    assert empty == 0.0


def test_loglikelihood_rolling_of_a_short_text_is_its_log_probability(trained_runs):
    """A text that fits one window: Σ log p(token | "\\n\\n" and the tokens before), from the logits."""
    model = harness_model(trained_runs["transformer"]["dir"])
    text = "a dog ran to"
    ids = model.tokenizer.encode(DOCUMENT_SEPARATOR) + model.tokenizer.encode(text)
    with torch.no_grad():
        logits = model.model.predict(torch.tensor([ids[:-1]])).y[0]  # (S, V)
    log_p = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    expected = float(log_p[1:].sum())  # the separator's second token is read, not scored
    (rolling,) = model.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    assert rolling == pytest.approx(expected, rel=1e-5)


# --- generate_until -----------------------------------------------------------------------------


def test_generate_stops_when_asked(trained_runs):
    run = load_run(trained_runs["transformer"]["dir"])
    prompt = run.tokenizer.encode("the cat")
    full = generate(run.model, prompt, 12, temperature=0)
    assert generate(run.model, prompt, 12, temperature=0, stop=lambda new: len(new) == 3) == full[:3]


@pytest.mark.parametrize("kind, options", CASES)
def test_generate_until_stops_at_the_first_stop_string(trained_runs, kind, options):
    model = harness_model(trained_runs[kind]["dir"], **options)
    full_ids = generate(model.model, model.tokenizer.encode("the cat sat"), 30, temperature=0, options=model.options)
    full = model.tokenizer.decode(full_ids)
    firsts = [c for i, c in enumerate(full) if c.isascii() and c.isprintable() and full.index(c) == i]
    assert len(firsts) >= 2, full  # the greedy text shows at least two characters
    early, late = firsts[-2:]  # the last two characters to appear first, `early` before `late`
    texts = model.generate_until(requests("generate_until", [
        ("the cat sat", {"until": [late, early], "max_gen_toks": 30}),
        ("the cat sat", {"until": late, "max_gen_toks": 30, "do_sample": False, "temperature": 0.0}),
        ("the cat sat", {"until": [], "max_gen_toks": 5}),
    ]))
    assert texts[0] == full[:full.index(early)]  # the first stop string to appear, whatever its place in the list
    assert texts[1] == full[:full.index(late)]
    assert texts[2] == model.tokenizer.decode(full_ids[:5])


def test_generate_until_refuses_unknown_generation_settings(trained_runs):
    model = harness_model(trained_runs["transformer"]["dir"])
    with pytest.raises(ConfigError, match=r"gen_kwargs 'top_p' are not supported by --model ebt; it takes until, "
                                          "max_gen_toks, do_sample, temperature"):
        model.generate_until(requests("generate_until", [("the", {"until": ["."], "top_p": 0.9})]))
    with pytest.raises(ConfigError, match=r"gen_kwargs max_gen_toks = -1 is not allowed"):
        model.generate_until(requests("generate_until", [("the", {"max_gen_toks": -1})]))


# --- lm_eval end to end -------------------------------------------------------------------------


def test_simple_evaluate_runs_the_downstream_tasks_offline(trained_runs, tmp_path, offline):
    """The shipped task templates, written for a data folder of 4 pairs per set, run through
    lm_eval.simple_evaluate with the "ebt" model built from a --model_args string. Each task is
    scored apart, so the four (with the same pairs) give the same figures as the pairs alone."""
    pairs = PAIRS[:3] + [("a list:", "[1, 2]")]  # a target that looks like a Python literal stays text
    data = tmp_path / "downstream"
    data.mkdir()
    for name in DOWNSTREAM_SETS:
        write_pairs(data / f"{name}.jsonl", pairs)
    assert main(["tasks", "--out", str(tmp_path / "tasks"), "--data-dir", str(data)]) == 0
    assert get_model("ebt") is EBTLM
    run_dir = trained_runs["ebt"]["dir"]
    result = lm_eval.simple_evaluate(
        model="ebt", model_args=f"pretrained={run_dir},steps=2,batch_size={BATCH}", device="cpu",
        tasks=["ebt_downstream"], bootstrap_iters=0, log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    assert result["config"]["thinking"] == {"steps": 2}
    expected = harness_model(run_dir, steps=2).loglikelihood(requests("loglikelihood", pairs))
    for name in DOWNSTREAM_SETS:
        samples = result["samples"][f"ebt_{name}"]
        assert [tuple(s["arguments"][0]) for s in samples] == pairs  # context and continuation as given
        figures = result["results"][f"ebt_{name}"]
        log_likelihood = sum(ll for ll, _ in expected)
        size = sum(len(a.encode()) for _, a in pairs)
        assert figures["acc,none"] == pytest.approx(sum(g for _, g in expected) / 4)
        assert figures["byte_perplexity,none"] == pytest.approx(math.exp(-log_likelihood / size), rel=1e-5)
        assert figures["bits_per_byte,none"] == pytest.approx(-log_likelihood / size / math.log(2), rel=1e-5)
    assert (offline / "datasets").is_dir()  # the datasets cache went to tmp_path


def test_tasks_command_writes_absolute_data_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tasks", "--out", "tasks", "--data-dir", "my data"]) == 0
    out, err = capsys.readouterr()
    assert "--include_path tasks --tasks ebt_downstream" in out
    text = (tmp_path / "tasks" / "ebt_squad.yaml").read_text()
    assert f'test: "{(tmp_path / "my data").resolve() / "squad.jsonl"}"' in text and "${" not in text
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == sorted(
        [f"ebt_{s}.yaml" for s in DOWNSTREAM_SETS] + ["ebt_downstream.yaml"])
    # What `make downstream-data` installs is one line; the set it cannot install is another, which
    # says so and is left out of the group.
    installable, unavailable = err.strip().splitlines()[::-1]
    assert installable.startswith("warning: 3 data files are not there yet") and "make downstream-data" in installable
    assert all(f"{s}.jsonl" in installable for s in ("gsm8k", "squad", "dyck_languages"))
    assert unavailable.startswith("warning: ebt_elementary_math_qa is left out of group ebt_downstream")
    assert "`make downstream-data` cannot install it (no package registry serves" in unavailable
    assert "group ebt_downstream (ebt_gsm8k, ebt_squad, ebt_dyck_languages)" in out


def test_the_group_runs_without_the_set_no_registry_serves(tmp_path, offline):
    """A data folder as `make downstream-data` leaves it today (no elementary_math_qa.jsonl): lm_eval
    loads the group, which a task with a missing file would fail whole; once a file from an earlier
    install is there and the tasks are written again, the group holds all four."""
    data = tmp_path / "downstream"
    data.mkdir()
    for name in ("gsm8k", "squad", "dyck_languages"):
        write_pairs(data / f"{name}.jsonl", PAIRS[:2])
    assert main(["tasks", "--out", str(tmp_path / "tasks"), "--data-dir", str(data)]) == 0
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    assert sorted(manager.load(["ebt_downstream"])["tasks"]) == ["ebt_dyck_languages", "ebt_gsm8k", "ebt_squad"]
    write_pairs(data / "elementary_math_qa.jsonl", PAIRS[:2])
    assert main(["tasks", "--out", str(tmp_path / "tasks"), "--data-dir", str(data)]) == 0
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    assert len(manager.load(["ebt_downstream"])["tasks"]) == 4


# --- model_args ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ("stepz=3", r"unknown model_args 'stepz' for --model ebt; allowed: pretrained, steps, samples, step_size, "
                r"langevin_std, tolerance, selection_temperature, score_decoded, accept_steps, momentum, nesterov, "
                r"spectral_step, max_step_norm, mirror_descent, logit_decay, batch_size, "
                r"device, precision, seed, max_length"),
    ("steps=0", r"model_args: ThinkingOptions.steps = 0 is not allowed; it must be an integer in \[1, "),
    ("samples=two", r"model_args: ThinkingOptions.samples = 'two' is not allowed"),
    ("batch_size=0", r"model_args batch_size = 0 is not allowed; it must be an integer in \[1, 65536\]"),
    ("seed=-1", r"model_args seed = -1 is not allowed"),
    ("device=tpu", r"device 'tpu' is not allowed; it must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("precision=fp8", r"model_args precision = 'fp8' is not allowed; it must be one of 'fp32', 'bf16', 'fp16'"),
    ("max_length=17", r"model_args max_length = 17 is not allowed; it must be an integer in \[1, 16\] "
                      r"\(the run's model.context_len\)"),
])
def test_bad_model_args_are_clear_errors(trained_runs, args, message):
    with pytest.raises(ConfigError, match=message):
        EBTLM.create_from_arg_string(f"pretrained={trained_runs['ebt']['dir']},{args}")


def test_model_args_and_lm_eval_settings(trained_runs):
    run_dir = trained_runs["transformer"]["dir"]
    with pytest.raises(ConfigError, match=r"model_args needs pretrained=RUN_DIR"):
        EBTLM.create_from_arg_string("steps=3")
    with pytest.raises(ConfigError, match=r"a Transformer\+\+ cannot think: the thinking options steps = 3 are for EBT runs only"):
        EBTLM.create_from_arg_string(f"pretrained={run_dir},steps=3")
    with pytest.raises(ConfigError, match=r"batch_size = 'auto' is not allowed.*no automatic batch size"):
        EBTLM.create_from_arg_string(f"pretrained={run_dir}", {"batch_size": "auto", "device": "cpu"})
    # lm_eval's --batch_size (a string) and --device apply unless model_args set them
    model = EBTLM.create_from_arg_string(f"pretrained={run_dir}", {"batch_size": "8", "device": "cpu",
                                                                   "max_batch_size": None})
    assert (model.batch_size, str(model.device)) == (8, "cpu")
    model = EBTLM.create_from_arg_obj({"pretrained": str(run_dir), "batch_size": 2}, {"batch_size": 1})
    assert model.batch_size == 2 and model.max_length == 16 and model.precision == "fp32"
