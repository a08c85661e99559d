"""Image denoising (SPEC §5): the bidirectional EBT, the DiT baseline, the noise schedule, the data
loaders and `ebt denoise`. Tiny sizes on the CPU; synthetic images except for the loader checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt.cli import main
from ebt.config import RunConfig
from ebt.data.images import FASHION_MNIST_DIR, load_images
from ebt.errors import ConfigError, DataError
from ebt.models import build_model
from ebt.nn import patchify, unpatchify
from ebt.objectives import NoisePrediction, UnrolledThinking, make_objective
from ebt.presets import preset
from ebt.baselines.diffusion import add_noise, alphas_cumprod, timestep
from ebt.evaluate import denoise_metrics
from ebt.image_protocol import budgets, denoise
from ebt.schedule import parameter_groups

SIZE = 12  # 12×12 images, 4×4 patches: 9 patches


def tiny_image_config(kind: str = "ebt", **model) -> RunConfig:
    config = preset(f"image-{kind}-tiny")
    settings = {"n_layers": 2, "dim": 32, "n_heads": 2, "image_size": SIZE, "channels": 1, "patch_size": 4, **model}
    for key, value in settings.items():
        setattr(config.image if hasattr(config.image, key) else config.model, key, value)
    return config.validated()


def tiny_image_model(kind: str = "ebt", dtype=torch.float64, seed: int = 0, **model):
    torch.manual_seed(seed)
    return build_model(tiny_image_config(kind, **model)).to(dtype)


def bar_images(n: int, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """Synthetic uint8 images (n, C, 12, 12): a bright horizontal and a vertical bar on dark."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, channels, SIZE, SIZE), 30, dtype=torch.uint8)
    rows, cols = torch.randint(0, SIZE - 3, (n,), generator=g), torch.randint(0, SIZE - 3, (n,), generator=g)
    for i in range(n):
        images[i, :, rows[i]:rows[i] + 3, :] = 220
        images[i, :, :, cols[i]:cols[i] + 3] = 160
    return images


def test_noise_levels_map_to_the_timesteps_of_the_schedule() -> None:
    assert [timestep(level) for level in (0.001, 0.1, 0.2, 1.0)] == [0, 99, 199, 999]
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    a = alphas_cumprod()
    assert torch.allclose(a[99], torch.prod(1 - betas[:100]))
    x0, eps = torch.ones(1, 1, 2, 2, dtype=torch.float64), torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64)
    assert torch.allclose(add_noise(x0, timestep(0.1), eps), a[99].sqrt() * x0 + (1 - a[99]).sqrt() * eps)
    for bad in (0.0, 0.0004, 1.5):
        with pytest.raises(ConfigError, match="noise level"):
            timestep(bad)


def test_patches_are_square_blocks_and_unpatchify_inverts_patchify() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8)
    patches = patchify(x, 4)  # (2, 4, 48)
    assert patches.shape == (2, 4, 48)
    assert torch.equal(patches[1, 2], x[1, :, 4:8, 0:4].reshape(-1))  # row-major: patch 2 is bottom-left
    assert torch.equal(unpatchify(patches, 3, 8, 4), x)


def test_at_initialization_the_ebt_returns_its_input() -> None:
    model = tiny_image_model()
    noisy = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64)
    assert torch.equal(model.energy(noisy), torch.zeros(3, dtype=torch.float64))  # zero energy head
    thought = denoise(model, noisy, 0.1, steps=3)
    assert torch.equal(thought.y.reshape(noisy.shape), noisy)
    assert thought.forward_passes == 3


def test_energy_gradient_matches_finite_differences() -> None:
    model = tiny_image_model()
    with torch.no_grad():  # move off the zero-initialized head and gates, where ∇E ≡ 0
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.energy(y).sum(), y)
    assert grad.abs().max() > 1e-6
    h = 1e-6
    for index in [(0, 0, 0, 0), (0, 0, 5, 7), (1, 0, 11, 3), (1, 0, 6, 6)]:
        bump = torch.zeros_like(y)
        bump[index] = h
        with torch.no_grad():
            numeric = (model.energy(y + bump).sum() - model.energy(y - bump).sum()) / (2 * h)
        assert float(numeric) == pytest.approx(float(grad[index]), rel=1e-5, abs=1e-9)


