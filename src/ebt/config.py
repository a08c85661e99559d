"""Typed run configuration: one small dataclass per concern, and `--section.key=value` overrides.

A run is described by a `RunConfig`: model, think, train, data, and the section of its task
(text, image or video; no section mixes modalities). Presets (`presets.py`) build one; the CLI
applies overrides; the resolved config is printed at start and saved as `config.json` with every
checkpoint, so a run directory is self-describing. Older config files are migrated on load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from ebt.checks import check, check_choice, check_int, check_real, check_type, json_type, parse_value
from ebt.config_versions import CONFIG_VERSION, MOVED_KEYS, migrate
from ebt.errors import ConfigError
from ebt.options import InnerOptimizer, adopt


LR_SCHEDULES = ("cosine", "constant", "wsd")  # train.lr_schedule
LAYOUTS = ("packed", "padded")  # data.layout of text windows (ebt.data.tokens)
PARALLEL = ("ddp", "fsdp")  # train.parallel
LOG_TO = ("none", "tensorboard", "wandb")  # train.log_to (ebt.trackers)
MAX_INT = 10**9  # far past any useful size or count: a larger integer (--model.dim=1e30) is a typo
# train.lr, and its products with think.step_size_lr_mult (α's rate) and train.weight_decay: AdamW
# scales a rate by up to 10 and applies it to float32 weights (range 3.4e38; past it the step crashed).
MAX_LR = 1e30
MAX_BPE_VOCAB = 2**20  # past any published BPE (256k); 2^32 aborted the tokenizer trainer's allocation


@dataclass
class ModelConfig:
    """The network, whatever the modality (SPEC §2, §3)."""

    kind: str = "ebt"  # "ebt" (energy-based), "transformer" (Transformer++) or "dit" (image diffusion baseline)
    task: str = "text"  # what a candidate is: "text", "image" or "video"; its own section holds its settings
    n_layers: int = 2
    dim: int = 128
    n_heads: int = 2
    ffn_dim: int = 0  # SwiGLU hidden width; 0 means equal to dim, the paper's language setting
    context_len: int = 256  # tokens (text) or frames (video) a prediction sees
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # How an EBT's energy head starts (text and video; the image EBT's always starts at zero):
    # "xavier" as every other linear (SPEC §2), or "zero": E is constant at initialization, so the
    # first thinking step returns its start unchanged (text: the paper's update gives the uniform
    # guess, ln V nats; mirror descent keeps the random logits) at any width and vocabulary, and
    # α·(head weights) grows from zero at the rate α sets (docs/results.md, "Where thinking starts").
    energy_head_init: str = "xavier"

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.dim


@dataclass
@adopt(InnerOptimizer)
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
    start_std: float = 1.0  # σ of the start candidates (text logits, video latents); 0 = zero (text: uniform)
    # Terms that make the energy a verifier (`ebt.objectives`; weights 0 = off): a listwise ranking
    # loss on the energies of the candidates the descent visits, by their loss (first-order in θ);
    ranking_weight: float = 0.0
    ranking_temperature: float = 0.1  # τ of its target softmax(−loss/τ), nats
    ranking_samples: int = 1  # descents whose candidates it ranks (M − 1 more from fresh starts, first-order)
    monotone_weight: float = 0.0  # a penalty max(0, loss_k − loss_{k−1}) per position on each step
    # Then the inner optimizer's knobs (think.momentum, …), with which thinking trains and by default
    # thinks: declared once, default, range and meaning, in `ebt.options.InnerOptimizer`; `adopt` adds them.

    @property
    def num_landscapes(self) -> int:
        return self.steps if self.landscape_per_step else 1


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences (text), images or clips per optimizer step, over all processes
    lr: float = 2.4e-3  # peak learning rate (SPEC §3 by model size)
    warmup_fraction: float = 0.1  # linear warm-up over this share of the run
    # After warm-up: "cosine" to lr/10 at the last step; "constant" at lr; "wsd" (warm-up–stable–
    # decay) at lr, then linearly to lr/10 over the last decay_fraction of the run.
    lr_schedule: str = "cosine"
    decay_fraction: float = 0.2  # wsd only
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 200  # steps between validations (and checkpoints); 0 = only at the end
    # "linear": every eval_every steps; "log": at eval_every · √2^i (i = 0, 1, …: two per doubling
    # of the steps, e.g. 120, 170, 240, 339, 480, …), the checkpoints of a data-scaling curve.
    eval_spacing: str = "linear"
    keep_checkpoints: bool = False  # also keep the weights of every validation in checkpoints/step-N.safetensors
    eval_examples: int = 64  # validation examples per validation: windows (text), images or clips
    log_every: int = 10
    # Where the rows of metrics.jsonl also go: "none", "tensorboard" (event files in RUN_DIR/tensorboard/)
    # or "wandb" (Weights & Biases; WANDB_MODE and WANDB_PROJECT from the environment). ebt.trackers.
    log_to: str = "none"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    # A run directory whose weights (and tokenizer or frame encoder) a new run starts from instead of
    # random ones: fine-tuning (`ebt finetune`). Its model section must equal this run's. "" = none.
    init: str = ""
    # "fp32"; "bf16": autocast to bfloat16, fp32 master weights (CPU and CUDA); "fp16": autocast to
    # float16 with loss scaling (CUDA only). Thinking's ∇E, the candidate softmax and the loss stay fp32.
    precision: str = "fp32"
    # Micro-batches per optimizer step: batch_size (the global batch) is split over processes, then
    # into grad_accum micro-batches each; gradients are synchronized on the last only.
    grad_accum: int = 1
    # Recompute activations in the backward pass instead of keeping them: every block's, and an EBT's
    # whole thinking steps (ebt.models.set_activation_checkpointing; `ebt bench` measures the memory).
    activation_checkpointing: bool = False
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated weights) or "fsdp" (FSDP2, sharded)
    checkpoint_format: str = "full"  # "full" (gathered, written by the main process) or "sharded" (ebt.sharded)
    async_checkpoint: bool = False  # sharded only: write checkpoints in the background while training goes on


@dataclass
class DataConfig:
    # a corpus name, or a path (text: a .txt, .jsonl[.gz|.zst] or .parquet file, a directory of them or one
    # made by `ebt prepare-data`; images: a folder)
    corpus: str = "shakespeare"
    validation_fraction: float = 0.1  # for corpora given by path (Shakespeare splits by play)
    layout: str = "packed"  # text: "packed" windows anywhere, or "padded": one document per example,
    #                         truncated to context_len + 1 tokens and padded (the paper's; ebt.data.tokens)
    text_field: str = "text"  # the field (JSON lines) or column (parquet) of a text corpus holding its documents


@dataclass
class TextConfig:
    """Text runs (task "text", SPEC §2): the tokenizer and its vocabulary."""

    tokenizer: str = "byte"  # "byte", "bpe" (trained on the training split) or "gpt2"
    bpe_vocab_size: int = 2048
    vocab_size: int = 0  # set from the tokenizer when the run is built


@dataclass
class ImageConfig:
    """Image runs (task "image", SPEC §5): square images of `channels` (set from the data), cut
    into patch_size² patches; noise_level is the λ the models train at (0.1 in the paper)."""

    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    noise_level: float = 0.1


@dataclass
class VideoConfig:
    """Video runs (task "video", SPEC §6): generated clips of context_len + 1 frames and the frozen
    frame encoder, "pca" (encoder_dim components) or "pixels" (the raw 32×32 frame)."""

    frame_encoder: str = "pca"
    encoder_dim: int = 64
    clips: int = 4000  # training clips; validation gets clips × validation_fraction more
    latent_dim: int = 0  # width of a frame embedding (the candidate), set from the frame encoder


# model.task → the section holding that modality's settings; a run has only its own.
TASK_SECTIONS = {"text": TextConfig, "image": ImageConfig, "video": VideoConfig}
SECTIONS = ("model", "think", "train", "data", *TASK_SECTIONS)



def refuse_repeated(pairs: Iterable[tuple[str, str]]) -> None:
    """ConfigError naming the first key of `(key, text)` pairs given twice with different values."""
    seen: dict[str, str] = {}
    for key, raw in pairs:
        if key in seen and seen[key] != raw:
            raise ConfigError(f"{key} is given twice, {seen[key]!r} then {raw!r}; give it once", field=key)
        seen[key] = raw


@dataclass
class RunConfig:
    """Everything that defines a run: the network, thinking, training, the data, and the section
    of its task (`text`, `image` or `video`; the others are None)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig | None = None
    image: ImageConfig | None = None
    video: VideoConfig | None = None

    def __post_init__(self) -> None:
        if self.model.task in TASK_SECTIONS and getattr(self, self.model.task) is None:
            setattr(self, self.model.task, TASK_SECTIONS[self.model.task]())

    @property
    def modality(self) -> TextConfig | ImageConfig | VideoConfig:
        """The settings of the run's task: `config.text`, `config.image` or `config.video`."""
        return getattr(self, self.model.task)

    def to_dict(self) -> dict[str, Any]:
        d = {"version": CONFIG_VERSION}
        d.update({s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS if getattr(self, s) is not None})
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """A config from its JSON form (any version: older files are migrated), validated."""
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be an object with sections {', '.join(SECTIONS)}; "
                              f"this one is {json_type(d)}")
        d = migrate(d, TASK_SECTIONS, TrainConfig.batch_size)
        sections = {}
        for name in SECTIONS:
            section_cls = TASK_SECTIONS.get(name) or type(getattr(cls(), name))
            values = d.get(name)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' must be an object; it is {json_type(values)}: {values!r}")
            known = {g.name: g for g in dataclasses.fields(section_cls)}
            unknown = set(values) - set(known)
            if unknown:
                raise ConfigError(f"unknown keys in config section '{name}': {sorted(unknown)}; valid: {sorted(known)}")
            defaults = section_cls()
            typed = {key: check_type(f"{name}.{key}", value, type(getattr(defaults, key))) for key, value in values.items()}
            sections[name] = section_cls(**typed)
        unknown = set(d) - set(SECTIONS) - {"version"}
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
        return cls(**sections).validated()

    def override(self, key: str, raw: str, validate: bool = True) -> RunConfig:
        """Return a copy with `section.key` set from its command-line text `raw` (the value is
        parsed and type-checked here; `validate=False` leaves the checks across fields to a
        later `validated()`, as `with_overrides` does)."""
        if key in MOVED_KEYS:
            raise ConfigError(f"config key '{key}' is now '{MOVED_KEYS[key]}'; write --{MOVED_KEYS[key]}=VALUE")
        section, _, name = key.partition(".")
        valid_sections = ("model", "think", "train", "data", self.model.task)
        if section in TASK_SECTIONS and section not in valid_sections:
            raise ConfigError(f"config key '{key}' is for {section} runs; this is a {self.model.task} run")
        sections = {s: getattr(self, s) for s in SECTIONS}
        if section not in valid_sections or not name:
            valid = sorted(f"{s}.{f.name}" for s in valid_sections for f in dataclasses.fields(sections[s]))
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid)}")
        obj = sections[section]
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; valid keys in '{section}': "
                + ", ".join(f"{section}.{n}" for n in sorted(fields))
            )
        value = parse_value(raw, type(getattr(obj, name)), key)
        sections[section] = dataclasses.replace(obj, **{name: value})
        if section == "model" and name == "task" and value != self.model.task:
            # Another task: its own section, at its defaults; the old task's section goes.
            sections[self.model.task] = None
            sections[value] = None
        config = RunConfig(**sections)
        return config.validated() if validate else config

    def with_overrides(self, pairs: list[tuple[str, str]]) -> RunConfig:
        """A copy with every `(section.key, text)` pair applied in order, then checked once: a
        field that depends on another (train.eval_every with train.eval_spacing) may be given
        before or after it. A key given twice with two values is a ConfigError (`refuse_repeated`)."""
        refuse_repeated(pairs)
        config = self
        for key, raw in pairs:
            config = config.override(key, raw, validate=False)
        return config.validated()

    def validated(self) -> RunConfig:
        """This config, after checking every field; a ConfigError names the first bad one (its
        `field` the key, "think.step_size")."""
        for section in SECTIONS:
            values = getattr(self, section)
            for f in dataclasses.fields(values) if values is not None else ():
                key, value = f"{section}.{f.name}", getattr(values, f.name)
                check(key, value, type(value) is not int or key == "train.seed" or value <= MAX_INT,
                      f"at most {MAX_INT:,}")
        _check_model(self.model)
        _check_think(self.think)
        _check_train(self.train)
        check("think.step_size_lr_mult", self.think.step_size_lr_mult, self.model.kind != "ebt"
              or not self.think.learn_step_size or self.train.lr * self.think.step_size_lr_mult <= MAX_LR,
              f"at most {MAX_LR:g} / train.lr = {MAX_LR / self.train.lr:.4g} (α's learning rate, train.lr × "
              "think.step_size_lr_mult, must be one AdamW can apply)")
        _check_data(self.data, self.model.task)
        for name in TASK_SECTIONS:
            present = getattr(self, name) is not None
            check(name, "set", present == (name == self.model.task), f"the section of {self.model.task} runs only")
        TASK_CHECKS[self.model.task](self.modality)
        return self


