"""Input is checked where it enters, and a run finds its own data and config from anywhere.

- Every numeric option of every command (and of the Python API) is refused out of range: exit 2,
  one line naming the option and the value.
- Thinking that a huge but finite step size makes diverge stops with the cause, not a NaN loss.
- Best-of-M samples on an image EBT need Langevin noise (they would all be the same image).
- Data fingerprints: a run trained on a relative path, or on a named corpus, scores the same data
  from any directory, and says so when that data has changed since.
- Version-1 config.json files still load, and give the same scores; old keys on the command line
  are refused with the new one.
- `--json` output is standard JSON (no bare NaN or Infinity).

Text runs are the session's tiny trained runs (conftest `trained_runs`) or 2-step runs of
`ebt train`; one tiny image EBT is trained once for this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import ebt
from conftest import bar_images_run, synthetic_text
from ebt.checkpoint import load_config
from ebt.cli import main
from ebt.commands import EvalArgs
from ebt.config import MOVED_KEYS, TASK_SECTIONS
from ebt.errors import CheckpointError, ConfigError, ThinkingDiverged
from ebt.evaluate import evaluate
from ebt.generate import generate
from ebt.image_protocol import denoise
from ebt.options import ThinkingOptions

INF, NAN = float("inf"), float("nan")
TINY_TEXT = ["--quiet", "--model.n_layers=1", "--model.dim=16", "--model.n_heads=2", "--model.context_len=16",
             "--train.steps=2", "--train.batch_size=4", "--train.eval_examples=2", "--train.device=cpu"]


def cli(capsys: pytest.CaptureFixture, *argv) -> tuple[int, str, str]:
    """`ebt ARGV` in-process: (exit code, stdout, stderr) of that call alone."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture, *argv, fragments: tuple[str, ...] = ()) -> str:
    """Run `ebt ARGV`, expect exit 2 and one line "ebt CMD: error: ..." holding every fragment; return it."""
    code, out, err = cli(capsys, *argv)
    assert code == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ebt {argv[0]}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def scored(capsys: pytest.CaptureFixture, *argv) -> dict:
    """The JSON object `ebt ARGV --json` prints, read strictly (NaN or Infinity fail the test)."""
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} in {out}"))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step image EBT on twelve 12×12 PNGs of bars."""
    return bar_images_run(tmp_path_factory.mktemp("image-run"), steps=2)


# --- 1. Every numeric option is checked where it enters ------------------------------------------

# (option, value typed, how the message shows it): the same for eval, generate and denoise.
THINKING = [
    ("--steps", "0", "0"), ("--steps", "-1", "-1"), ("--steps", "100000", "100000"),
    ("--samples", "0", "0"), ("--samples", "-1", "-1"), ("--samples", "100000", "100000"),
    ("--step-size", "0", "0.0"), ("--step-size", "-1", "-1.0"), ("--step-size", "inf", "inf"),
    ("--step-size", "nan", "nan"),
    ("--langevin-std", "-1", "-1.0"), ("--langevin-std", "inf", "inf"), ("--langevin-std", "nan", "nan"),
    ("--tolerance", "-1", "-1.0"), ("--tolerance", "inf", "inf"), ("--tolerance", "nan", "nan"),
]


def command_line(command: str, trained_runs, image_run: Path) -> list[str]:
    """A command that would run on one of the tiny runs."""
    if command == "denoise":
        return ["denoise", str(image_run), "--images", "1"]
    run = str(trained_runs["ebt"]["dir"])
    return ["eval", run] if command == "eval" else ["generate", run, "--prompt", "x", "--max-new-tokens", "2"]


@pytest.mark.parametrize("option, value, shown", THINKING)
@pytest.mark.parametrize("command", ["eval", "generate", "denoise"])
def test_thinking_options_out_of_range_are_refused(command: str, option: str, value: str, shown: str,
                                                   trained_runs, image_run: Path, capsys) -> None:
    refused(capsys, *command_line(command, trained_runs, image_run), option, value,
            fragments=(f"= {shown} is not allowed", f"(flag {option})"))