def test_each_image_energy_depends_on_its_own_image_only() -> None:
    model = tiny_image_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.energy(y)[1], y)
    assert grad[0].abs().max() == 0 and grad[2].abs().max() == 0 and grad[1].abs().max() > 0


def test_a_briefly_trained_ebt_raises_psnr_over_the_noisy_input() -> None:
    torch.manual_seed(0)
    config = tiny_image_config("ebt")
    config.think.step_size, config.think.step_size_lr_mult = 300.0, 900.0  # α₀ for tiny images (docs/results.md)
    config.train.lr = 3e-3
    model = build_model(config)
    objective = make_objective(model)
    assert isinstance(objective, UnrolledThinking)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.train, config.think.step_size_lr_mult))
    train = bar_images(256, seed=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        clean = train[torch.randint(0, 256, (32,), generator=g)].float() / 127.5 - 1
        noisy = add_noise(clean, timestep(0.1), torch.randn(clean.shape, generator=g))
        loss, _ = objective(noisy, clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    m = denoise_metrics(model, bar_images(64, seed=2), 0.1, batch_size=32)
    assert m["forward_passes"] == 1
    assert m["psnr"] > m["noisy_psnr"] + 1.0, m


def test_ddim_from_timestep_zero_returns_its_input() -> None:
    model = tiny_image_model("dit")
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    thought = denoise(model, x, 0.001)  # λ = 0.001 is timestep 0: one pass, ε̂ ≡ 0 at initialization
    assert thought.forward_passes == 1
    assert torch.allclose(thought.y, x, rtol=1e-4, atol=0)
    assert denoise(model, x, 0.1).forward_passes == 100  # t + 1 passes from t = 99
    assert denoise(model, x, 0.2, steps=10, repeats=2).forward_passes == 20


def test_dit_objective_and_thinking_options() -> None:
    model = tiny_image_model("dit", dtype=torch.float32)
    objective = make_objective(model)
    assert isinstance(objective, NoisePrediction)
    loss, stats = objective(torch.zeros(4, 1, SIZE, SIZE), torch.rand(4, 1, SIZE, SIZE) * 2 - 1)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.0, abs=0.5)  # ε̂ ≡ 0 at init: the MSE is E[ε²] = 1
    with pytest.raises(ConfigError, match="DiT cannot think"):
        denoise(model, torch.zeros(1, 1, SIZE, SIZE), 0.1, samples=2)


def test_each_image_model_is_scored_at_its_own_budgets() -> None:
    """The curve's budgets (`ebt.image_protocol`): the DiT's DDIM grids end at the level's full
    grid, then run it twice; the EBT thinks 1 … 4 steps, whatever the level."""
    def steps(model, level: float) -> list[tuple]:
        return [(b["options"].steps if b["options"] else None, b["repeats"]) for b in budgets(model, level)]

    dit, ebt = tiny_image_model("dit"), tiny_image_model()
    assert steps(dit, 0.1) == [(1, 1), (2, 1), (5, 1), (10, 1), (25, 1), (100, 1), (None, 2)]
    assert steps(dit, 0.004) == [(1, 1), (2, 1), (4, 1), (None, 2)]
    for level in (0.1, 0.2):
        assert steps(ebt, level) == [(s, 1) for s in (1, 2, 3, 4)]
    with pytest.raises(ConfigError, match="repeats = 2 is not allowed for an EBT"):
        denoise(ebt, torch.zeros(1, 1, SIZE, SIZE, dtype=torch.float64), 0.1, repeats=2)


def test_presets_have_equal_parameter_counts() -> None:
    counts = {kind: sum(p.numel() for p in build_model(preset(f"image-{kind}-tiny")).parameters())
              for kind in ("ebt", "dit")}
    assert abs(counts["ebt"] - counts["dit"]) / counts["dit"] < 0.005, counts


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist")
def test_fashion_mnist_loads_from_the_debian_package() -> None:
    splits = load_images("fashion-mnist", 28)
    assert splits.train.shape == (60000, 1, 28, 28) and splits.validation.shape == (10000, 1, 28, 28)
    assert splits.train.dtype == torch.uint8 and int(splits.train.max()) > 200


def test_image_folders_load_grayscale_and_rgb_and_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    with pytest.raises(DataError, match="has no"):
        load_images(str(folder), SIZE)
    for i in range(4):
        Image.fromarray(np.full((16, 20), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert load_images(str(folder), SIZE).train.shape == (3, 1, SIZE, SIZE)  # cropped, resized, 1 held out
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    splits = load_images(str(folder), SIZE)
    assert splits.channels == 3 and splits.validation.shape == (1, 3, SIZE, SIZE)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_images(str(folder), SIZE)
    with pytest.raises(DataError, match="neither a known set"):
        load_images(str(tmp_path / "missing"), SIZE)


# --- Command line --------------------------------------------------------------------------------

TINY = ["--quiet", "--model.n_layers=1", "--model.dim=16", "--model.n_heads=2", f"--image.image_size={SIZE}",
        "--train.steps=3", "--train.batch_size=4", "--train.eval_examples=1", "--train.device=cpu"]


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("image-runs")
    folder = root / "pictures"
    folder.mkdir()
    for i, image in enumerate(bar_images(12, channels=3)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    runs = {}
    for kind in ("ebt", "dit"):
        runs[kind] = root / kind
        assert main(["train", "--preset", f"image-{kind}-tiny", "--out", str(runs[kind]), "--data", str(folder),
                     *TINY]) == 0
    return runs


def test_cli_train_then_denoise_json(image_runs, capsys: pytest.CaptureFixture) -> None:
    config = json.loads((image_runs["ebt"] / "config.json").read_text())
    assert config["image"]["channels"] == 3  # from the RGB pictures
    rows = [json.loads(line) for line in (image_runs["ebt"] / "metrics.jsonl").read_text().splitlines()]
    assert all(r["images_per_s"] > 0 and "tokens_per_s" not in r for r in rows if r["split"] == "train")
    capsys.readouterr()
    assert main(["denoise", str(image_runs["ebt"]), "--noise", "0.1,0.2", "--steps", "2", "--images", "2",
                 "--json"]) == 0
    levels = json.loads(capsys.readouterr().out)
    assert [level["noise"] for level in levels] == [0.1, 0.2]
    for level in levels:
        assert {"psnr", "mse", "noisy_psnr", "noisy_mse", "forward_passes"} <= set(level)
        assert level["forward_passes"] == 2 and level["noisy_psnr"] > 0
    assert levels[1]["noisy_psnr"] < levels[0]["noisy_psnr"]  # more noise
    assert main(["eval", str(image_runs["dit"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["forward_passes"] == 100 and "psnr" in result and "loss" in result


def test_cli_denoise_vs_writes_a_table_and_plots(image_runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["denoise", str(image_runs["ebt"]), "--vs", str(image_runs["dit"]), "--images", "2",
                 "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ebt PSNR" in out and "dit PSNR" in out
    assert (tmp_path / "psnr_vs_passes.png").is_file() and (tmp_path / "denoised_grid.png").is_file()


@pytest.mark.parametrize("noise, message", [("0.1,abc", "not a number"), ("0", "must be in"), ("1.5", "must be in"),
                                            ("0.0002", "noise level")])
def test_cli_bad_noise_is_one_clear_line(image_runs, noise: str, message: str, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["denoise", str(image_runs["ebt"]), f"--noise={noise}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebt denoise: error:") and message in err and len(err.strip().splitlines()) == 1
