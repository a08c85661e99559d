"""Inputs read as the user means them (issue 23, items 5, 7, 8 and 9): a corpus folder's hidden
files and ebt's own outputs are not documents; a broken optional package is one line; nothing given
is silently dropped; messages and printed commands tell the truth (hints survive a shell).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config
from ebt.data.corpus import corpus_files, load_corpus
from ebt.errors import DataError
from ebt.rundata.text import corpus_fingerprint, load_data

# --- 5. A corpus directory is read as the user means it -----------------------------------------


def _corpus(root: Path) -> Path:
    """Five documents in nested folders, a .jsonl among them, and a file of another kind."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a.txt").write_text("alpha one\nline two\n")
    (root / "b" / "z.txt").write_text("beta\n")
    (root / "sub" / "docs.jsonl").write_text('{"text": "gamma doc"}\n{"text": "delta doc"}\n')
    (root / "sub" / "deeper" / "e.txt").write_bytes(b"eps\r\nilon\n")
    (root / "notes.md").write_text("not read")
    return root


def _litter(root: Path, trained_run: Path | None = None) -> None:
    """What notebooks, editors and earlier ebt commands leave in a corpus folder."""
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("alpha one\nline two\n")  # a.txt's copy
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / ".~lock.e.txt#").write_text("lock")
    (root / "sub" / ".draft.txt").write_text("a hidden draft")
    run = root / "runs" / "first"  # a run trained inside the folder: its metrics.jsonl is no corpus
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "samples.txt").write_text("a generated sample")
    prepared = root / "prepared"
    prepared.mkdir()
    (prepared / "index.json").write_text("{}")
    (prepared / "tokenizer.json").write_text("{}")
    (prepared / "train-00000.tokens").write_bytes(b"\0\0")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep.json").write_text("{}")
    (root / "sweep" / "notes.txt").write_text("a sweep's file")


def test_hidden_files_and_ebt_outputs_are_not_documents_and_the_hash_is_unchanged(tmp_path: Path) -> None:
    clean = _corpus(tmp_path / "clean")
    # The documents' sha256 (data.json) of this corpus as every release before hidden files were
    # skipped computed it: runs trained on a corpus without hidden files still resume.
    assert corpus_fingerprint(load_corpus(str(clean), 0.2), "x")["sha256"] == (
        "c31826ebb90f1852a582e402fc5c7de431265b2ef9ee03630248de17ae98f667")
    littered = _corpus(tmp_path / "littered")
    _litter(littered)
    a, b = load_corpus(str(clean), 0.2), load_corpus(str(littered), 0.2)
    assert (a.train, a.validation) == (b.train, b.validation)
    assert corpus_fingerprint(a, "x") == corpus_fingerprint(b, "x")
    files = b.files
    assert [p.relative_to(littered).as_posix() for p in files.files] == [
        "a.txt", "b/z.txt", "sub/deeper/e.txt", "sub/docs.jsonl"]
    assert files.hidden == (".ipynb_checkpoints/", "sub/.draft.txt", "sub/.~lock.e.txt#")
    assert files.outputs == ("prepared (a prepared corpus)", "runs/first (a run directory)",
                             "sweep (a scaling sweep)")
    line = files.summary()
    assert "read 4 corpus files (.txt ×3, .jsonl ×1)" in line and "3 hidden" in line and ".ipynb_checkpoints/" in line
    assert "runs/first (a run directory)" in line and "ignored 1 other file(s) (.md ×1)" in line