@pytest.mark.parametrize("command, option, value, fragment", [
    ("eval", "--batch-size", "0", "batch_size = 0"),
    ("eval", "--batch-size", "100000", "batch_size = 100000"),
    ("eval", "--max-examples", "0", "max_examples = 0"),
    ("eval", "--seed", "-1", "seed = -1"),
    ("generate", "--temperature", "inf", "temperature = inf"),
    ("generate", "--temperature", "nan", "temperature = nan"),
    ("generate", "--temperature", "-1", "temperature = -1.0"),
    ("generate", "--max-new-tokens", "-1", "max_new_tokens = -1"),
    ("generate", "--frames", "0", "frames = 0"),
    ("generate", "--length", "0", "length = 0"),
    ("generate", "--clip", "-1", "clip = -1"),
    ("generate", "--seed", "-1", "seed = -1"),
    ("denoise", "--noise", "nan", "noise = 'nan'"),
    ("denoise", "--noise", "inf", "noise = 'inf'"),
    ("denoise", "--noise", "0", "noise = '0'"),
    ("denoise", "--images", "0", "images = 0"),
    ("denoise", "--repeats", "0", "repeats = 0"),
    ("denoise", "--batch-size", "0", "batch_size = 0"),
    ("denoise", "--seed", "-1", "seed = -1"),
    ("bench", "--repeats", "0", "repeats = 0"),
    ("bench", "--prompt-len", "0", "prompt_len = 0"),
    ("bench", "--new-tokens", "0", "new_tokens = 0"),
])
def test_command_options_out_of_range_are_refused(command: str, option: str, value: str, fragment: str,
                                                  trained_runs, image_run: Path, capsys) -> None:
    argv = ["bench"] if command == "bench" else command_line(command, trained_runs, image_run)
    if option in argv:  # a flag is given once: the value under test replaces the command's own
        del argv[argv.index(option):argv.index(option) + 2]
    refused(capsys, *argv, option, value, fragments=(fragment, "is not allowed", option))


@pytest.mark.parametrize("override, fragment", [
    ("--train.lr=inf", "train.lr = inf"),
    ("--train.lr=nan", "train.lr = nan"),
    ("--train.lr=0", "train.lr = 0.0"),
    ("--think.step_size=inf", "think.step_size = inf"),
    ("--think.langevin_std=-1", "think.langevin_std = -1.0"),
    ("--train.warmup_fraction=nan", "train.warmup_fraction = nan"),
    ("--train.weight_decay=inf", "train.weight_decay = inf"),
    ("--model.rope_theta=0", "model.rope_theta = 0.0"),
    ("--model.norm_eps=nan", "model.norm_eps = nan"),
    ("--data.validation_fraction=nan", "data.validation_fraction = nan"),
    ("--train.steps=0", "train.steps = 0"),
    ("--train.seed=-1", "train.seed = -1"),
    # Integers past any useful size: one line, not a traceback from an allocation.
    ("--model.dim=1e30", f"model.dim = {int(1e30)}"),
    ("--train.batch_size=1e30", f"train.batch_size = {int(1e30)}"),
])
def test_train_overrides_out_of_range_are_refused_before_anything_is_written(override: str, fragment: str,
                                                                            tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--out", out, override,
            fragments=(fragment, "is not allowed"))
    assert not out.exists()


def test_the_python_api_refuses_the_same_values(trained_runs, image_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"ThinkingOptions.step_size = inf is not allowed"):
        ThinkingOptions(step_size=INF)
    model = ebt.load(trained_runs["ebt"]["dir"])
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"ThinkingOptions.step_size = inf is not allowed"):
        model.think(ids, step_size=INF)
    tokens = torch.arange(200) % 50
    with pytest.raises(ConfigError, match=r"ThinkingOptions.steps = 0 is not allowed"):
        evaluate(model, tokens, steps=0)
    with pytest.raises(ConfigError, match="temperature = nan is not allowed"):
        generate(model, [1, 2], 2, temperature=NAN)
    with pytest.raises(ConfigError, match=r"batch_size = 0 is not allowed"):
        EvalArgs(run=trained_runs["ebt"]["dir"], batch_size=0)
    noisy = torch.zeros(1, 1, 12, 12)
    with pytest.raises(ConfigError, match=r"ThinkingOptions.langevin_std = nan is not allowed"):
        denoise(ebt.load(image_run), noisy, 0.1, langevin_std=NAN)
    assert math.isfinite(evaluate(model, tokens, steps=1, max_windows=2).summary()["loss"])  # in range, it scores


