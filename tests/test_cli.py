"""The `ebt` command: train → eval → generate smoke runs, and bad input ending in one clear line.

Most runs call `ebt.cli.main(argv)` in-process (an uncaught exception there fails the test); a
few go through the installed console script to check the real exit code and stderr.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebt.runs import load_run
from conftest import run_cli
from ebt.cli import arguments, build_parser, flag_of, main
from ebt.commands import BenchArgs, EvalArgs, GenerateArgs, ScaleRunArgs, TrainArgs
from ebt.generate import generate
from ebt.options import ThinkingOptions

KINDS = ("ebt", "transformer")
CONTEXT = 16
TINY = [
    "--quiet", "--model.n_layers=1", "--model.dim=32", "--model.n_heads=2", f"--model.context_len={CONTEXT}",
    "--train.steps=10", "--train.batch_size=4", "--train.eval_every=0", "--train.eval_examples=2",
    "--train.device=cpu",
]
CONSOLE_SCRIPT = Path(sys.executable).with_name("ebt")


@pytest.fixture(scope="module")
def cli_runs(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run per model kind, trained by `ebt train`."""
    root = tmp_path_factory.mktemp("cli-runs")
    runs = {}
    for kind in KINDS:
        runs[kind] = root / kind
        code = main(["train", "--preset", f"text-{kind}-tiny", "--out", str(runs[kind]), "--data", str(corpus_file),
                     *TINY])
        assert code == 0
    return runs



# --- The parser, built from the argument classes ---------------------------------------------------


def parsed(argv: list[str]):
    return arguments(*build_parser().parse_known_args(argv))


def test_old_command_lines_become_the_same_typed_arguments() -> None:
    evaluated = parsed(["eval", "runs/x", "--max-windows", "3", "--steps", "2", "--no-nesterov", "--device", "cpu"])
    assert evaluated == EvalArgs(run=Path("runs/x"), options=ThinkingOptions(steps=2, nesterov=False), max_examples=3,
                                 device="cpu")
    generated = parsed(["generate", "runs/x", "--prompt", "a", "--no-cache", "--device", "cpu"])
    assert generated == GenerateArgs(run=Path("runs/x"), prompt="a", cache=False, device="cpu")
    benched = parsed(["bench", "--size", "tiny", "--no-memory", "--model.dim=64"])
    assert benched == BenchArgs(size="tiny", memory=False, overrides=[("model.dim", "64")])
    swept = parsed(["scale", "run", "--out", "s", "--values", "1, 2,3", "--train.lr", "0.01"])
    assert swept == ScaleRunArgs(out=Path("s"), values=["1", "2", "3"], overrides=[("train.lr", "0.01")])
    trained = parsed(["train", "--preset", "text-ebt-tiny", "--out", "r", "--train.steps=5"])
    assert trained == TrainArgs(out=Path("r"), preset="text-ebt-tiny", overrides=[("train.steps", "5")])


def test_every_flag_has_help() -> None:
    def actions(parser):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from actions(sub)
            else:
                yield action

    missing = [a.option_strings or a.dest for a in actions(build_parser()) if not a.help]
    assert not missing


def test_an_error_names_the_flag_of_its_field(capsys) -> None:
    code, _, err = run_cli(["eval", "runs/x", "--batch-size", "0", "--device", "cpu"], capsys)
    assert code == 2 and err.strip() == ("ebt eval: error: batch_size = 0 is not allowed; it must be an integer in "
                                         "[1, 65536] (flag --batch-size)")
    assert flag_of(EvalArgs, "max_examples") == "--max-examples" and flag_of(EvalArgs, "steps") == "--steps"
    assert flag_of(BenchArgs, "size") == "--preset" and flag_of(TrainArgs, "train.steps") == "--train.steps"
    assert flag_of(EvalArgs, "train.steps") is None and flag_of(EvalArgs, "run") is None


