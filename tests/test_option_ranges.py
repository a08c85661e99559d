"""Every value an option accepts works (issue 23, item 10).

The range of every numeric option is read from where it is declared — the config's checks
(`RunConfig.validated`, recorded as it runs), the knobs of `ebt.options` (their `check`), the
checks each command's argument class makes when it is built (`ebt.commands.*Args`, recorded) —
and each end of it is run on a tiny model through the command line: a tiny positive value (or
the declared low end) and a huge finite one (the declared high end; float's largest value, or
the config's MAX_INT, where none is declared). Each gives a result whose figures are finite, or
a one-line refusal (exit 2, no traceback). An end that is a long job (train.steps = 1e9,
--steps 10000, --max-new-tokens 1e6) runs until the test interrupts it, and stops as an
interrupt does (exit 130, one line).

An option declared with the `ebt.checks` functions is walked without a change here; one that
escapes them fails `test_every_numeric_option_has_a_declared_range`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import math
import pkgutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import ebt
import ebt.checks
import ebt.commands as commands
from conftest import bar_images_run
from ebt.cli import flag_of, main
from ebt.config import MAX_INT, TASK_SECTIONS
from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.presets import preset

# --- Where the ranges are declared -----------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """One numeric option's declared range: `owner` is "config" (name "section.key"),
    "ThinkingOptions" or a command's argument class (name: the field)."""

    owner: str
    name: str
    kind: str  # "int" or "real"
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def ends(self) -> list[int | float]:
        """The low end (a real's: the smallest positive float when the range starts at 0), and the
        high end (when none is declared: MAX_INT for the config's integers, float's largest value)."""
        if self.kind == "int":
            return [int(self.low), int(self.high if self.high is not None else MAX_INT)]
        low = (5e-324 if self.low == 0 else math.nextafter(self.low, math.inf)) if self.low_open or self.low == 0 \
            else self.low
        high = sys.float_info.max if self.high is None else \
            math.nextafter(self.high, -math.inf) if self.high_open else self.high
        return [low, high]


def _range(owner: str, kind: str, name: str, args: tuple, kwargs: dict) -> Range:
    bounds = dict(zip(("low", "high"), args)) | {k: kwargs[k] for k in ("low", "high") if k in kwargs}
    return Range(owner, name, kind, bounds.get("low"), bounds.get("high"), kwargs.get("low_open", False),
                 kwargs.get("high_open", False))


@contextlib.contextmanager
def recorded(owner: str, found: dict[tuple[str, str], Range]) -> Iterator[None]:
    """Record the range of every check_int / check_real call made by an `ebt` module inside."""
    originals = {"int": ebt.checks.check_int, "real": ebt.checks.check_real}

    def wrapped(kind: str):
        @functools.wraps(originals[kind])
        def check(name: str, value: Any, *args, **kwargs):
            found.setdefault((owner, name), _range(owner, kind, name, args, kwargs))
            return originals[kind](name, value, *args, **kwargs)
        return check

    patched = [(module, f"check_{kind}", function) for module in list(sys.modules.values())
               if getattr(module, "__name__", "").startswith("ebt.") and module is not ebt.checks
               for kind, function in originals.items() if getattr(module, f"check_{kind}", None) is function]
    for module, attribute, function in patched:
        setattr(module, attribute, wrapped(attribute[len("check_"):]))
    try:
        yield
    finally:
        for module, attribute, function in patched:
            setattr(module, attribute, function)


def knob_ranges(cls: type, owner: str, prefix: str = "") -> list[Range]:
    """The ranges of `cls`'s knobs, from their declared check (`ebt.options.knob`)."""
    found = []
    for f in dataclasses.fields(cls):
        check = f.metadata.get("check")
        if isinstance(check, functools.partial) and check.func in (ebt.checks.check_int, ebt.checks.check_real):
            kind = "int" if check.func is ebt.checks.check_int else "real"
            found.append(_range(owner, kind, prefix + f.name, (), check.keywords))
    return found


# What each argument class is made with: its required fields (no path is checked when it is made).
REQUIRED = {"run": Path("run"), "out": Path("out"), "source": "corpus", "dirs": [Path("sweep")]}
MADE_WITH = {"FinetuneArgs": {"data": "pairs.jsonl"}, "TrainArgs": {"preset": "text-ebt-tiny"}}
PRESETS = {"text": "text-ebt-tiny", "image": "image-ebt-tiny", "video": "video-ebt-tiny"}