def test_the_issues_reproductions_fail_clearly(trained_runs, image_run: Path, capsys) -> None:
    run = trained_runs["ebt"]["dir"]
    fragment = ("ThinkingOptions.step_size = inf is not allowed", "(flag --step-size)")
    refused(capsys, "eval", run, "--steps", "1", "--step-size", "inf", fragments=fragment)
    refused(capsys, "generate", run, "--prompt", "x", "--step-size", "inf", "--temperature", "0", fragments=fragment)
    refused(capsys, "denoise", image_run, "--step-size", "inf", fragments=fragment)


# --- 2. Thinking that diverges names its cause ---------------------------------------------------


@pytest.mark.parametrize("alpha, shown", [("1e300", "1e+300"), ("1e30", "1e+30")])
@pytest.mark.parametrize("command", ["eval", "generate", "denoise"])
def test_a_huge_finite_step_size_stops_thinking_naming_the_step_size(command: str, alpha: str, shown: str,
                                                                     trained_runs, image_run: Path, capsys) -> None:
    # 1e300 overflows float32; 1e30 stays finite but puts the candidate past √(float32's
    # largest value), where text's softmax would hide it and the loss would only measure α.
    line = refused(capsys, *command_line(command, trained_runs, image_run), "--step-size", alpha)
    # The step size as given (not rounded to float32's inf), and what to do about it.
    assert f"α = {shown}" in line and "lower the step size" in line, line


def test_a_huge_finite_step_size_raises_thinking_diverged_in_the_api(trained_runs) -> None:
    model = ebt.load(trained_runs["ebt"]["dir"])
    with pytest.raises(ThinkingDiverged, match=r"at step 0 \(α = 1e\+300\).*lower the step size"):
        model.think(torch.zeros(1, 4, dtype=torch.long), step_size=1e300)


# --- 3. Samples on an image EBT need Langevin noise ----------------------------------------------


def test_image_samples_without_langevin_noise_are_refused(image_run: Path, capsys) -> None:
    identical = ("samples = 2 would run 2 identical candidates", "--langevin-std")
    refused(capsys, "denoise", image_run, "--samples", "2", fragments=identical)
    refused(capsys, "eval", image_run, "--samples", "2", fragments=identical)
    run = ebt.load_run(image_run)
    noisy = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="identical"):
        denoise(run.model, noisy, 0.1, samples=2)
    thought = denoise(run.model, noisy, 0.1, samples=2, langevin_std=0.01)
    steps = run.config.think.steps
    assert thought.y.shape[0] == 2 and thought.forward_passes == 2 * (steps + 1)  # steps and a scoring pass, × M
    levels = json.loads(cli(capsys, "denoise", image_run, "--samples", "2", "--langevin-std", "0.01", "--images", "1",
                            "--noise", "0.1", "--json")[1])
    assert levels[0]["forward_passes"] == 2 * (steps + 1) and math.isfinite(levels[0]["psnr"])


# --- 4. A run finds its own data from any directory ----------------------------------------------


def test_a_run_on_a_relative_path_finds_its_data_from_anywhere_and_notices_a_change(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    original, other = tmp_path / "original", tmp_path / "other"
    original.mkdir(), other.mkdir()
    (original / "corpus.txt").write_text(synthetic_text(seed=0))
    (other / "corpus.txt").write_text(synthetic_text(seed=1).upper())  # same name, other text
    run = tmp_path / "run"
    monkeypatch.chdir(original)
    assert main(["train", "--preset", "text-ebt-tiny", "--out", str(run), "--data", "corpus.txt", *TINY_TEXT]) == 0
    corpus = str((original / "corpus.txt").resolve())
    assert load_config(run).data.corpus == corpus
    fingerprint = json.loads((run / "data.json").read_text())
    assert fingerprint["source"] == corpus and len(fingerprint["sha256"]) == 64

    here = scored(capsys, "eval", run, "--max-examples", "4")
    monkeypatch.chdir(other)
    there = scored(capsys, "eval", run, "--max-examples", "4")
    assert there["data"] == here["data"] == corpus and there["split"] == "validation"
    assert there["loss"] == here["loss"]

    with (original / "corpus.txt").open("a") as f:
        f.write("a line added after training.\n")
    weights = (run / "model.safetensors").read_bytes()
    changed = ("the data has changed", f"trained on {corpus!r}", f"{corpus!r} now holds different data")
    refused(capsys, "eval", run, fragments=changed)
    refused(capsys, "train", "--resume", "--out", run, "--train.steps=4", "--quiet", fragments=changed)
    assert (run / "model.safetensors").read_bytes() == weights  # the refused resume trained nothing

    (run / "data.json").unlink()  # a run from before fingerprints is not checked
    assert scored(capsys, "eval", run, "--max-examples", "4")["data"] == corpus


def test_a_run_on_a_named_corpus_ignores_a_file_of_that_name(tmp_path: Path, monkeypatch, capsys) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "dyck").write_text(synthetic_text())  # a file named like the synthetic corpus
    run = tmp_path / "run"
    monkeypatch.chdir(here)
    assert main(["train", "--preset", "text-ebt-tiny", "--out", str(run), "--data", "dyck", *TINY_TEXT]) == 0
    assert load_config(run).data.corpus == "dyck"
    assert json.loads((run / "data.json").read_text())["source"] == "dyck"
    beside_the_file = scored(capsys, "eval", run, "--max-examples", "4")
    monkeypatch.chdir(elsewhere)
    assert scored(capsys, "eval", run, "--max-examples", "4") == beside_the_file