def test_a_hidden_corpus_root_is_read_and_links_outside_it_are_followed_once(tmp_path: Path) -> None:
    root = _corpus(tmp_path / ".corpus")  # the folder given may itself be hidden: only what is under it counts
    other = _corpus(tmp_path / "other")
    (root / "elsewhere").symlink_to(other, target_is_directory=True)  # outside: read
    (root / "again").symlink_to(other, target_is_directory=True)  # the same folder: read once
    (root / "one.txt").symlink_to(tmp_path / "other" / "b" / "z.txt")  # inside a folder already read
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)  # holds the corpus: a loop
    (root / "inner").symlink_to(root / "sub", target_is_directory=True)  # inside: read there
    (root / "copy.txt").symlink_to(root / "a.txt")
    (root / "gone.txt").symlink_to(tmp_path / "nothing.txt")
    files = corpus_files(root)
    names = [p.relative_to(root).as_posix() for p in files.files]
    assert names == ["a.txt", "again/a.txt", "again/sub/deeper/e.txt", "again/sub/docs.jsonl", "b/z.txt", "one.txt",
                     "sub/deeper/e.txt", "sub/docs.jsonl"] and not files.hidden  # each document once
    assert files.followed == ("again/", "one.txt")
    assert dict(files.links) == {"again/b/z.txt": "link_repeat", "elsewhere/": "link_repeat", "loop/": "link_loop",
                                 "sub/up/": "link_loop", "inner/": "link_inside", "copy.txt": "link_inside",
                                 "gone.txt": "broken_link"}
    line = files.summary()
    assert "read 8 corpus files (.txt ×6, .jsonl ×2) (following 2 link(s): again/, one.txt); skipped 7 linked path(s) (" in line
    assert "copy.txt: inside the corpus, read there" in line and "and 4 more" in line
    assert files.counts() == {"read": 8, "formats": {".txt": 6, ".jsonl": 2}, "followed_links": 2, "ignored": {".md": 2},
                              "skipped": {"link_repeat": 2, "link_loop": 2, "link_inside": 2, "broken_link": 1}}