# --- Smoke runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_train_writes_a_complete_run(kind: str, cli_runs, corpus_file: Path) -> None:
    run = cli_runs[kind]
    for name in ("config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    loaded = load_run(run)
    assert loaded.step == 10
    assert loaded.config.model.kind == kind and loaded.config.model.dim == 32
    assert loaded.config.data.corpus == str(corpus_file)


@pytest.mark.parametrize(
    "kind, extra, passes",
    [
        ("ebt", [], 2),  # System 1 thinks for its 2 training steps
        ("ebt", ["--steps", "3"], 3),  # think longer
        ("ebt", ["--steps", "3", "--samples", "2"], 8),  # best of 2: (3 steps + scoring) × 2
        ("transformer", [], 1),
    ],
)
def test_eval_json(kind: str, extra: list[str], passes: int, cli_runs, capsys) -> None:
    code, out, err = run_cli(["eval", cli_runs[kind], "--json", "--max-examples", "4", *extra], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert {"loss", "ppl", "tokens", "forward_passes"} <= set(result)
    assert result["forward_passes"] == passes
    assert result["tokens"] == 4 * CONTEXT
    assert math.isfinite(result["loss"]) and result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert result["bytes"] == result["tokens"]  # byte tokenizer: bits per byte is the loss in bits
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2))


def test_eval_text_output(cli_runs, capsys) -> None:
    code, out, err = run_cli(["eval", cli_runs["ebt"], "--max-examples", "2"], capsys)
    assert code == 0, err
    assert "loss" in out and "ppl" in out and "forward passes" in out


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_is_deterministic_and_continues_the_prompt(kind: str, cli_runs, capsys) -> None:
    prompt = "the cat"
    argv = ["generate", cli_runs[kind], "--prompt", prompt, "--max-new-tokens", "20", "--temperature", "0"]
    outputs = []
    for _ in range(2):
        code, out, err = run_cli(argv, capsys)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith(prompt) and len(outputs[0].rstrip("\n")) > len(prompt)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_runs_past_the_context_window(kind: str, cli_runs, capsys) -> None:
    new = 3 * CONTEXT
    code, out, err = run_cli(["generate", cli_runs[kind], "--prompt", "a dog", "--max-new-tokens", new], capsys)
    assert code == 0, err
    assert out.startswith("a dog")
    run = load_run(cli_runs[kind])
    ids = generate(run.model, run.tokenizer.encode("a dog ran to"), new, temperature=0)
    assert len(ids) == new and all(0 <= i < run.config.text.vocab_size for i in ids)


def test_resume_continues_a_run_to_more_steps(cli_runs, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(cli_runs["ebt"], run)
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--out", run, "--resume", "--quiet",
                            "--train.steps=12"], capsys)
    assert code == 0, err
    assert load_run(run).step == 12


def test_resume_of_a_finished_run_does_not_crash(cli_runs, tmp_path: Path, capsys) -> None:
    """Nothing left to train: either say so and succeed, or fail with one line — never a traceback."""
    run = tmp_path / "run"
    shutil.copytree(cli_runs["ebt"], run)
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--out", run, "--resume", "--quiet"], capsys)
    if code != 0:
        assert len(err.strip().splitlines()) == 1, err
    assert load_run(run).step == 10


# --- Bad input ----------------------------------------------------------------------------------