# --- 5. Version-1 run directories still load -----------------------------------------------------


def version_1(config: dict) -> dict:
    """A version-2 config.json as version 1 wrote it: no "version" and no task section; every
    modality's fields in "model" and "data" (another modality's at its defaults); the validation
    budget as train.eval_windows (text: windows)."""
    old = {name: dict(config[name]) for name in ("model", "think", "train", "data")}
    sections = {name: config.get(name) or dataclasses.asdict(cls()) for name, cls in TASK_SECTIONS.items()}
    for old_key, new_key in MOVED_KEYS.items():
        (old_section, old_name), (section, name) = old_key.split("."), new_key.split(".")
        old[old_section][old_name] = old[section].pop(name) if section in old else sections[section][name]
    return old


def write_config(run: Path, config: dict) -> None:
    (run / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_a_version_1_text_run_loads_and_scores_the_same(kind: str, trained_runs, tmp_path: Path, capsys) -> None:
    original = trained_runs[kind]["dir"]
    run = Path(shutil.copytree(original, tmp_path / "run"))
    (run / "data.json").unlink()  # version 1 wrote none
    saved = json.loads((original / "config.json").read_text())
    old = version_1(saved)
    assert "version" not in old and "text" not in old and old["model"]["vocab_size"] == 256
    write_config(run, old)
    loaded = ebt.load_run(run)
    assert loaded.config.text.vocab_size == 256 and loaded.tokenizer.vocab_size == 256
    assert loaded.config == load_config(original)  # every field where it lives now
    assert loaded.config.image is None and loaded.config.video is None
    assert scored(capsys, "eval", run, "--max-examples", "4")["loss"] == \
        scored(capsys, "eval", original, "--max-examples", "4")["loss"]


def test_a_version_1_image_run_counts_its_validation_batches_in_images(image_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(image_run, tmp_path / "run"))
    saved = json.loads((image_run / "config.json").read_text())
    old = version_1(saved)
    old["train"].update(eval_windows=4, batch_size=64)  # version 1: 4 batches of 64 images
    write_config(run, old)
    loaded = ebt.load_run(run)
    assert loaded.config.train.eval_examples == 256
    assert loaded.config.image == load_config(image_run).image and loaded.config.text is None


@pytest.mark.parametrize("old, new", [("data.tokenizer=bpe", "text.tokenizer"),
                                      ("model.vocab_size=300", "text.vocab_size"),
                                      ("train.eval_windows=4", "train.eval_examples")])
def test_an_old_key_on_the_command_line_names_the_new_one(old: str, new: str, tmp_path: Path, capsys) -> None:
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--out", tmp_path / "run", f"--{old}",
            fragments=(f"'{old.split('=')[0]}' is now '{new}'", f"--{new}="))


# --- 6. JSON output is standard JSON -------------------------------------------------------------


def test_eval_json_is_standard_even_when_a_number_is_not_finite(trained_runs, image_run: Path, capsys) -> None:
    run = trained_runs["ebt"]["dir"]
    assert math.isfinite(scored(capsys, "eval", run, "--max-examples", "4")["ppl"])
    # α = 1e10 keeps the candidate within float32's range for thinking (`largest_candidate`) but
    # wrecks the prediction: its perplexity overflows.
    wrecked = scored(capsys, "eval", run, "--max-examples", "4", "--step-size", "1e10")
    assert wrecked["loss"] > 710 and wrecked["ppl"] is None
    assert math.isfinite(scored(capsys, "eval", image_run)["psnr"])


