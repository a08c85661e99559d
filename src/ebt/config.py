"""Typed run configuration: one small dataclass per concern, and `--section.key=value` overrides.

A run is described by a `RunConfig` (model, think, train, data). Presets (`presets.py`) build
one; the CLI applies overrides; the resolved config is printed at start and saved as
`config.json` with every checkpoint, so a run directory is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ebt.errors import ConfigError


@dataclass
class ModelConfig:
    kind: str = "ebt"  # "ebt" (energy-based), "transformer" (Transformer++) or "dit" (image diffusion baseline)
    task: str = "text"  # what a candidate is and how it is scored: see ebt/tasks
    n_layers: int = 2
    dim: int = 128
    n_heads: int = 2
    ffn_dim: int = 0  # SwiGLU hidden width; 0 means equal to dim, the paper's language setting
    vocab_size: int = 0  # set from the tokenizer when the run is built
    latent_dim: int = 0  # video: width of a frame embedding (the candidate), set from the frame encoder
    context_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Images (SPEC §5; task "image"): square images of `channels` (set from the data), cut into
    # patch_size² patches; noise_level is the λ the model trains at (0.1 in the paper).
    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    noise_level: float = 0.1

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.dim


@dataclass
class ThinkConfig:
    """How the EBT thinks: energy descent y ← p − α∇_p E (SPEC §1, §3). Ignored by Transformer++."""

    steps: int = 2  # thinking steps during training (and by default at inference)
    step_size: float = 500.0  # α₀, the initial step size
    step_size_lr_mult: float = 1500.0  # α's learning rate = this × the peak learning rate
    learn_step_size: bool = True  # System 1 learns α (clamped ≥ 1e-4)
    landscape_per_step: bool = True  # System 1: a learned step embedding, one landscape per step
    detach_steps: bool = True  # each step starts from a detached candidate (S1; S2 too, see below)
    loss_every_step: bool = True  # System 1: average the loss over all steps
    # System 2 (SPEC §3), each switchable alone for the paper's ablation. The reference's "no
    # detach" needs no field: under truncate_graph only the last step's ∇E has a graph, so
    # nothing flows to θ through earlier steps either way.
    min_steps: int = 0  # draw the step count per batch uniformly in [min_steps, steps]; 0 = always `steps`
    truncate_graph: bool = False  # only the last step builds the second-order graph (and has the loss)
    randomize_step_size: bool = False  # α × U[1/2, 2] per (sequence, position), once per forward pass
    langevin_std: float = 0.0  # σ of Gaussian noise added to the candidate before each training step
    replay_buffer_size: int = 0  # sequences whose final candidates are replayed (FIFO); memory =
    # size × context_len × (candidate_dim × 4 + 16) bytes, e.g. 256 × 128 × 256 logits ≈ 34 MB; 0 = off

    @property
    def num_landscapes(self) -> int:
        return self.steps if self.landscape_per_step else 1


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2.4e-3  # peak learning rate (SPEC §3 by model size)
    warmup_fraction: float = 0.1  # linear warm-up over this share of the run, then cosine to lr/10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 200  # steps between validations (and checkpoints); 0 = only at the end
    eval_windows: int = 64  # validation windows per periodic validation (the final one too)
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...


@dataclass
class DataConfig:
    corpus: str = "shakespeare"  # a corpus name, or a path to a UTF-8 .txt file or a directory of them
    tokenizer: str = "byte"  # "byte", "bpe" (trained on the training split) or "gpt2"
    bpe_vocab_size: int = 2048
    validation_fraction: float = 0.1  # for corpora given by path (Shakespeare splits by play)
    # Video (SPEC §6; corpus "moving-mnist"): generated clips of context_len + 1 frames, and the
    # frozen frame encoder: "pca" (encoder_dim components) or "pixels" (the raw 32×32 frame).
    frame_encoder: str = "pca"
    encoder_dim: int = 64
    clips: int = 4000  # training clips; validation gets clips × validation_fraction more


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        sections = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            values = d.get(f.name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{f.name}' must be an object, got {values!r}")
            known = {g.name for g in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"unknown keys in config section '{f.name}': {sorted(unknown)}; valid: {sorted(known)}")
            sections[f.name] = section_cls(**values)
        return cls(**sections).validated()

    def override(self, key: str, raw: str) -> RunConfig:
        """Return a copy with `section.key` set from its command-line text `raw`."""
        section, _, name = key.partition(".")
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if section not in sections or not name:
            valid = sorted(f"{s}.{f.name}" for s, obj in sections.items() for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid)}")
        obj = sections[section]
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; valid keys in '{section}': "
                + ", ".join(f"{section}.{n}" for n in sorted(fields))
            )
        value = _parse(raw, type(getattr(obj, name)), key)
        sections[section] = dataclasses.replace(obj, **{name: value})
        return RunConfig(**sections).validated()

    def validated(self) -> RunConfig:
        m, t, tr, d = self.model, self.think, self.train, self.data
        checks = [
            ("model.kind", m.kind, m.kind in ("ebt", "transformer", "dit"), "'ebt', 'transformer' or 'dit'"),
            ("model.kind", m.kind, m.kind != "dit" or m.task == "image", f"'ebt' or 'transformer' for task {m.task!r} "
             "('dit' is the image baseline)"),
            ("model.n_layers", m.n_layers, m.n_layers >= 1, "≥ 1"),
            ("model.dim", m.dim, m.dim >= 1, "≥ 1"),
            ("model.n_heads", m.n_heads, m.n_heads >= 1 and m.dim % m.n_heads == 0 and (m.dim // m.n_heads) % 2 == 0,
             f"a divisor of model.dim ({m.dim}) leaving an even head width"),
            ("model.ffn_dim", m.ffn_dim, m.ffn_dim >= 0, "≥ 0 (0 = model.dim)"),
            ("model.context_len", m.context_len, m.context_len >= 1, "≥ 1"),
            ("model.patch_size", m.patch_size, m.patch_size >= 1 and m.image_size % m.patch_size == 0,
             f"≥ 1 and a divisor of model.image_size ({m.image_size})"),
            ("model.image_size", m.image_size, m.image_size >= 1, "≥ 1"),
            ("model.channels", m.channels, m.channels >= 1, "≥ 1"),
            ("model.noise_level", m.noise_level, 0 < m.noise_level <= 1, "in (0, 1] (timestep λ·1000 − 1)"),
            ("think.steps", t.steps, t.steps >= 1, "≥ 1"),
            ("think.step_size", t.step_size, t.step_size > 0, "> 0"),
            ("think.step_size_lr_mult", t.step_size_lr_mult, t.step_size_lr_mult >= 0, "≥ 0"),
            ("think.min_steps", t.min_steps, 0 <= t.min_steps <= t.steps, f"in [0, think.steps = {t.steps}]"),
            ("think.langevin_std", t.langevin_std, t.langevin_std >= 0, "≥ 0"),
            ("think.replay_buffer_size", t.replay_buffer_size, t.replay_buffer_size >= 0, "≥ 0"),
            ("think.loss_every_step", t.loss_every_step, not (t.loss_every_step and t.truncate_graph),
             "false when think.truncate_graph is true (earlier steps have no graph to learn through)"),
            ("train.steps", tr.steps, tr.steps >= 1, "≥ 1"),
            ("train.batch_size", tr.batch_size, tr.batch_size >= 1, "≥ 1"),
            ("train.lr", tr.lr, tr.lr > 0, "> 0"),
            ("train.warmup_fraction", tr.warmup_fraction, 0 <= tr.warmup_fraction < 1, "in [0, 1)"),
            ("train.weight_decay", tr.weight_decay, tr.weight_decay >= 0, "≥ 0"),
            ("train.grad_clip", tr.grad_clip, tr.grad_clip > 0, "> 0"),
            ("train.eval_every", tr.eval_every, tr.eval_every >= 0, "≥ 0"),
            ("train.eval_windows", tr.eval_windows, tr.eval_windows >= 1, "≥ 1"),
            ("train.log_every", tr.log_every, tr.log_every >= 1, "≥ 1"),
            ("data.tokenizer", d.tokenizer, d.tokenizer in ("byte", "bpe", "gpt2"), "'byte', 'bpe' or 'gpt2'"),
            ("data.bpe_vocab_size", d.bpe_vocab_size, d.bpe_vocab_size >= 260, "≥ 260"),
            ("data.validation_fraction", d.validation_fraction, 0 < d.validation_fraction <= 0.5, "in (0, 0.5]"),
            ("data.frame_encoder", d.frame_encoder, d.frame_encoder in ("pca", "pixels"), "'pca' or 'pixels'"),
            ("data.encoder_dim", d.encoder_dim, d.encoder_dim >= 1, "≥ 1"),
            ("data.clips", d.clips, d.clips >= 10, "≥ 10"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} = {value!r} is not allowed; it must be {allowed}")
        return self


def _parse(raw: str, kind: type, key: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            f = float(raw)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key} = {raw!r} is not a valid {kind.__name__}") from None
