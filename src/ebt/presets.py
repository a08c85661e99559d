"""Named run configurations: the tiny presets for CPUs and the paper's model sizes (SPEC §3).

`text-{ebt,transformer}-{size}` (EBTs with the System 1 recipe), `text-ebt-s2paper-{size}` (the
paper's System 2 recipe, SPEC §3) and `text-ebt-s2-{size}` (ours: System 2 without Langevin
noise, with Nesterov momentum in thinking); `image-{ebt,dit}-tiny` (image denoising, SPEC §5);
`video-{ebt,transformer}-tiny` (next-frame prediction, SPEC §6). The paper's presets keep
its context (256) and peak learning rates; batch sizes are ours (the paper's are GPU-sized).
"""

from __future__ import annotations

from typing import Callable

from ebt.config import DataConfig, ImageConfig, ModelConfig, RunConfig, TextConfig, ThinkConfig, TrainConfig, VideoConfig
from ebt.errors import ConfigError

# name: (layers, width, heads, peak lr), SPEC §3
PAPER_SIZES = {
    "4xs": (2, 128, 2, 2.4e-3),
    "3xs": (4, 256, 4, 1.8e-3),
    "xxs": (6, 384, 6, 1.2e-3),
    "xs": (12, 384, 6, 9e-4),
    "small": (12, 768, 12, 6e-4),
    "medium": (24, 1024, 16, 3e-4),
    "large": (24, 1536, 16, 2.5e-4),
    "xl": (24, 2048, 32, 2e-4),
}

# α₀ of System 1 for byte-level text, found by the sweep in docs/results.md (with a Xavier energy
# head; the paper's α₀ = 500 was tuned for V ≈ 50k and overshoots at first, SPEC §9). It needs no
# rescaling for another width or vocabulary: at initialization ∇_p E has about the same size at
# widths 32–256 and vocabularies 256–8192 (measured, docs/results.md "Where thinking starts"), and
# with the presets' zero energy head the first step is the uniform guess whatever α₀ is; α₀ then
# sets how fast the step α·∇E grows from zero.
BYTE_STEP_SIZE = 80.0


def _text(kind: str, layers: int, dim: int, heads: int, lr: float, context: int, batch: int) -> RunConfig:
    return RunConfig(
        # The energy head starts at zero: the first thinking step is the uniform guess at any width
        # and vocabulary (ModelConfig.energy_head_init; docs/results.md, "Where thinking starts").
        model=ModelConfig(kind=kind, task="text", n_layers=layers, dim=dim, n_heads=heads, context_len=context,
                          energy_head_init="zero" if kind == "ebt" else "xavier"),
        # System 1 (SPEC §3); the multiplier follows the rule of thumb ≈ 3 × α₀.
        think=ThinkConfig(steps=2, step_size=BYTE_STEP_SIZE, step_size_lr_mult=3 * BYTE_STEP_SIZE),
        train=TrainConfig(lr=lr, batch_size=batch),
        data=DataConfig(corpus="shakespeare"),
        text=TextConfig(tokenizer="byte"),
    )


# System 2 for the byte vocabulary: α fixed. The paper's 5 (V ≈ 50k) scaled like α₀ above gives ≈ 1;
# the sweep in docs/results.md (0.3, 1, 3) found 0.3 the only value where thinking longer and
# best-of-M helped at all. σ = 3 on the logits, as in the paper.
BYTE_S2_STEP_SIZE = 0.3
BYTE_S2_LANGEVIN_STD = 3.0


def _system2_paper(config: RunConfig) -> RunConfig:
    """The paper's System 2 recipe (SPEC §3), α scaled to the byte vocabulary: `text-ebt-s2paper-*`."""
    config.think = ThinkConfig(
        steps=3, min_steps=2,  # steps drawn from {2, 3} per batch; evaluation at 3
        step_size=BYTE_S2_STEP_SIZE, learn_step_size=False, randomize_step_size=True,
        landscape_per_step=False, loss_every_step=False, truncate_graph=True,
        langevin_std=BYTE_S2_LANGEVIN_STD, replay_buffer_size=256,
    )
    return config