def _check_model(m: ModelConfig) -> None:
    check_choice("model.task", m.task, TASK_SECTIONS)
    check_choice("model.kind", m.kind, ("ebt", "transformer", "dit"))
    check("model.kind", m.kind, m.kind != "dit" or m.task == "image",
          f"'ebt' or 'transformer' for task {m.task!r} ('dit' is the image baseline)")
    check("model.kind", m.kind, m.kind != "transformer" or m.task != "image", "'ebt' or 'dit' for image runs")
    check_int("model.n_layers", m.n_layers, 1)
    check_int("model.dim", m.dim, 1)
    check_int("model.n_heads", m.n_heads, 1)
    check("model.n_heads", m.n_heads, m.dim % m.n_heads == 0 and (m.dim // m.n_heads) % 2 == 0,
          f"a divisor of model.dim ({m.dim}) leaving an even head width")
    check_int("model.ffn_dim", m.ffn_dim, 0, note=" (0 = model.dim)")
    check_int("model.context_len", m.context_len, 1)
    check_real("model.rope_theta", m.rope_theta, 0, low_open=True)
    check_real("model.norm_eps", m.norm_eps, 0, low_open=True)
    check_choice("model.energy_head_init", m.energy_head_init, ("xavier", "zero"))


def _check_think(t: ThinkConfig) -> None:
    check_int("think.steps", t.steps, 1)
    # α is a float32 parameter: past float32's range it would be inf.
    check_real("think.step_size", t.step_size, 0, 3.4e38, low_open=True, high_open=True,
               note=" (within float32's range)")
    check_real("think.step_size_lr_mult", t.step_size_lr_mult, 0)
    check_int("think.min_steps", t.min_steps, 0, t.steps, note=" (at most think.steps)")
    check_real("think.langevin_std", t.langevin_std, 0)
    check_int("think.replay_buffer_size", t.replay_buffer_size, 0)
    # Bounds far past anything useful, so that a typo is refused before it overflows a step.
    check_real("think.start_std", t.start_std, 0, 1e3)
    check_real("think.ranking_weight", t.ranking_weight, 0, 1e3)
    check_real("think.ranking_temperature", t.ranking_temperature, 1e-6, 1e6)
    check_real("think.monotone_weight", t.monotone_weight, 0, 1e3)
    check_int("think.ranking_samples", t.ranking_samples, 1, 64)
    check("think.ranking_samples", t.ranking_samples, t.ranking_samples == 1 or t.ranking_weight > 0,
          "1 when think.ranking_weight is 0 (its extra descents feed only the ranking loss)")
    check("think.ranking_samples", t.ranking_samples,
          t.ranking_samples == 1 or t.start_std > 0 or t.langevin_std > 0,
          "1 when think.start_std and think.langevin_std are 0 (every start would be the same)")
    InnerOptimizer.check(t, "think", config=True)
    check("think.loss_every_step", t.loss_every_step, not (t.loss_every_step and t.truncate_graph),
          "false when think.truncate_graph is true (earlier steps have no graph to learn through)")


def _check_train(tr: TrainConfig) -> None:
    check_int("train.steps", tr.steps, 1)
    check_int("train.batch_size", tr.batch_size, 1)
    check_real("train.lr", tr.lr, 0, MAX_LR, low_open=True)
    check_real("train.warmup_fraction", tr.warmup_fraction, 0, 1, high_open=True)
    check_choice("train.lr_schedule", tr.lr_schedule, LR_SCHEDULES)
    check_real("train.decay_fraction", tr.decay_fraction, 0, 1, low_open=True, high_open=True)
    check("train.decay_fraction", tr.decay_fraction, tr.lr_schedule != "wsd" or tr.warmup_fraction + tr.decay_fraction <= 1,
          f"at most 1 − train.warmup_fraction = {1 - tr.warmup_fraction:g} with train.lr_schedule = 'wsd' "
          "(warm-up and decay must fit in the run)")
    check_real("train.weight_decay", tr.weight_decay, 0)
    check("train.weight_decay", tr.weight_decay, tr.lr * tr.weight_decay <= MAX_LR,
          f"at most {MAX_LR:g} / train.lr = {MAX_LR / tr.lr:.4g} (AdamW multiplies the weights by 1 − train.lr × "
          "train.weight_decay each step)")
    check_real("train.grad_clip", tr.grad_clip, 0, low_open=True)
    check_int("train.eval_every", tr.eval_every, 0)
    check_choice("train.eval_spacing", tr.eval_spacing, ("linear", "log"))
    check("train.eval_every", tr.eval_every, tr.eval_spacing != "log" or tr.eval_every >= 1,
          "≥ 1 with train.eval_spacing = 'log' (the first validation step)")
    check_int("train.eval_examples", tr.eval_examples, 1)
    check_int("train.log_every", tr.log_every, 1)
    check_choice("train.log_to", tr.log_to, LOG_TO)
    check_int("train.seed", tr.seed, 0, 2**63 - 1)
    check_choice("train.precision", tr.precision, ("fp32", "bf16", "fp16"))
    check_int("train.grad_accum", tr.grad_accum, 1)
    check("train.grad_accum", tr.grad_accum, tr.batch_size % tr.grad_accum == 0,
          f"a divisor of train.batch_size ({tr.batch_size}): each micro-batch holds batch_size / grad_accum "
          "sequences (over the processes)")
    check_choice("train.parallel", tr.parallel, PARALLEL)
    check_choice("train.checkpoint_format", tr.checkpoint_format, ("full", "sharded"))
    check("train.async_checkpoint", tr.async_checkpoint, not tr.async_checkpoint or tr.checkpoint_format == "sharded",
          "false with train.checkpoint_format = 'full' (only sharded checkpoints are written in the background: "
          "set train.checkpoint_format = 'sharded' with it)")


def _check_data(d: DataConfig, task: str) -> None:
    check("data.corpus", d.corpus, bool(d.corpus), "a corpus name or a path")
    check_real("data.validation_fraction", d.validation_fraction, 0, 0.5, low_open=True)
    check_choice("data.layout", d.layout, LAYOUTS)
    check("data.text_field", d.text_field, bool(d.text_field), "a field or column name")
    check("data.layout", d.layout, d.layout == "packed" or task == "text", "'packed' for image and video runs")


def _check_text(x: TextConfig) -> None:
    check_choice("text.tokenizer", x.tokenizer, ("byte", "bpe", "gpt2"))
    check_int("text.bpe_vocab_size", x.bpe_vocab_size, 260, MAX_BPE_VOCAB)
    check_int("text.vocab_size", x.vocab_size, 0, note=" (0 = from the tokenizer)")


def _check_image(x: ImageConfig) -> None:
    check_int("image.image_size", x.image_size, 1)
    check_int("image.patch_size", x.patch_size, 1)
    check("image.patch_size", x.patch_size, x.image_size % x.patch_size == 0,
          f"a divisor of image.image_size ({x.image_size})")
    check_int("image.channels", x.channels, 1)
    check_real("image.noise_level", x.noise_level, 0.001, 1, note=" (timestep λ·1000 − 1 of the 1000-step schedule)")


def _check_video(x: VideoConfig) -> None:
    check_choice("video.frame_encoder", x.frame_encoder, ("pca", "pixels"))
    check_int("video.encoder_dim", x.encoder_dim, 1)
    check_int("video.clips", x.clips, 10)
    check_int("video.latent_dim", x.latent_dim, 0, note=" (0 = from the frame encoder)")


TASK_CHECKS = {"text": _check_text, "image": _check_image, "video": _check_video}
