"""Shared test fixtures: a small synthetic corpus, tiny configs and models, tiny trained runs.

Everything runs on the CPU at sizes that train in seconds: 1–2 layers, width 16–32, context 16,
byte tokenizer. Runs that several test files read (`trained_runs`) are trained once per session.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import ebt.train
from ebt.checkpoint import load_config
from ebt.config import RunConfig
from ebt.models import build_model
from ebt.presets import preset

# Tiny models run fastest on one thread, and the machine's cores are shared.
torch.set_num_threads(1)

_PHRASES = (
    "the cat sat on the mat.",
    "a dog ran to the park!",
    "one two three four five.",
    "she sells sea shells by the sea shore.",
    "to be or not to be, that is the question.",
)


def synthetic_text(lines: int = 160, seed: int = 0) -> str:
    """A few KB of repetitive English-like lines: easy to learn, long enough to split."""
    rng = random.Random(seed)
    return "".join(rng.choice(_PHRASES) + "\n" for _ in range(lines))


def bar_images_run(root: Path, steps: int) -> Path:
    """A tiny image EBT (1 block, width 16) trained `steps` steps on twelve 12×12 PNGs of bars
    written under `root`; returns its run directory."""
    import numpy as np
    from PIL import Image

    from ebt.cli import main

    folder = root / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        image = np.full((12, 12), 30, dtype=np.uint8)
        row, col = rng.integers(0, 9, size=2)
        image[row:row + 3, :], image[:, col:col + 3] = 220, 160
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    assert main(["train", "--preset", "image-ebt-tiny", "--out", str(root / "run"), "--quiet", "--model.n_layers=1",
                 "--model.dim=16", "--model.n_heads=2", "--image.image_size=12", f"--train.steps={steps}",
                 "--train.batch_size=4", "--train.eval_examples=4", "--train.device=cpu", "--data", str(folder)]) == 0
    return root / "run"


def tiny_config(
    kind: str = "ebt", corpus: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """The `text-{kind}-tiny` preset (System 1 for EBTs) shrunk to seconds of CPU training.

    `overrides` maps "section.key" to a value, e.g. {"train.steps": 40, "model.n_layers": 1}.
    """
    config = preset(f"text-{kind}-tiny")
    settings: dict[str, Any] = {
        "model.n_layers": 2, "model.dim": 32, "model.n_heads": 2, "model.context_len": 16,
        "train.steps": 20, "train.batch_size": 8, "train.eval_every": 0, "train.eval_examples": 4,
        "train.log_every": 1, "train.device": "cpu", "train.seed": 0,
    }
    if corpus is not None:
        settings["data.corpus"] = str(corpus)
    settings.update(overrides or {})
    for key, value in settings.items():
        section, name = key.split(".")
        if not hasattr(getattr(config, section), name):
            raise KeyError(key)
        setattr(getattr(config, section), name, value)
    return config.validated()


TINY_VOCAB = 11  # vocabulary of the untrained tiny models


def random_ids(b: int, s: int, seed: int = 0, high: int = TINY_VOCAB) -> torch.Tensor:
    """Token ids (b, s) in [0, high), seeded."""
    return torch.randint(0, high, (b, s), generator=torch.Generator().manual_seed(seed))


def softmax(y: torch.Tensor) -> torch.Tensor:
    return torch.softmax(y, dim=-1)


def run_cli(argv: list[Any], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`ebt ARGV` in-process: (exit code, stdout, stderr) of that call alone."""
    from ebt.cli import main

    capsys.readouterr()  # drop earlier output
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_model(kind: str = "ebt", vocab_size: int = TINY_VOCAB, dtype: torch.dtype = torch.float64, seed: int = 0,
               overrides: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialized model too small to need a corpus (width 16, 2 heads, context 8). An
    EBT's energy head starts Xavier-initialized (not the presets' zero), so that its untrained
    energy landscape is not flat."""
    settings = {"model.dim": 16, "model.context_len": 8, "model.energy_head_init": "xavier"}
    config = tiny_config(kind, overrides={**settings, **(overrides or {})})
    config.text.vocab_size = vocab_size
    torch.manual_seed(seed)
    return build_model(config).to(dtype)


@contextlib.contextmanager
def capture_built_models() -> Iterator[list[nn.Module]]:
    """Record the models `ebt.train.train` builds, so a test can compare the in-memory result."""
    built: list[nn.Module] = []
    original = ebt.train.build_model

    def build(config: RunConfig) -> nn.Module:
        model = original(config)
        built.append(model)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.train, "build_model", build)
        yield built


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "synthetic.txt"
    path.write_text(synthetic_text())
    return path


# Steps for the shared trained runs: enough for each EBT descent step to lower its energy.
TRAINED_STEPS = {"ebt": 100, "transformer": 60}


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, dict[str, Any]]:
    """One tiny trained run per model kind: {kind: {"dir", "config" (as saved), "model" (the
    trainer's in-memory model), "result" (final validation)}}."""
    runs = {}
    for kind, steps in TRAINED_STEPS.items():
        out = tmp_path_factory.mktemp(f"run-{kind}")
        config = tiny_config(kind, corpus_file, {"train.steps": steps, "train.eval_examples": 8})
        with capture_built_models() as built:
            result = ebt.train.train(config, out, quiet=True)
        runs[kind] = {"dir": out, "config": load_config(out), "model": built[-1], "result": result}
    return runs