def declared_ranges() -> list[Range]:
    for info in pkgutil.walk_packages(ebt.__path__, "ebt."):  # every module, so every check is patched
        if info.name not in ("ebt.harness",):
            importlib.import_module(info.name)
    found: dict[tuple[str, str], Range] = {}
    with recorded("config", found):
        for name in PRESETS.values():
            preset(name).validated()
    for r in knob_ranges(InnerOptimizer, "config", "think."):
        found.setdefault(("config", r.name), r)
    for r in knob_ranges(ThinkingOptions, "ThinkingOptions"):
        found[("ThinkingOptions", r.name)] = r
    for cls in (getattr(commands, name) for name in commands.__all__):
        if dataclasses.is_dataclass(cls):
            with recorded(cls.__name__, found):
                required = {f.name: REQUIRED[f.name] for f in dataclasses.fields(cls)
                            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
                cls(**required, **MADE_WITH.get(cls.__name__, {}))
    # A command that checks config overrides (bench) records config keys: those are walked as config.
    return sorted((r for r in found.values() if r.owner == "config" or "." not in r.name),
                  key=lambda r: (r.owner, r.name))


RANGES = declared_ranges()


def test_every_numeric_option_has_a_declared_range() -> None:
    """Every int or float field of the config and of every command's arguments is walked (a field
    checked some other way would escape the walk)."""
    walked = {(r.owner, r.name) for r in RANGES}
    from ebt.config import SECTIONS, RunConfig

    config = RunConfig()
    numeric = {("config", f"{s}.{f.name}") for s in (*SECTIONS, *TASK_SECTIONS)
               for f in dataclasses.fields(getattr(config, s, None) or preset(PRESETS[s]).modality)
               if f.type in ("int", "float")}
    for cls in (getattr(commands, name) for name in commands.__all__):
        if dataclasses.is_dataclass(cls):
            numeric |= {(cls.__name__, f.name) for f in dataclasses.fields(cls)
                        if f.type in ("int", "float", "int | None", "float | None")}
    # Sweep settings are checked with the sweep they make (`ebt.scaling.sweep`, test_scaling_sweep.py).
    swept = {("ScaleRunArgs", name) for name in ("seeds", "steps", "windows")}
    assert numeric - swept - walked == set()


# --- Running one end -------------------------------------------------------------------------------

# Config keys whose high end is a long job: the test stops it and expects an interrupt's exit.
LONG = {("config", "train.steps"), ("ThinkingOptions", "steps"), ("ThinkingOptions", "samples"),
        ("GenerateArgs", "max_new_tokens"), ("BenchArgs", "repeats"), ("BenchArgs", "new_tokens"),
        ("BenchArgs", "prompt_len"), ("DenoiseArgs", "repeats"), ("ScaleFitArgs", "replicates"),
        ("GenerateArgs", "length")}
LONG_S, SAFETY_S = 3, 300  # a long job's time before the test stops it; anything else's, as a safety net

# Two steps: the second runs on weights the first updated at the full rate (no warm-up in 2 steps).
TINY = {"model.n_layers": 1, "model.dim": 16, "model.n_heads": 2, "model.context_len": 8, "train.steps": 2,
        "train.batch_size": 2, "train.eval_examples": 2, "train.log_every": 1, "train.device": "cpu"}
TINY_TASK = {"image": {"image.image_size": 12}, "video": {"model.context_len": 4, "video.clips": 10,
                                                           "video.encoder_dim": 5}}
# What an option needs beside it to be used at all (else a cross-field rule refuses it first).
WITH = {("ThinkingOptions", "selection_temperature"): ["--samples", "2", "--langevin-std", "0.01"],
        ("ThinkingOptions", "samples"): ["--langevin-std", "0.01"],
        ("ThinkingOptions", "power_iterations"): ["--spectral-step", "1"],
        ("PrepareDataArgs", "bpe_vocab_size"): ["--tokenizer", "bpe"],
        ("ScaleFitArgs", "thinking_windows"): ["--thinking"],
        ("config", "think.ranking_samples"): ["--think.ranking_weight=1"],
        ("config", "text.bpe_vocab_size"): ["--text.tokenizer=bpe"],
        ("config", "think.power_iterations"): ["--think.spectral_step=1"],
        ("config", "train.decay_fraction"): ["--train.lr_schedule=wsd", "--train.warmup_fraction=0"]}


def shown(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[list[bool]]:
    """SIGINT (as Ctrl-C) to this process once `seconds` have passed; yields [whether it came]."""
    came = [False]

    def ring(signum, frame):
        came[0] = True
        signal.raise_signal(signal.SIGINT)

    # SIGINT as Ctrl-C gives it: a shell starts a background job (`make test &`) with SIGINT ignored,
    # and Python then keeps ignoring it; the test would wait on a long job for ever.
    previous = signal.signal(signal.SIGALRM, ring), signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield came
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


@dataclass
class Places:
    """The tiny runs and data the commands run on."""

    root: Path
    corpus: Path
    pictures: Path
    text_run: Path
    image_run: Path
    video_run: Path
    sweep: Path


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path, trained_runs) -> Places:
    root = tmp_path_factory.mktemp("ranges")
    (root / "images").mkdir()
    image_run = bar_images_run(root / "images", steps=2)
    video = root / "video-run"
    assert main(["train", "--preset", "video-ebt-tiny", "--out", str(video), "--quiet",
                 *train_overrides("video", None)]) == 0
    return Places(root, corpus_file, image_run.parent / "pictures", trained_runs["ebt"]["dir"], image_run, video,
                  root / "sweep")


@pytest.fixture(scope="module")
def sweep(places: Places) -> Path:
    """A finished width sweep of 2-step points, for `scale run` and `scale fit`."""
    assert main(["scale", "run", "--axis", "width", "--values", "32,64,96", "--steps", "2", "--windows", "2",
                 "--data", str(places.corpus), "--out", str(places.sweep), "--model.context_len=8",
                 "--train.batch_size=2", "--jobs", "2"]) == 0
    return places.sweep


def train_overrides(task: str, key: str | None) -> list[str]:
    settings = {**TINY, **TINY_TASK.get(task, {})}
    settings.pop(key, None)
    return [f"--{k}={v}" for k, v in settings.items()]


def command_line(r: Range, value: int | float, places: Places, command: str, out: Path) -> list[str]:
    """The command line that gives option `r` the value `value`."""
    if r.owner == "config":
        section = r.name.split(".")[0]
        task = section if section in TASK_SECTIONS else "text"
        data = {"text": ["--data", str(places.corpus)], "image": ["--data", str(places.pictures)], "video": []}[task]
        return ["train", "--preset", PRESETS[task], "--out", str(out), "--quiet", *data, *train_overrides(task, r.name),
                f"--{r.name}={shown(value)}"]
    video = r.owner == "GenerateArgs" and r.name in ("frames", "length", "clip")
    base = {
        "eval": ["eval", str(places.text_run), "--json", "--max-examples", "4"],
        "generate": ["generate", str(places.video_run), "--out", str(out / "clip.png")] if video else
                    ["generate", str(places.text_run), "--prompt", "the cat", "--max-new-tokens", "4"],
        "denoise": ["denoise", str(places.image_run), "--json", "--images", "2"],
        "bench": ["bench", "--no-memory", "--json", "--repeats", "1", "--prompt-len", "4", "--new-tokens", "1",
                  "--model.n_layers=1", "--model.dim=16", "--model.n_heads=2", "--model.context_len=8"],
        "prepare-data": ["prepare-data", str(places.corpus), "--out", str(out / "prepared"), "--json"],
        "scale run": ["scale", "run", "--out", str(places.sweep), "--jobs", "1"],
        "scale fit": ["scale", "fit", str(places.sweep), "--json", "--replicates", "100"],
    }[command]
    flag = flag_of(commands.EvalArgs if r.owner == "ThinkingOptions" else getattr(commands, r.owner), r.name)
    if flag in base:  # the base line's own value of this option goes
        at = base.index(flag)
        del base[at:at + 2]
    return [*base, *WITH.get((r.owner, r.name), []), flag, shown(value)]


COMMAND = {"EvalArgs": "eval", "GenerateArgs": "generate", "DenoiseArgs": "denoise", "BenchArgs": "bench",
           "PrepareDataArgs": "prepare-data", "ScaleRunArgs": "scale run", "ScaleFitArgs": "scale fit"}
CASES = [pytest.param(r, end, command, id=f"{r.owner}-{r.name}-{'low' if i == 0 else 'high'}-{command}")
         for r in RANGES for i, end in enumerate(r.ends())
         for command in (["eval", "generate", "denoise"] if r.owner == "ThinkingOptions" else
                         ["train"] if r.owner == "config" else [COMMAND[r.owner]])]


def finite_result(command: str, out: str, run: Path) -> None:
    """The figures a command printed (or, for train, logged) are finite."""
    if command == "train":
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        loss = [row["loss"] for row in rows if row["split"] == "validation"][-1]
        assert loss is not None and math.isfinite(loss), rows[-1]
    elif command in ("eval", "denoise"):
        result = json.loads(out)
        for row in result if isinstance(result, list) else [result]:
            assert row["loss" if "loss" in row else "psnr"] is not None, row  # standard JSON: null for NaN or ∞


@pytest.mark.parametrize("r, value, command", CASES)
def test_each_end_of_each_range_gives_a_result_or_a_one_line_refusal(r: Range, value: int | float, command: str,
                                                                     places: Places, tmp_path: Path, capsys,
                                                                     request: pytest.FixtureRequest) -> None:
    if command.startswith("scale"):
        request.getfixturevalue("sweep")
    argv = command_line(r, value, places, command, tmp_path / "out")
    long = (r.owner, r.name) in LONG and value == r.ends()[1]
    capsys.readouterr()
    with interrupted_after(LONG_S if long else SAFETY_S) as came:
        code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    if came[0]:
        assert long, f"{argv} was still running after {SAFETY_S} s"
        assert code == 130 and len(err.strip().splitlines()) == 1, (code, err)
    elif code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ebt {command}: error: "), err
    else:
        assert code == 0, (code, err)
        finite_result(command, out, tmp_path / "out")


# --- Sizes inside the ranges that cannot fit in memory ---------------------------------------------


@pytest.mark.parametrize("preset_name, override, named", [
    ("text-ebt-tiny", "--model.dim=100000", "lower model.dim"),
    ("text-ebt-tiny", "--model.n_layers=1000000000", "lower model.n_layers"),
    ("text-ebt-tiny", "--think.steps=1000000000", "lower think.steps"),  # one landscape per step
    ("text-ebt-tiny", "--train.batch_size=1000000000", "lower train.batch_size"),
    ("text-transformer-tiny", "--train.batch_size=1000000000", "lower train.batch_size"),
    ("text-ebt-s2-tiny", "--think.replay_buffer_size=1000000000", "lower think.replay_buffer_size"),
    ("video-ebt-tiny", "--video.clips=1000000000", "lower video.clips"),
    ("image-ebt-tiny", "--image.image_size=100000", "lower image.image_size"),
])
def test_a_size_that_cannot_fit_is_one_line_naming_it_before_anything_is_allocated(
        preset_name: str, override: str, named: str, places: Places, tmp_path: Path, capsys) -> None:
    task = preset_name.split("-")[0]
    data = {"text": ["--data", str(places.corpus)], "image": ["--data", str(places.pictures)], "video": []}[task]
    out = tmp_path / "run"
    key = override[2:].split("=")[0]
    code = main(["train", "--preset", preset_name, "--out", str(out), "--quiet", *data, *train_overrides(task, key),
                 override])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert named in err and "of memory, more than the" in err, err
    assert not (out / "model.safetensors").exists()


def test_the_estimate_is_checked_against_the_machine_it_runs_on(places: Places, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """On a machine of 64 MB, a 1-layer model of width 1024 (7.9M parameters: its weights, 31 MB,
    fit; training them with AdamW, 126 MB, does not) is refused; width 64 (1 MB) trains."""
    import ebt.memory

    monkeypatch.setattr(ebt.memory, "device_memory", lambda device="cpu": 64 * 10**6)
    argv = ["train", "--preset", "text-ebt-tiny", "--quiet", "--data", str(places.corpus),
            *train_overrides("text", "model.dim")]
    assert main([*argv, "--out", str(tmp_path / "wide"), "--model.dim=1024"]) == 2
    err = capsys.readouterr().err
    assert "training the model" in err and "more than the 64 MB this machine has; lower model.dim" in err, err
    assert main([*argv, "--out", str(tmp_path / "narrow"), "--model.dim=64"]) == 0


def test_an_allocation_that_fails_anyway_names_the_sizes_in_play(places: Places, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """What no estimate foresees (here: every training step) and the allocator refuses is one line
    naming the sizes that set it, not torch's RuntimeError."""
    import ebt.objectives

    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 123456789012 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(ebt.objectives.UnrolledThinking, "forward", refuse)
    code = main(["train", "--preset", "text-ebt-tiny", "--out", str(tmp_path / "run"), "--quiet", "--data",
                 str(places.corpus), *train_overrides("text", None)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training ran out of memory (tried to allocate 123456789012 bytes)" in err
    assert "train.batch_size = 2" in err and "model.dim = 16" in err


@pytest.mark.parametrize("error, words", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "tried to allocate 40000000000 bytes"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                                 "79.19 GiB of which 1.2 GiB is free."), "CUDA out of memory; tried to allocate 20.00 GiB"),
    (MemoryError("Unable to allocate 19.1 GiB for an array with shape (1000000, 5, 32, 32) and data type float32"),
     "Unable to allocate 19.1 GiB"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
])
def test_the_allocators_words_are_kept_and_other_errors_pass(error: BaseException, words: str | None) -> None:
    from ebt.errors import ConfigError
    from ebt.memory import naming, out_of_memory

    assert out_of_memory(error) == words
    with pytest.raises(ConfigError if words else type(error)) as raised:
        with naming("building it", {"model.dim": 100000}):
            raise error
    if words:
        assert str(raised.value) == f"building it ran out of memory ({words}) at model.dim = 100000; lower one of them"
        assert raised.value.field == "model.dim"