def _bad_inputs(tmp: Path, corpus: Path, runs: dict[str, Path]) -> dict[str, tuple[list, list[str]]]:
    """name: (argv, fragments the one-line message must contain)."""
    (tmp / "empty.txt").write_text(" \n\n")
    (tmp / "short.txt").write_text("to be\nor not\n")
    (tmp / "not-a-run").mkdir()
    own_data = ["train", "--preset", "text-ebt-tiny", "--out", tmp / "out", *TINY]  # a flag is given once
    train = [*own_data, "--data", corpus]
    return {
        "unknown preset": (["train", "--preset", "text-ebt-huge", "--out", tmp / "out"],
                           ["text-ebt-huge", "text-ebt-tiny"]),
        "unknown override section": ([*train, "--modle.dim=32"], ["modle.dim", "model.dim", "train.steps"]),
        "unknown override key": ([*train, "--model.width=32"], ["model.width", "model.dim", "model.n_layers"]),
        "bad value type": ([*train, "--train.steps=many"], ["train.steps", "many"]),
        "bad value range": ([*train, "--train.steps=0"], ["train.steps", "0"]),
        "heads not dividing width": ([*train, "--model.n_heads=3"], ["model.n_heads", "3"]),
        "missing data path": ([*own_data, "--data", tmp / "missing.txt"], ["missing.txt"]),
        "empty corpus": ([*own_data, "--data", tmp / "empty.txt"], ["empty"]),
        "corpus shorter than the context": ([*own_data, "--data", tmp / "short.txt"], ["context"]),
        "eval on a non-run directory": (["eval", tmp / "not-a-run"], ["not-a-run", "config.json"]),
        "eval on a missing directory": (["eval", tmp / "nowhere"], ["nowhere"]),
        "eval --steps 0": (["eval", runs["ebt"], "--steps", "0"], ["--steps", "0"]),
        "eval --samples 0": (["eval", runs["ebt"], "--samples", "0"], ["--samples", "0"]),
        "generate --steps 0": (["generate", runs["ebt"], "--prompt", "a", "--steps", "0"], ["--steps", "0"]),
        "eval --steps on Transformer++": (["eval", runs["transformer"], "--steps", "3"], ["Transformer++"]),
        "generate --steps on Transformer++": (["generate", runs["transformer"], "--prompt", "a", "--steps", "2"],
                                              ["Transformer++"]),
        "generate --samples on Transformer++": (["generate", runs["transformer"], "--prompt", "a", "--samples", "2"],
                                                ["Transformer++"]),
        "generate empty prompt": (["generate", runs["ebt"], "--prompt", ""], ["prompt"]),
        "generate negative temperature": (["generate", runs["ebt"], "--prompt", "a", "--temperature", "-1"],
                                          ["temperature"]),
        "eval extra argument": (["eval", runs["ebt"], "--model.dim=3"], ["--model.dim=3"]),
    }


BAD_INPUTS = [
    "unknown preset", "unknown override section", "unknown override key", "bad value type", "bad value range",
    "heads not dividing width", "missing data path", "empty corpus", "corpus shorter than the context",
    "eval on a non-run directory", "eval on a missing directory", "eval --steps 0", "eval --samples 0",
    "generate --steps 0", "eval --steps on Transformer++", "generate --steps on Transformer++",
    "generate --samples on Transformer++", "generate empty prompt", "generate negative temperature",
    "eval extra argument",
]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_nonzero_with_one_clear_line(name: str, tmp_path: Path, corpus_file: Path, cli_runs,
                                                     capsys) -> None:
    cases = _bad_inputs(tmp_path, corpus_file, cli_runs)
    assert sorted(cases) == sorted(BAD_INPUTS)
    argv, fragments = cases[name]
    code, out, err = run_cli(argv, capsys)
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ebt {argv[0]}: error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "no-such-preset", "--out", "{tmp}/out"], "no-such-preset"),
        (["eval", "{tmp}"], "config.json"),
    ],
    ids=["unknown preset", "eval on a non-run directory"],
)
def test_console_script_reports_bad_input_without_a_traceback(argv: list[str], fragment: str, tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.is_file(), f"console script not installed at {CONSOLE_SCRIPT}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([str(CONSOLE_SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
    assert done.stdout == ""



def test_help_shows_each_declared_default_once() -> None:
    """The default comes from the argument class's field, and `--help` shows it (once)."""
    from ebt.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["denoise"].format_help()
    flat = " ".join(text.split())
    assert "(default 256)" in flat and "(default 64)" in flat and "(default 0)" in flat  # images, batch size, seed
    assert flat.count("(default 256)") == 1


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_the_help_of_overwrite_says_the_old_run_is_kept_until_the_new_one_saves(command: str) -> None:
    """--overwrite sets the old run aside (`ebt.checkpoint.Replaced`); the help must not say it is removed."""
    text = " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())
    assert ("--overwrite replace the run in --out: the old run is set aside, removed once the new one saves its first "
            "checkpoint, and put back if it stops before") in text
    assert "files are removed" not in text