def test_extensions_are_read_in_any_case_and_every_ignored_kind_is_named(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    lower = corpus_fingerprint(load_corpus(str(root), 0.2), "x")
    (root / "sub" / "docs.jsonl").rename(root / "sub" / "docs.JSONL")
    (root / "a.txt").rename(root / "a.TXT")
    upper = load_corpus(str(root), 0.2)
    assert corpus_fingerprint(upper, "x") == lower  # the same documents, read as their lower-case kind
    for name in ("x.csv", "y.gz", "z.Md", "w"):
        (root / name).write_text("not read")
    line = corpus_files(root).summary()
    assert line.endswith("ignored 5 other file(s) (.md ×2, .csv ×1, .gz ×1, no extension ×1)")  # .Md is .md
    (root / "v.pdf").write_text("not read")
    assert corpus_files(root).summary().endswith("ignored 6 other file(s) (.md ×2, .csv ×1, .gz ×1, and 2 more)")
    from ebt.data.pairs import is_pairs_file

    (root / "pairs.JSONL").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    assert is_pairs_file(root / "pairs.JSONL")


def test_an_ebt_output_given_as_the_corpus_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    root = _corpus(tmp_path / "c")
    _litter(root)
    for folder, kind in (("runs/first", "a run directory"), ("sweep", "a scaling sweep")):
        with pytest.raises(DataError, match=f"is {kind}, not a corpus"):
            load_corpus(str(root / folder))
        code, out, err = run_cli(["prepare-data", root / folder, "--out", tmp_path / "p"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"is {kind}, not a corpus" in err
        assert not (tmp_path / "p").exists()
    # A folder holding nothing to read says what it skipped.
    only_hidden = tmp_path / "only-hidden"
    (only_hidden / ".ipynb_checkpoints").mkdir(parents=True)
    (only_hidden / ".ipynb_checkpoints" / "x.txt").write_text("copy")
    with pytest.raises(DataError, match=r"no corpus files \(\.txt, \.jsonl, \.jsonl\.gz, \.jsonl\.zst or \.parquet; "
                                         r"read 0 .*\.ipynb_checkpoints/"):
        load_corpus(str(only_hidden))


def test_the_data_summary_and_prepare_data_say_what_was_read_and_skipped(tmp_path: Path, capsys) -> None:
    root = tmp_path / "c"
    root.mkdir()
    for i in range(6):
        (root / f"part{i}.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 8)
    _litter(root)
    data = load_data(tiny_config(corpus=root))
    assert "from the corpus directory: read 6 corpus files (.txt ×6); skipped 3 hidden" in data.summary
    code, out, err = run_cli(["prepare-data", root, "--out", tmp_path / "prep"], capsys)
    assert code == 0, err
    assert "files: read 6 corpus files (.txt ×6); skipped 3 hidden" in out and "runs/first (a run directory)" in out
    code, out, err = run_cli(["prepare-data", root, "--out", tmp_path / "prep2", "--json"], capsys)
    assert code == 0 and json.loads(out)["files"] == {  # numbers for scripts; the line is for people
        "read": 6, "formats": {".txt": 6}, "followed_links": 0, "skipped": {"hidden": 3, "ebt_output": 3}, "ignored": {}}



def test_an_image_folder_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from ebt.data.images import load_images

    folder = tmp_path / "images"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / ".ipynb_checkpoints" / "0-checkpoint.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / ".thumb.png")
    splits = load_images(str(folder), 8)
    assert splits.channels == 1 and len(splits.train) + len(splits.validation) == 4  # the RGB copies unread
    only_hidden = tmp_path / "only-hidden"
    (only_hidden / ".cache").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(only_hidden / ".cache" / "x.png")
    with pytest.raises(DataError, match=r"has no .* files outside hidden files and folders \(1 inside them, skipped\)"):
        load_images(str(only_hidden), 8)

# --- 7. A package installed but broken is one line ------------------------------------------------

_BROKEN = {  # how an installed package fails to import, as users report it
    "TypeError": 'raise TypeError("Descriptors cannot be created directly.\\nIf this call came from a _pb2.py file, '
                 'your generated code is out of date")',  # wandb / tensorboard with a mismatched protobuf
    "AttributeError": "import os\nos.fake_numpy_abi",  # built against another numpy
    "OSError": 'raise OSError("libcudart.so.12: cannot open shared object file")',
    "ModuleNotFoundError": "import ebt_fake_dependency_gone",  # one of its dependencies is missing
    "SystemExit": 'raise SystemExit("this package needs Python 3.13")',
}


def _fake_package(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body + "\n")
    return root


@pytest.mark.parametrize("error", sorted(_BROKEN))
def test_any_failure_to_import_an_installed_package_is_one_line_naming_it(error: str, tmp_path: Path,
                                                                          monkeypatch) -> None:
    from ebt.packages import PackageError, import_package

    name = f"ebt_fake_broken_{error.lower()}"
    monkeypatch.syspath_prepend(str(_fake_package(tmp_path, name, _BROKEN[error])))
    with pytest.raises(PackageError) as caught:
        import_package(name, needed_for="the feature", otherwise="turn the feature off")
    line = str(caught.value)
    assert "\n" not in line and isinstance(caught.value, ImportError)
    assert line.startswith(f"the feature needs the package {name}, which is installed but fails to import from "
                           f"{tmp_path / name} ({error}")
    assert line.endswith("no installed distribution holds that copy: remove or rename it (or take its folder off "
                         f"PYTHONPATH), then if needed: pip install {name}, or turn the feature off")
    with pytest.raises(PackageError, match=r"ebt_fake_missing, which is not installed; install it with: pip install x"):
        import_package("ebt_fake_missing", needed_for="the feature", pip="x")


@pytest.mark.parametrize("kind", ["wandb", "tensorboard"])
def test_a_broken_tracker_stops_the_run_in_one_line_before_it_writes(kind: str, corpus_file: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    import sys

    for name in [m for m in sys.modules if m.partition(".")[0] == kind or m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(_fake_package(tmp_path / "site", kind, _BROKEN["TypeError"])))
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--out", tmp_path / "run",
                            "--train.steps=2", f"--train.log_to={kind}"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert (f"train.log_to = '{kind}' needs the package {kind}, which is installed but fails to import from "
            f"{tmp_path / 'site' / kind} (TypeError") in err
    assert f"that copy shadows the installed {kind} at " in err  # the venv's: a reinstall cannot fix the stray copy
    assert "remove or rename it, or take its folder off PYTHONPATH, or set train.log_to to 'none'" in err
    assert not (tmp_path / "run").exists()


def test_a_broken_matplotlib_stops_only_the_plots_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    from ebt.plots import plot_energy_by_frame
    from ebt.packages import PackageError

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # its import now fails; matplotlib is there
    with pytest.raises(PackageError, match="drawing plots needs the package matplotlib, which is installed but fails"):
        plot_energy_by_frame({"ebt": [1.0, 2.0]}, tmp_path / "plot.png")


def test_the_command_line_names_a_broken_required_package_in_one_line(tmp_path: Path) -> None:
    """huggingface_hub is imported by every command (the models are its ModelHubMixins): broken, the
    command line says so in one line before any command, instead of a traceback."""
    import os
    import subprocess
    import sys

    site = _fake_package(tmp_path, "huggingface_hub", _BROKEN["TypeError"])
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(src)])}
    done = subprocess.run([sys.executable, "-m", "ebt.cli", "eval", "runs/x"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ebt: error: ebt needs the package huggingface_hub, which is installed but fails")
    assert f"fails to import from {site / 'huggingface_hub'} (TypeError" in done.stderr
    assert "that copy shadows the installed huggingface_hub at " in done.stderr


def _fake_distribution(root: Path, name: str, body: str) -> Path:
    """`name` installed as pip installs it: the package beside its .dist-info (METADATA, RECORD)."""
    _fake_package(root, name, body)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return root


def test_a_broken_package_line_names_the_copy_and_the_fix_that_reaches_it(tmp_path: Path, monkeypatch) -> None:
    """The installed copy broken: reinstall it. A broken copy earlier on the path than the installed
    one (a stray folder on PYTHONPATH or in the working directory): a reinstall cannot reach it, so the
    line names both copies and says to remove that one."""
    from ebt.packages import PackageError, import_package

    name = "ebt_fake_dist_broken"
    site = _fake_distribution(tmp_path / "site", name, _BROKEN["TypeError"])
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PackageError) as caught:
        import_package(name, needed_for="the feature")
    assert f"fails to import from {site / name} (TypeError" in str(caught.value)
    assert str(caught.value).endswith(f"reinstall it with: pip install --force-reinstall {name}")
    stray = _fake_package(tmp_path / "cwd", name, _BROKEN["OSError"])
    monkeypatch.syspath_prepend(str(stray))
    with pytest.raises(PackageError) as caught:
        import_package(name, needed_for="the feature")
    assert f"fails to import from {stray / name} (OSError" in str(caught.value)
    assert str(caught.value).endswith(f"that copy shadows the installed {name} at {site / name}, which a reinstall "
                                      "cannot reach: remove or rename it, or take its folder off PYTHONPATH")


# --- 8. Nothing given is silently dropped ---------------------------------------------------------

TINY = ["--model.dim=32", "--model.n_heads=2", "--model.context_len=32", "--train.batch_size=4",
        "--train.eval_examples=4", "--train.steps=1", "--quiet"]


@pytest.mark.parametrize("argv, line", [
    (["--train.steps=5", "--train.steps=3"], "train.steps is given twice, '5' then '3'; give it once"),
    (["--train.steps", "5", "--train.steps=3"], "train.steps is given twice, '5' then '3'; give it once"),
    (["--think.step_size=1", "--think.steps=2", "--think.step_size", "2"], "think.step_size is given twice, '1' then '2'"),
])
def test_an_override_given_twice_is_refused_naming_both_values(argv: list[str], line: str, corpus_file: Path,
                                                                tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", "--preset", "text-ebt-tiny", "--data", corpus_file, "--out", tmp_path / "run",
                            *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and line in err, err
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_same_override_twice_and_the_api_agree(capsys) -> None:
    from ebt.config import RunConfig
    from ebt.errors import ConfigError

    assert RunConfig().with_overrides([("train.steps", "5"), ("train.steps", "5")]).train.steps == 5  # nothing lost
    with pytest.raises(ConfigError, match="train.lr is given twice, '0.1' then '0.2'") as caught:
        RunConfig().with_overrides([("train.lr", "0.1"), ("train.steps", "5"), ("train.lr", "0.2")])
    assert caught.value.field == "train.lr"
    code, _, err = run_cli(["bench", "--train.lr=1e-3", "--train.lr=2e-3"], capsys)
    assert code == 2 and "train.lr is given twice, '1e-3' then '2e-3'" in err


@pytest.mark.parametrize("argv, line", [
    (["train", "--preset", "text-ebt-tiny", "--preset", "text-transformer-tiny", "--out", "x"],
     "--preset is given twice, 'text-ebt-tiny' then 'text-transformer-tiny'; give it once"),
    (["train", "--preset", "text-ebt-tiny", "--out", "a", "--out", "b"], "--out is given twice, 'a' then 'b'"),
    (["bench", "--preset", "tiny", "--size", "xxs"], "--preset 'tiny' and --size 'xxs' set the same option; give one"),
    (["bench", "--memory", "--no-memory"], "--memory and --no-memory are both given; give one"),
    (["eval", "runs/x", "--steps", "2", "--steps", "3"], "--steps is given twice, '2' then '3'"),
])
def test_a_flag_given_twice_with_two_values_is_refused(argv: list[str], line: str, tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and line in err, err
    assert not any(tmp_path.iterdir())


def test_a_flag_given_twice_with_one_value_is_accepted(tmp_path: Path) -> None:
    from ebt.cli import arguments, build_parser

    namespace, extra = build_parser().parse_known_args(["train", "--preset", "text-ebt-tiny", "--out", "a",
                                                        "--out", "a", "--overwrite", "--overwrite"])
    args = arguments(namespace, extra)
    assert str(args.out) == "a" and args.overwrite


def test_a_sweep_keeps_the_users_eval_every_and_refuses_a_repeat() -> None:
    from ebt.config import ConfigError
    from ebt.scaling.sweep import Sweep

    sweep = Sweep("depth", overrides=[("train.eval_every", "50")])
    for point in sweep.points():
        assert sweep.config(point).train.eval_every == 50
        assert [k for k, _ in point.overrides].count("train.eval_every") == 1
        assert sweep.command(point, Path("out")).count("--train.eval_every=50") == 1
    assert all(sweep.config(p).train.eval_every == 0 for p in Sweep("depth").points())  # its default otherwise
    data = Sweep("data", steps=32, overrides=[("train.lr_schedule", "wsd")])  # a schedule the data axis allows
    assert {data.config(p).train.lr_schedule for p in data.points()} == {"wsd"}
    with pytest.raises(ConfigError, match="train.lr is given twice, '0.2' then '0.1'"):
        Sweep("depth", overrides=[("train.lr", "0.2"), ("train.lr", "0.1")])


def _grey_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((12, 12), 30 * i, dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["bpe_vocab_size with byte", "validation_fraction of shakespeare",
                                  "validation_fraction of a prepared corpus", "channels of grey images",
                                  "vocab_size of bytes"])
def test_an_override_the_data_cannot_honour_is_refused_not_recorded(case: str, corpus_file: Path, tmp_path: Path,
                                                                    capsys) -> None:
    text = ["train", "--preset", "text-ebt-tiny", "--out", tmp_path / "run", *TINY]
    if case == "validation_fraction of a prepared corpus":
        assert run_cli(["prepare-data", corpus_file, "--out", tmp_path / "prep"], capsys)[0] == 0
    argv, line = {
        "bpe_vocab_size with byte": (text + ["--data", corpus_file, "--text.bpe_vocab_size=4096"],
                                     "text.bpe_vocab_size does not apply to this run: it sizes a BPE, and "
                                     "text.tokenizer is 'byte'"),
        "validation_fraction of shakespeare": (text + ["--data", "shakespeare", "--data.validation_fraction=0.3"],
                                               "the 'shakespeare' corpus is split by play"),
        "validation_fraction of a prepared corpus": (
            text + ["--data", tmp_path / "prep", "--data.validation_fraction=0.3"],
            "data.validation_fraction does not apply to this run: " + f"{tmp_path / 'prep'} is a prepared corpus"),
        "channels of grey images": (
            ["train", "--preset", "image-ebt-tiny", "--out", tmp_path / "run", "--data", _grey_folder(tmp_path / "g"),
             "--image.channels=3", "--image.image_size=12", "--model.dim=16", "--model.n_layers=1", "--quiet"],
            "image.channels comes from the data (1); 3 was given: drop the override"),
        "vocab_size of bytes": (text + ["--data", corpus_file, "--text.vocab_size=300"],
                                "text.vocab_size comes from the data (256); 300 was given"),
    }[case]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and line in err, err
    assert not (tmp_path / "run" / "config.json").exists()


def test_bench_refuses_overrides_it_would_drop(capsys) -> None:
    for argv, line in ((["--train.precision=bf16"], "train.precision is set by bench's own precision; give it as "
                                                    "precision (flag --precision)"),
                       (["--text.vocab_size=300"], "text.vocab_size does not apply to bench"),
                       (["--data.corpus=kjv"], "data.corpus does not apply to bench")):
        code, _, err = run_cli(["bench", *argv], capsys)
        assert code == 2 and line in err, err


# --- 9. Messages tell the truth -------------------------------------------------------------------


def test_finetuning_an_image_run_on_pairs_says_pairs_need_a_text_run(tmp_path: Path, capsys) -> None:
    from conftest import bar_images_run

    run = bar_images_run(tmp_path, steps=1)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "2+2=", "answer": "4"}\n' * 4)
    code, _, err = run_cli(["finetune", run, "--data", pairs, "--out", tmp_path / "ft", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{pairs} holds prompt/answer pairs, which fine-tune a text run; {run} is an image run" in err
    assert "data.layout" not in err


def test_shards_shorter_than_a_window_say_so(tmp_path: Path) -> None:
    import torch

    from ebt.data.tokens import TokenSplit

    shards = [torch.arange(20) for _ in range(50)]  # 1,000 tokens, no shard holding 33
    with pytest.raises(DataError) as caught:
        TokenSplit(shards, name="train split").check(33)
    line = str(caught.value)
    assert line.startswith("the train split has 1,000 tokens in 50 shards, the longest 20 tokens, and no window")
    assert "fewer than" not in line and "shard_tokens of at least 33" in line
    with pytest.raises(DataError, match="has 20 tokens, fewer than the context window \\(32\\) \\+ 1 = 33"):
        TokenSplit(shards[:1], name="train split").check(33)


def _shell_argv(line: str) -> list[str]:
    """The arguments a POSIX shell gives `line`'s command (its first word replaced by a printer)."""
    import subprocess
    import sys

    printer = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    command = line.split("`")[1] if "`" in line else line
    assert command.startswith("ebt ")
    done = subprocess.run(["sh", "-c", printer + command[3:]], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


AWKWARD = "my runs/it's $HOME"  # a space, a quote and a dollar: each breaks an unquoted hint


def test_printed_commands_survive_a_shell(tmp_path: Path, capsys) -> None:
    from ebt.errors import CheckpointError
    from ebt.scaling.running import prepare
    from ebt.scaling.sweep import Sweep

    out = tmp_path / AWKWARD
    code, printed, err = run_cli(["scale", "run", "--axis", "depth", "--out", out, "--print-commands",
                                  "--steps", "3"], capsys)
    assert code == 0, err
    sweep = Sweep.load(out)
    assert [_shell_argv(line) for line in printed.splitlines()] == [sweep.command(p, out) for p in sweep.points()]
    (hint,) = [line for line in err.splitlines() if "then:" in line]
    assert _shell_argv(hint.split("then: ")[1]) == ["scale", "fit", str(out)]
    with pytest.raises(CheckpointError) as caught:
        prepare(Sweep("width"), out)  # another sweep in that directory: the hint reuses its settings
    assert _shell_argv(str(caught.value).split("(")[-1].split(" alone")[0]) == ["scale", "run", "--out", str(out)]
    code, printed, _ = run_cli(["prepare-data", "kjv", "--out", tmp_path / AWKWARD / "prep"], capsys)
    assert code == 0 and _shell_argv(printed.splitlines()[-1].split("`")[1].replace(" ... ", " x ")) == [
        "train", "--preset", "x", "--data", str(tmp_path / AWKWARD / "prep")]


def test_the_interrupt_and_divergence_hints_resume_through_a_shell(corpus_file: Path, tmp_path: Path,
                                                                   capsys) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / AWKWARD / "run"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    process = subprocess.Popen([sys.executable, "-m", "ebt.cli", "train", "--preset", "text-transformer-tiny",
                                "--data", str(corpus_file), "--out", str(out), *TINY[:-2], "--train.steps=100000",
                                "--train.eval_every=0", "--train.log_every=1", "--quiet"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    hint = err.strip().splitlines()[-1].split("resume with: ")[1]
    argv = _shell_argv(hint)
    assert argv == ["train", "--resume", "--out", str(out)]
    step = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    done = subprocess.run(["sh", "-c", f"{sys.executable} -m ebt.cli{hint[3:]} --train.steps={step + 1} --quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # Divergence keeps the checkpoint and says how to resume from it, quoted.
    code, _, err = run_cli(["train", "--resume", "--out", out, f"--train.steps={step + 3}", "--train.lr=1e30",
                            "--quiet"], capsys)
    assert code == 2 and "and resume from it, e.g. ebt train --resume --out" in err, err
    assert _shell_argv(err.split("e.g. ")[1].strip()) == ["train", "--resume", "--out", str(out), "--train.lr=1e+29"]


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt(), 130), ("SIGTERM", 143)])
def test_ctrl_c_in_make_demo_is_one_line_saying_what_rerunning_does(stop, code: int, tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    from ebt import demo
    from ebt.errors import Interrupted

    def stopped(steps, out):
        print("=== training text-transformer-tiny ===")
        raise stop if isinstance(stop, BaseException) else Interrupted("interrupted at step 3 (SIGTERM); checkpoint "
                                                                       "saved; resume with: ebt train --resume", 143)

    monkeypatch.setattr(demo, "train_both", stopped)
    assert demo.main(["--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--resume" not in err
    assert err.startswith("make demo: interrupted; running `make demo` again starts it from the beginning")
