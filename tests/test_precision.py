"""Mixed precision (`ebt.precision`): thinking stays float32 and close to fp32 under bf16 autocast,
every model kind trains under it, and `ebt eval | generate | denoise` take `--precision`.

The tolerances are what bfloat16 (8 significant bits) can meet. On a tiny EBT, rounding the
weights alone to bfloat16 moves ∇E by about 1.6% (relative L2 norm); running the model under bf16
autocast moves it by 2–3%, and one thinking step's candidate by as much (it is p − α∇E), so
thinking is checked to 6%. A mean loss averages those errors out: a training loss stays within
2% (measured 0–0.2%), and an evaluation loss or PSNR within a few % of its fp32 value.
fp16 needs CUDA, which these CPU tests do not have: they check that it is refused clearly.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import ebt
from conftest import bar_images_run, random_ids, run_cli, tiny_config, tiny_model
from ebt.checkpoint import CONFIG
from ebt.cli import main
from ebt.errors import ConfigError, ThinkingDiverged
from ebt.evaluate import Scoring, denoise_metrics, evaluate
from ebt.generate import generate, rollout
from ebt.models import build_model
from ebt.objectives import make_objective
from ebt.options import ThinkingOptions
from ebt.precision import PRECISIONS, autocast, check_precision
from ebt.presets import preset
from ebt.think import think

CPU = torch.device("cpu")
THINKING_RTOL = 6e-2  # ∇E and one step's candidate, relative L2 norm (measured 1.7–3.0e-2)
TRAINING_RTOL = 2e-2  # a training loss (measured ≤ 1.5e-3)
EVAL_RTOL = 3e-2  # an evaluation loss or PSNR
VOCAB = 256  # text: the byte vocabulary, which the presets' α is tuned for


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def precision_context(precision: str):
    """fp32: autocast switched off (a region the test controls); else `ebt.precision.autocast`."""
    return torch.autocast("cpu", enabled=False) if precision == "fp32" else autocast(precision, CPU)


# --- 1. Thinking: float32 candidates, ∇E close to fp32 ------------------------------------------------


def gradient_and_step(model: nn.Module, ids: torch.Tensor, y: torch.Tensor, precision: str):
    """∇_p E at p = softmax(y) as `think` takes it, and one thinking step from y, at `precision`."""
    with precision_context(precision):
        p = model.task.prepare(y).requires_grad_()
        energy = model.landscapes(ids)(p, 0)
        (g,) = torch.autograd.grad(energy.float().sum(), p)
        thought = think(model.landscapes(ids), y, steps=1, step_size=float(model.alpha.detach()), prepare=model.task.prepare)
    return g, thought, energy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thinking_under_bf16_autocast_is_float32_and_close_to_fp32(seed: int) -> None:
    model = tiny_model("ebt", dtype=torch.float32, seed=seed)
    ids = random_ids(4, 8, seed=seed)
    y = model.task.initial_candidate(ids, 1, model.step_size, torch.Generator().manual_seed(seed))  # (B, 1, S, V)
    g32, fp32, _ = gradient_and_step(model, ids, y, "fp32")
    g16, bf16, raw_energy = gradient_and_step(model, ids, y, "bf16")
    assert raw_energy.dtype == torch.bfloat16  # the model did run in bf16
    assert g16.dtype == torch.float32 and bool(torch.isfinite(g16).all())
    assert relative_error(g16, g32) < THINKING_RTOL
    for c in (*bf16.candidates, *bf16.energies):
        assert c.dtype == torch.float32 and bool(torch.isfinite(c).all())
    assert relative_error(bf16.y, fp32.y) < THINKING_RTOL
    assert relative_error(bf16.energies[0], fp32.energies[0]) < THINKING_RTOL


def test_thinking_of_a_trained_ebt_under_bf16_autocast(trained_runs) -> None:
    model = ebt.load(trained_runs["ebt"]["dir"])
    ids = random_ids(4, model.config.context_len, high=model.task.candidate_dim)
    y = model.task.initial_candidate(ids, 1, model.step_size, torch.Generator().manual_seed(0))
    g32, fp32, _ = gradient_and_step(model, ids, y, "fp32")
    g16, bf16, _ = gradient_and_step(model, ids, y, "bf16")
    assert relative_error(g16, g32) < THINKING_RTOL and relative_error(bf16.y, fp32.y) < THINKING_RTOL
    with torch.no_grad(), autocast("bf16", CPU):  # the inference call, samples and scoring pass included
        thought = model.think(ids, steps=3, samples=2, generator=torch.Generator().manual_seed(0))
    assert thought.y.dtype == torch.float32 and all(e.dtype == torch.float32 for e in thought.energies)
    assert bool(torch.isfinite(thought.y).all())


# --- 2. Training under autocast, every model kind ---------------------------------------------------


def small_model(name: str) -> nn.Module:
    """A freshly initialized model of preset `name` at width 32, its zero-initialized maps (the
    image models' energy/noise heads and adaLN modulations) drawn small so that every part computes."""
    if name.startswith("text"):
        kind = "ebt" if "ebt" in name else "transformer"
        config = tiny_config(kind, overrides={"model.dim": 32, "model.context_len": 8})
        if "s2" in name:
            config = preset("text-ebt-s2-tiny")
            config.model.n_layers, config.model.dim, config.model.n_heads, config.model.context_len = 2, 32, 2, 8
        config.text.vocab_size = VOCAB
    else:
        config = preset(name)
        config.model.n_layers, config.model.dim, config.model.n_heads = 2, 32, 2
        if config.model.task == "image":
            config.image.image_size, config.image.patch_size = 12, 4
        else:
            config.video.latent_dim, config.model.context_len = 12, 8
    torch.manual_seed(0)
    model = build_model(config.validated())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() and not bool(p.any()):
                p.normal_(std=0.05)
    return model


def batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    task = model.config.task
    if task == "text":
        ids = torch.randint(0, VOCAB, (4, 9), generator=g)
        return ids[:, :-1], ids[:, 1:]
    if task == "video":
        latents = torch.randn(4, 9, 12, generator=g)
        return latents[:, :-1], latents[:, 1:]
    clean = torch.rand(4, 1, 12, 12, generator=g) * 2 - 1
    return clean + 0.3 * torch.randn(clean.shape, generator=g), clean


def training_step(model: nn.Module, precision: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One `objective(x, targets)` under `precision`'s autocast and `loss.backward()` outside it, as
    the trainer runs them; the same random draws (candidates, noise, timesteps) at every precision."""
    x, targets = batch(model)
    objective = make_objective(model)
    model.zero_grad()
    torch.manual_seed(5)
    with precision_context(precision):
        loss, _ = objective(x, targets)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["text-ebt", "text-ebt-s2", "text-transformer", "image-ebt-tiny", "image-dit-tiny",
                                  "video-ebt-tiny", "video-transformer-tiny"])
def test_one_training_step_under_bf16_autocast(name: str) -> None:
    model = small_model(name)
    loss32, grads32 = training_step(model, "fp32")
    loss16, grads16 = training_step(model, "bf16")
    assert abs(loss16 - loss32) <= TRAINING_RTOL * abs(loss32), (loss16, loss32)
    assert sorted(grads16) == sorted(grads32)
    for n, grad in grads16.items():  # the weights stay float32, and so do their gradients
        assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all()), n
    # The yardstick of the gradients' error: rounding the weights alone to bfloat16 (then fp32
    # throughout). Autocast also rounds every matmul's inputs; measured 0.7–2.7 times as far.
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16())
    _, grads_rounded = training_step(rounded, "fp32")
    flat = lambda grads: torch.cat([grads[n].flatten() for n in sorted(grads)])  # noqa: E731
    assert relative_error(flat(grads16), flat(grads32)) <= 5 * relative_error(flat(grads_rounded), flat(grads32))


# --- 3. Divergence under autocast names the narrow dtype --------------------------------------------


def test_an_energy_overflowing_float16_says_so_and_names_the_precision() -> None:
    """A float32 candidate whose energy model computes in float16 (as under fp16 autocast on CUDA)."""
    def energy(p: torch.Tensor, step: int) -> torch.Tensor:
        return (p.half() * 300).pow(2).sum(-1)  # 4 · 300² > 65504

    with pytest.raises(ThinkingDiverged, match=r"the energy is not finite at step 0.*overflowed torch.float16 "
                                               r"\(largest finite value 6.55e\+04\): the energy model ran in it under autocast; "
                                               r"use precision bf16 or fp32$") as error:
        think(energy, torch.ones(1, 2, 4), steps=2, step_size=0.1)
    assert error.value.field == "precision"


def test_divergence_under_bf16_autocast_reads_right() -> None:
    model = tiny_model("ebt", dtype=torch.float32)
    ids = random_ids(1, 4)
    with torch.no_grad(), autocast("bf16", CPU):
        with pytest.raises(ThinkingDiverged, match=r"α·∇E overflows torch.float32 .* at step 0 \(α = 1e\+300\).*"
                                                   r"lower the step size$"):
            model.think(ids, step_size=1e300)  # the candidate's arithmetic is float32, so that is what overflows
    with torch.no_grad():  # outside the autocast region: it caches its bf16 copies of the weights
        model.energy_head.weight[0, 0] = float("nan")
    with torch.no_grad(), autocast("bf16", CPU):
        with pytest.raises(ThinkingDiverged, match=r"the energy is not finite at step 0 \(α = 80\): NaN or Inf in "
                                                   r"the model's weights.*overflowed torch.bfloat16 .*ran in it under "
                                                   r"autocast; use precision fp32$"):
            model.think(ids)


# --- 4. Bad precisions are refused ----------------------------------------------------------------


@pytest.mark.parametrize("flag", ["train.precision", "--precision"])
def test_check_precision_names_the_field_the_value_and_what_is_allowed(flag: str) -> None:
    with pytest.raises(ConfigError) as fp16:
        check_precision("fp16", CPU, flag)
    message = str(fp16.value)
    assert message.startswith(f"{flag} = 'fp16'") and "CUDA" in message and "'bf16'" in message and "'fp32'" in message
    with pytest.raises(ConfigError) as unknown:
        check_precision("fp64", CPU, flag)
    assert str(unknown.value) == f"{flag} = 'fp64' is not allowed; it must be one of 'fp32', 'bf16', 'fp16'"
    for precision in ("fp32", "bf16"):
        check_precision(precision, CPU, flag)
    assert PRECISIONS == ("fp32", "bf16", "fp16")


def test_the_api_refuses_bad_precisions() -> None:
    model = tiny_model("ebt", dtype=torch.float32)
    tokens = torch.arange(100) % 11
    with pytest.raises(ConfigError, match=r"precision = 'fp16' needs a CUDA device"):
        evaluate(model, tokens, precision="fp16")
    with pytest.raises(ConfigError, match=r"precision = 'fp64' is not allowed"):
        generate(model, [1, 2], 2, precision="fp64")
    with pytest.raises(ConfigError, match=r"precision = 'fp16' needs a CUDA device"):
        denoise_metrics(small_model("image-ebt-tiny"), torch.zeros(1, 1, 12, 12, dtype=torch.uint8), 0.1,
                        precision="fp16")
    with pytest.raises(ConfigError, match=r"precision = 'half' is not allowed"):
        rollout(small_model("video-ebt-tiny"), torch.zeros(1, 2, 12), 1, precision="half")


def test_one_scoring_value_carries_device_precision_batch_size_and_seed(trained_runs) -> None:
    """`Scoring` is checked where it is made; `precision=None` means the run's own, resolved by
    `for_run`; the API's keywords make the same value; a Scoring and its fields at once are refused."""
    with pytest.raises(ConfigError, match=r"precision = 'fp16' needs a CUDA device"):
        Scoring(precision="fp16")
    assert Scoring("cpu", "bf16").device == CPU
    run = ebt.load_run(trained_runs["ebt"]["dir"])
    assert Scoring(precision=None).for_run(run).precision == run.config.train.precision
    assert Scoring(precision="bf16").for_run(run).precision == "bf16"
    with pytest.raises(ValueError, match="for_run"):
        Scoring(precision=None).autocast()
    model, tokens = tiny_model("ebt", dtype=torch.float32), torch.arange(100) % 11
    by_keywords = evaluate(model, tokens, batch_size=3, seed=5, precision="bf16").summary()
    assert evaluate(model, tokens, scoring=Scoring(CPU, "bf16", 3, 5)).summary() == by_keywords
    with pytest.raises(TypeError, match="not both"):
        evaluate(model, tokens, scoring=Scoring(), seed=1)
    with pytest.raises(ConfigError, match=r"precision = None is not allowed"):
        evaluate(model, tokens, precision=None)  # a model alone has no train.precision to fall back on


# --- 5. The commands: --precision, defaulting to the run's own -----------------------------------


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-step image EBT on twelve 12×12 PNGs of bars."""
    return bar_images_run(tmp_path_factory.mktemp("image-run"), steps=10)


def command(name: str, trained_runs, image_run: Path, kind: str = "ebt") -> list:
    if name == "denoise":
        return ["denoise", image_run, "--images", "4", "--noise", "0.1"]
    run = trained_runs[kind]["dir"]
    return ["eval", run, "--max-examples", "4"] if name == "eval" else \
        ["generate", run, "--prompt", "the cat", "--max-new-tokens", "4", "--temperature", "0"]


def one_line_error(code: int, err: str, name: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ebt {name}: error: "), err
    return lines[0]


@pytest.mark.parametrize("name", ["eval", "generate", "denoise"])
def test_bad_precision_flags_are_one_line_errors(name: str, trained_runs, image_run: Path, capsys) -> None:
    argv = command(name, trained_runs, image_run)
    line = one_line_error(*run_cli([*argv, "--precision", "fp16", "--device", "cpu"], capsys)[::2], name)
    assert "precision = 'fp16' needs a CUDA device" in line and "use 'bf16' on the CPU, or 'fp32'" in line
    assert line.endswith("(flag --precision)")
    line = one_line_error(*run_cli([*argv, "--precision", "FP32"], capsys)[::2], name)
    assert "precision = 'FP32' is not allowed; it must be one of 'fp32', 'bf16', 'fp16'" in line
    assert line.endswith("(flag --precision)")


def scored(capsys, argv: list) -> dict:
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_eval_in_bf16_is_close_to_fp32(kind: str, trained_runs, image_run: Path, capsys) -> None:
    argv = command("eval", trained_runs, image_run, kind)
    default, fp32, bf16 = (scored(capsys, argv + extra) for extra in ([], ["--precision", "fp32"],
                                                                      ["--precision", "bf16"]))
    assert default == fp32  # the run trained at fp32
    assert math.isfinite(bf16["loss"]) and abs(bf16["loss"] - fp32["loss"]) <= EVAL_RTOL * fp32["loss"]
    assert bf16["tokens"] == fp32["tokens"]


def test_generate_in_bf16_continues_the_prompt(trained_runs, image_run: Path, capsys) -> None:
    argv = command("generate", trained_runs, image_run)
    code, out, err = run_cli([*argv, "--precision", "bf16"], capsys)
    assert code == 0, err
    assert out.startswith("the cat") and len(out.rstrip("\n")) > len("the cat")


def test_denoise_in_bf16_is_close_to_fp32(image_run: Path, capsys) -> None:
    argv = command("denoise", None, image_run)
    (fp32,), (bf16,) = (scored(capsys, argv + ["--precision", p]) for p in ("fp32", "bf16"))
    assert fp32["psnr"] != fp32["noisy_psnr"]  # thinking changed the images
    for key in ("psnr", "loss", "mse"):
        assert math.isfinite(bf16[key]) and abs(bf16[key] - fp32[key]) <= EVAL_RTOL * abs(fp32[key]), key


def test_the_dit_denoises_in_bf16_close_to_fp32() -> None:
    dit = small_model("image-dit-tiny")
    images = torch.randint(0, 256, (4, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fp32, bf16 = (denoise_metrics(dit, images, 0.1, ThinkingOptions(steps=5), precision=p) for p in ("fp32", "bf16"))
    assert abs(bf16["psnr"] - fp32["psnr"]) <= EVAL_RTOL * fp32["psnr"]
    assert abs(bf16["loss"] - fp32["loss"]) <= EVAL_RTOL * fp32["loss"]


def run_trained_at(source: Path, precision: str, tmp_path: Path) -> Path:
    """A copy of run `source` whose saved config says it trained at `precision`."""
    copy = tmp_path / f"run-{precision}"
    shutil.copytree(source, copy)
    config = json.loads((copy / CONFIG).read_text())
    config["train"]["precision"] = precision
    (copy / CONFIG).write_text(json.dumps(config))
    return copy


def test_the_default_precision_is_the_runs_own(trained_runs, tmp_path: Path, capsys) -> None:
    source = trained_runs["ebt"]["dir"]
    bf16_run = run_trained_at(source, "bf16", tmp_path)
    assert scored(capsys, ["eval", bf16_run, "--max-examples", "4"]) | {"run": ""} == \
        scored(capsys, ["eval", source, "--max-examples", "4", "--precision", "bf16"]) | {"run": ""}
    fp16_run = run_trained_at(source, "fp16", tmp_path)
    line = one_line_error(*run_cli(["eval", fp16_run, "--device", "cpu"], capsys)[::2], "eval")
    assert "train.precision (the default of precision) = 'fp16' needs a CUDA device" in line
    assert line.endswith("(flag --precision)")
    assert str(fp16_run) in line
    assert scored(capsys, ["eval", fp16_run, "--max-examples", "4", "--precision", "fp32"])["loss"] == \
        scored(capsys, ["eval", source, "--max-examples", "4"])["loss"]


def test_the_paper_suite_in_bf16(trained_runs, tmp_path: Path, capsys) -> None:
    """In distribution the losses agree; on the OOD sets a tiny run's losses (10–40 nats) are so far
    out that rounding its weights alone to bfloat16 moves them by up to 14%: finite is checked."""
    argv = ["eval", trained_runs["ebt"]["dir"], "--suite", "paper", "--max-examples", "4", "--batch-size", "4",
            "--baseline", trained_runs["transformer"]["dir"], "--plots", tmp_path]
    fp32, bf16 = (scored(capsys, argv + ["--precision", p]) for p in ("fp32", "bf16"))

    def close(ppl: float, reference: float) -> bool:  # the losses (log perplexities) within EVAL_RTOL
        return abs(math.log(ppl) - math.log(reference)) <= EVAL_RTOL * math.log(reference)

    for name, entry in bf16["datasets"].items():
        reference = fp32["datasets"][name]
        assert all(math.isfinite(b["ppl"]) for b in entry["budgets"]) and math.isfinite(entry["transformer_ppl"])
        assert close(entry["transformer_ppl"], reference["transformer_ppl"]), name
    for ours, theirs in zip(bf16["datasets"]["validation"]["budgets"], fp32["datasets"]["validation"]["budgets"]):
        assert close(ours["ppl"], theirs["ppl"]), (ours["steps"], ours["samples"])
    assert math.isfinite(bf16["uncertainty"]["spearman_energy_loss"])
