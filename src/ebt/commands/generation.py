"""`ebt generate`: continue a prompt (text runs, `ebt.generate.generate`) or a validation clip
(video runs, `ebt.generate.rollout`), the clip written as a PNG strip and a GIF.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ebt.checks import check_int, check_real
from ebt.commands.common import (MAX_COUNT, MAX_SEED, check_inference, compile_field, device_field, option, pick,
                                 precision_field, required, run_precision, seed_field)
from ebt.data.video import write_gif, write_strip
from ebt.errors import ConfigError
from ebt.files import atomic_write
from ebt.generate import generate, rollout
from ebt.models import compiled_inference
from ebt.rundata.video import clips
from ebt.runs import load_run
from ebt.options import ThinkingOptions


@dataclass
class GenerateArgs:
    """`ebt generate`: continue a prompt (text runs) or a validation clip (video runs)."""

    run: Path = required("the run to generate with", positional=True)
    prompt: str | None = option(None, "text runs: the text to continue")
    max_new_tokens: int = option(200, "text runs: tokens to generate")
    temperature: float = option(1.0, "text runs: sampling temperature, 0 = greedy")
    cache: bool = option(True, "reuse the keys and values of earlier tokens; --no-cache recomputes the whole window "
                               "for every token")
    frames: int = option(4, "video runs: conditioning frames of a validation clip")
    length: int | None = option(None, "video runs: frames to predict (default: to the clip's end)")
    clip: int = option(0, "video runs: which validation clip")
    out: Path | None = option(None, "video runs: PNG strip path (a GIF is written beside it; default "
                                    "RUN/generated.png)")
    options: ThinkingOptions = field(default_factory=ThinkingOptions)
    seed: int = seed_field()
    device: str = device_field()
    precision: str | None = precision_field()  # None: the run's train.precision
    compile: bool = compile_field()

    def __post_init__(self) -> None:
        ThinkingOptions.of(self.options)  # a ThinkingOptions, not a dict of its fields
        check_inference(self.device, self.precision, self.compile)
        check_int("max_new_tokens", self.max_new_tokens, 0, 1_000_000)
        check_real("temperature", self.temperature, 0.0, note=" (0 = greedy)")
        check_int("frames", self.frames, 1, MAX_COUNT)
        check_int("length", self.length, 1, 100_000, optional=True)
        check_int("clip", self.clip, 0, MAX_COUNT)
        check_int("seed", self.seed, 0, MAX_SEED)


def generate_command(args: GenerateArgs) -> int:
    device = pick(args.device)
    run = load_run(args.run, device)
    task = run.config.model.task
    if task == "image":
        raise ConfigError(f"{run.path} is an image run: it denoises rather than generates; use "
                          f"`{shlex.join(['ebt', 'denoise', str(run.path)])}`")
    precision = run_precision(args.precision, run, device)
    with compiled_inference(run.model, args.compile):
        print((_continue_text if task == "text" else _continue_clip)(args, run, device, precision))
    return 0


def _continue_text(args: GenerateArgs, run, device, precision: str) -> str:
    if args.prompt is None:
        raise ConfigError("text runs continue a prompt: give prompt (the text to continue)", field="prompt")
    for name in ("length", "out"):  # video runs' settings would be silently ignored here
        if (value := getattr(args, name)) is not None:
            shown = str(value) if isinstance(value, Path) else value
            raise ConfigError(f"{name} = {shown!r} is for video runs; {run.path} is a text run that "
                              "continues a prompt: leave it out", field=name)
    prompt = run.tokenizer.encode(args.prompt)
    ids = generate(run.model, prompt, args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                   device=device, cache=args.cache, options=args.options, precision=precision)
    # Decoded from ids, prompt included: a prompt of raw bytes (not UTF-8) prints as U+FFFD.
    return run.tokenizer.decode(prompt + ids)


def _continue_clip(args: GenerateArgs, run, device, precision: str) -> str:
    """A rollout from K frames of a validation clip, written as PNG strip (truth above, prediction
    below) and GIF (side by side); returns what it wrote and the error per predicted frame."""
    if args.prompt is not None:
        raise ConfigError("a video run continues clips, not prompts: leave prompt out; give frames K and length N",
                          field="prompt")
    frames, _ = clips(run.config, "validation")
    count, k = frames.shape[1], args.frames
    length = count - k if args.length is None else args.length
    if not 1 <= k <= count or length < 1:
        raise ConfigError(f"frames = {k} is not allowed with length = {length}; frames must be in [1, {count}] "
                          "(the clip's length) and length ≥ 1", field="frames")
    if not 0 <= args.clip < len(frames):
        raise ConfigError(f"clip = {args.clip} is not allowed; the run has {len(frames)} validation clips "
                          f"(0 … {len(frames) - 1})", field="clip")
    encoder = run.frame_encoder
    truth = torch.from_numpy(frames[args.clip]).float() / 255  # (T, H, W)
    latents = encoder.encode(truth).to(device)  # (T, C)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    predicted = rollout(run.model, latents[None, :k], length, args.options, generator=generator,
                        precision=precision)[0]  # (N, C)
    decoded = encoder.decode(predicted.cpu()).clamp(0, 1).numpy()  # (N, H, W)
    out = _write_clip(truth.numpy(), decoded, k, args.out if args.out is not None else run.path / "generated.png")
    known = min(length, count - k)
    errors = ((predicted[:known].cpu() - latents[k:k + known].cpu()) ** 2).mean(-1).tolist()
    per_frame = ", ".join(f"{e:.3f}" for e in errors)
    return (f"{length} frames predicted from {k} of validation clip {args.clip}: {out.with_suffix('.png')} "
            f"(top: truth, bottom: context then prediction), {out.with_suffix('.gif')}\n"
            f"latent mse per predicted frame vs truth: {per_frame or '(past the clip)'}")


def _write_clip(truth: np.ndarray, predicted: np.ndarray, k: int, out: Path) -> Path:
    """The PNG strip (truth above; the K context frames, then the prediction, below) and the GIF
    (the two side by side) of a rollout; `truth` (T, H, W) and `predicted` (N, H, W) in [0, 1]."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"out = {str(out)!r} is a directory; give the PNG path to write (a GIF is written beside "
                          "it)", field="out")
    shown = np.concatenate((truth[:k], predicted))  # (K+N, H, W): context, then prediction
    true_row = np.zeros_like(shown)
    true_row[:min(len(truth), len(shown))] = truth[:len(shown)]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".png"), lambda p: write_strip(np.stack((true_row, shown)), p))
    atomic_write(out.with_suffix(".gif"), lambda p: write_gif(np.concatenate((true_row, shown), axis=-1), p))
    return out