# --- What a newcomer tried (issue 9 try-out) ------------------------------------------------------


def test_more_bad_inputs_are_one_line_errors(trained_runs, image_run: Path, corpus_file: Path, tmp_path: Path,
                                             capsys) -> None:
    text, tpp = trained_runs["ebt"]["dir"], trained_runs["transformer"]["dir"]
    for device in ("bogus", "meta", "mps", "cpu:5"):
        refused(capsys, "eval", text, "--device", device, "--max-examples", "1", fragments=(repr(device),))
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--out", tmp_path / "d",
            *TINY_TEXT[:-1], "--train.device=bogus", fragments=("'bogus'",))
    refused(capsys, "eval", text, "--suite", "paper", "--baseline", image_run, fragments=("text Transformer++",))
    refused(capsys, "eval", text, "--plots", tmp_path / "p", fragments=("--plots",))
    refused(capsys, "denoise", image_run, "--plots", tmp_path / "p", fragments=("--vs",))
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--data.corpus", corpus_file,
            "--out", tmp_path / "c", *TINY_TEXT, fragments=("--data.corpus",))
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--out", tmp_path / "v",
            *TINY_TEXT, "--text.vocab_size=100", fragments=("text.vocab_size", "256", "100"))
    assert not (tmp_path / "v" / "config.json").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(capsys, "train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--out", blocker / "sub",
            *TINY_TEXT, fragments=(str(blocker),))
    refused(capsys, "eval", tpp, "--steps", "2", fragments=("steps = 2", "(flag --steps)"))  # not a Python dict
    code, _, err = cli(capsys, "train", "--preset", "text-ebt-tiny", "--out", "", *TINY_TEXT)
    assert code == 2 and "empty path" in err and not Path("config.json").exists()


def test_a_config_of_a_version_this_library_does_not_know_is_refused(trained_runs, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(trained_runs["ebt"]["dir"], tmp_path / "run"))
    for version in (99, "2"):
        saved = json.loads((run / "config.json").read_text())
        saved["version"] = version
        (run / "config.json").write_text(json.dumps(saved))
        with pytest.raises(CheckpointError, match=f"version = {version!r}"):
            ebt.load_run(run)


def test_resume_names_damaged_weights(trained_runs, tmp_path: Path, capsys) -> None:
    import shutil

    run = Path(shutil.copytree(trained_runs["ebt"]["dir"], tmp_path / "run"))
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    refused(capsys, "train", "--resume", "--out", run, "--quiet", fragments=(str(weights),))


def test_the_api_names_bad_ids_candidates_and_images(image_run: Path, tmp_path: Path) -> None:
    from conftest import tiny_model

    model = tiny_model("ebt")  # vocabulary 11, context 8
    for bad in (torch.tensor([[1, 2, 11]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ConfigError, match=r"outside the model's vocabulary \[0, 11\)"):
            model.think(bad)
    ids = torch.tensor([[1, 2, 3]])
    for y in (torch.rand(2, 3, 11, dtype=torch.float64), torch.rand(1, 2, 11, dtype=torch.float64),
              torch.rand(1, 3, 11, dtype=torch.float32)):
        with pytest.raises(ConfigError, match="y must be prepared candidates of shape"):
            model.energy(ids, y)
    image_model = ebt.load(image_run)  # 12×12, 1 channel
    for noisy in (torch.rand(2, 1, 28, 28), torch.rand(1, 12, 12), torch.zeros(2, 1, 12, 12, dtype=torch.uint8)):
        with pytest.raises(ConfigError, match=r"images must be \(B, 1, 12, 12\)"):
            image_model.think(noisy)
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        ebt.load_run(a_file)


def test_video_settings_on_a_text_run_are_refused(trained_runs, capsys) -> None:
    run = trained_runs["ebt"]["dir"]
    refused(capsys, "generate", str(run), "--prompt", "a", "--length", "3", fragments=("length = 3 is for video runs",
                                                                                     "(flag --length)"))
    refused(capsys, "generate", str(run), "--prompt", "a", "--out", "x.png", fragments=("out = 'x.png'",
                                                                                      "(flag --out)"))