# Our System 2 recipe, `text-ebt-s2-*`: the paper's without Langevin noise and with Nesterov momentum
# μ = 0.5 in thinking. The recipe study (docs/results.md, "Which System 2 recipe thinks best") found
# it the byte-level recipe with the largest thinking gains at an unchanged 2-pass perplexity (with a
# BPE vocabulary of 2,048 the paper's recipe did better; α and μ were not tuned for it).
S2_MOMENTUM = 0.5


def _system2(config: RunConfig) -> RunConfig:
    config = _system2_paper(config)
    config.think.langevin_std = 0.0
    config.think.momentum, config.think.nesterov = S2_MOMENTUM, True
    return config


PRESETS: dict[str, Callable[[], RunConfig]] = {}
for _kind in ("ebt", "transformer"):
    # Same backbone for both kinds: a few hundred steps take a couple of minutes on 2 CPU cores.
    PRESETS[f"text-{_kind}-tiny"] = lambda k=_kind: _text(k, 2, 128, 4, 2.4e-3, context=128, batch=16)
    for _size, (_l, _d, _h, _lr) in PAPER_SIZES.items():
        PRESETS[f"text-{_kind}-{_size}"] = lambda k=_kind, l=_l, d=_d, h=_h, lr=_lr: _text(k, l, d, h, lr, 256, 32)
for _size in ("tiny", *PAPER_SIZES):
    PRESETS[f"text-ebt-s2paper-{_size}"] = lambda size=_size: _system2_paper(PRESETS[f"text-ebt-{size}"]())
    PRESETS[f"text-ebt-s2-{_size}"] = lambda size=_size: _system2(PRESETS[f"text-ebt-{size}"]())


# Images (SPEC §5): the paper's α₀ = 3000 (multiplier 9000) is for 128×128 COCO. On 28×28
# Fashion-MNIST a 300-step sweep (benchmarks/image_alpha_sweep.sh, docs/results.md) found α₀ = 100,
# 300 and 1000 equally good (22.6 dB) and 3000 no better; α is learned, so 300 sits mid-plateau.
IMAGE_STEP_SIZE = 300.0


def _image(kind: str) -> RunConfig:
    """Fashion-MNIST denoising at λ = 0.1: the EBT (S1, one training step as in the reference) or
    the DiT baseline on the same backbone (4 layers, width 96, patches 4×4), equal parameters up
    to their heads (a 1-output energy head vs a p²C-output noise head)."""
    return RunConfig(
        model=ModelConfig(kind=kind, task="image", n_layers=4, dim=96, n_heads=4),
        think=ThinkConfig(steps=1, step_size=IMAGE_STEP_SIZE, step_size_lr_mult=3 * IMAGE_STEP_SIZE),
        train=TrainConfig(lr=1e-3, batch_size=64, steps=1200, eval_every=0, eval_examples=256),
        data=DataConfig(corpus="fashion-mnist"),
        image=ImageConfig(image_size=28, channels=1, patch_size=4, noise_level=0.1),
    )


PRESETS["image-ebt-tiny"] = lambda: _image("ebt")
PRESETS["image-dit-tiny"] = lambda: _image("dit")


# Video (SPEC §6): the paper's α₀ = 30000 (multiplier 90000) is for 3136-d SD-VAE latents. On our
# 64-d PCA latents it overshoots by three orders of magnitude (first training loss ≈ 540 against
# 0.67 for a random N(0, I) guess); the sweep in docs/results.md (30, 300, 30000) chose 30.
VIDEO_STEP_SIZE = 30.0


def _video(kind: str) -> RunConfig:
    """Moving-MNIST next-frame prediction on 16-frame clips (15 predicted frames), PCA latents:
    the EBT (System 1) or the Transformer++ on the same backbone, equal parameters up to the
    EBT's two landscape vectors, energy head and α."""
    return RunConfig(
        model=ModelConfig(kind=kind, task="video", n_layers=2, dim=128, n_heads=4, context_len=15),
        think=ThinkConfig(steps=2, step_size=VIDEO_STEP_SIZE, step_size_lr_mult=3 * VIDEO_STEP_SIZE),
        train=TrainConfig(lr=2.4e-3, batch_size=32, steps=1200, eval_every=0, eval_examples=256),
        data=DataConfig(corpus="moving-mnist"),
        video=VideoConfig(frame_encoder="pca", encoder_dim=64, clips=4000),
    )


PRESETS["video-ebt-tiny"] = lambda: _video("ebt")
PRESETS["video-transformer-tiny"] = lambda: _video("transformer")


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()
