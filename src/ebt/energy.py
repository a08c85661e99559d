"""The autoregressive Energy-Based Transformer (SPEC §2): E_θ(x, y) for every position at once.

Layout for a window of S context tokens, thinking step k:

    context stream    [landscape_k, ctx_1 … ctx_S]   positions 0, 1 … S    causal attention
    candidate stream  [cand_1 … cand_S]              positions 2 … S+1

cand_t predicts the element (token or frame) after ctx_t. It attends to landscape_k, ctx_1 … ctx_t
and itself; never to ctx_{t+1} (its target) nor to other candidates, so each position's energy
depends on its own candidate only and `E.sum()` gives every position its own gradient in one
backward pass. The
context never sees candidates, so its keys/values (`Context`) are computed once per landscape and
shared by all thinking steps and samples; generation extends them token by token (a KV cache).

The landscape token is a learned embedding of the step index: System 1 models learn one energy
landscape per training step; thinking past them reuses the last. System 2 models have one.

Legend: B batch, M samples per position, S candidates, L context keys (landscape token
included), D width, C candidate width (text: V; video: the frame latent). Context x is token ids
(B, S) or frame latents (B, S, C); the task's `input_embedding` takes either to width D.

Read next: `think.py` (the descent), `objectives.py` (the training recipes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ebt.best_of import think_best_of
from ebt.compiled import compiled, contiguous
from ebt.config import ModelConfig, ThinkConfig
from ebt.decoding import Decoder
from ebt.errors import ConfigError
from ebt.nn import Block, PatchTransformer, RMSNorm, Rotary, check_context, check_token_ids, init_weights
from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.tasks.image import Denoising
from ebt.tasks.text import NextToken
from ebt.tasks.video import NextFrame
from ebt.think import Checkpointed, FirstOrder, Thought, first_order

MIN_STEP_SIZE = 1e-4  # α is clamped here (SPEC §3)


def inner_optimizer(think_config: ThinkConfig) -> InnerOptimizer:
    """The inner optimizer the config trains (and by default thinks) with (`ebt.options.InnerOptimizer`)."""
    return InnerOptimizer.of(think_config)


def step_size_parameter(think_config: ThinkConfig) -> nn.Parameter:
    """α, a 1-element vector (1,) (FSDP2 shards no 0-dim parameter): learned by System 1 in its own
    optimizer group, fixed otherwise. Weights saved when α was 0-dim are read in this shape
    (`ebt.checkpoint.migrate_weights`)."""
    return nn.Parameter(torch.tensor([float(think_config.step_size)]), requires_grad=think_config.learn_step_size)


@dataclass
class Context:
    """Keys and values of the context stream, one (k, v) per block, each (B, H, L, K)."""

    kv: list[tuple[Tensor, Tensor]]

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[-2]


class Landscapes:
    """The energy E(x, p) at each thinking step for one token sequence x, context passes cached.

    Each landscape's context pass runs once and is shared by every step and sample that uses it;
    `append` extends the sequence, and each cached context runs only the new tokens (the KV cache
    of decoding, `ThinkingDecoder`). Calling it as `energy(p, step)` gives energies (B, M, S) of
    prepared candidates p (B, M, S, C) for the last S tokens.
    """

    def __init__(self, model: AutoregressiveEBT, ids: Tensor, differentiable: bool = True, steps: int = 0):
        self.model, self.ids = model, ids  # (B, N)
        # Inference needs no gradient through the context, and a graph kept on cached keys/values
        # would grow with every generated token (and be walked by every ∇E).
        self.differentiable = differentiable
        self.contexts: dict[int, Context] = {}
        for step in range(steps):
            self.context(step)

    def append(self, ids: Tensor) -> None:
        """Extend the sequence by ids (B, N[, C]): each context pass run so far continues over
        them alone, so every cached context always holds the whole sequence."""
        self.ids = torch.cat((self.ids, ids), dim=1)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            for landscape, context in self.contexts.items():
                self.contexts[landscape] = self.model.encode_context(ids, landscape, past=context)

    def context(self, step: int) -> Context:
        """The context pass of thinking step `step`'s landscape, run on its first use."""
        landscape = min(step, self.model.landscape_embedding.num_embeddings - 1)
        if landscape not in self.contexts:
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                self.contexts[landscape] = self.model.encode_context(self.ids, landscape)
        return self.contexts[landscape]

    def __call__(self, p: Tensor, step: int) -> Tensor:
        return self.model.candidate_energy(self.context(step), p)

    def gradient(self, p: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Energies (B, M, S) and ∇_p E of a first-order thinking step in one compiled graph
        (`ebt.think.FirstOrder`, when the model runs compiled)."""
        return compiled(_candidate_first_order)(self.model, self.context(step).kv, p)


class ThinkingDecoder(Decoder):
    """Decoding by thinking (`AutoregressiveEBT.decoder`): each prediction is `think` at the last
    position, on landscapes whose context passes are the cache."""

    def __init__(self, model: AutoregressiveEBT, options: ThinkingOptions, generator: torch.Generator | None,
                 cache: bool):
        super().__init__(model.config.context_len, cache)
        self.model, self.options, self.generator = model, options, generator
        self.landscapes: Landscapes | None = None

    def encode(self, x: Tensor) -> Tensor:
        self.landscapes = self.model.landscapes(x, differentiable=False)
        return self._think()

    def extend(self, new: Tensor) -> Tensor:
        self.landscapes.append(new)
        return self._think()

    def _think(self) -> Tensor:
        thought = self.model.think(self.landscapes.ids, self.options, last_only=True, landscapes=self.landscapes,
                                   generator=self.generator)
        return thought.y[:, -1]  # (B, C)


class AutoregressiveEBT(nn.Module):
    """E_θ(x, y) at every position of a sequence, handed its task (text: next token; video: next
    frame latent). `think` predicts by energy descent; `landscapes` is the energy `think` descends;
    `predict` and `decoder` are the calls it shares with the Transformer++."""

    def __init__(self, config: ModelConfig, think_config: ThinkConfig, task: NextToken | NextFrame):
        super().__init__()
        self.config, self.think_config, self.task = config, think_config, task
        d = config.dim
        self.token_embedding = self.task.input_embedding(d)  # text: a token table; video: a linear map of latents
        self.landscape_embedding = nn.Embedding(think_config.num_landscapes, d)
        self.candidate_embedding = nn.Linear(self.task.candidate_dim, d, bias=False)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.ffn_width, config.norm_eps) for _ in range(config.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps)
        # No bias: it would get no gradient through ∇_y E (and trips DDP), SPEC §2.
        self.energy_head = nn.Linear(d, 1, bias=False)
        self.rotary = Rotary(d // config.n_heads, config.context_len + 2, config.rope_theta)
        init_weights(self)
        if config.energy_head_init == "zero":  # E constant at init: thinking starts from a uniform guess
            nn.init.zeros_(self.energy_head.weight)
        # α: learned by System 1 (its own optimizer group), fixed otherwise.
        self.step_size = step_size_parameter(think_config)
        # Training recomputes each thinking step in the backward pass (`ebt.models.set_activation_checkpointing`).
        self.activation_checkpointing = False
        # Inference runs its context passes and first-order thinking steps compiled (`ebt.models.compiled_inference`).
        self.compiled = False

    @property
    def alpha(self) -> Tensor:
        return self.step_size.clamp(min=MIN_STEP_SIZE)

    def initial_candidate(self, x: Tensor, samples: int, generator: torch.Generator | None = None,
                          seeds: Tensor | None = None) -> Tensor:
        """Where thinking starts: the task's N(0, I) candidates (B, M, S, C) scaled by
        think.start_std (0: every sample starts at zero logits, the uniform distribution)."""
        y = self.task.initial_candidate(x, samples, self.step_size, generator, seeds)
        std = self.think_config.start_std
        return y if std == 1 else y * std

    def encode_context(self, x: Tensor, step: int = 0, past: Context | None = None) -> Context:
        """Run the context stream over tokens x (B, N) (or frame latents (B, N, C)) for landscape `step`.

        Without `past` the stream starts with the landscape token; with it, x continues the cached
        stream (generation). Returns the keys/values of every block.
        """
        check_context(x, self.token_embedding, self.config.context_len, seen=past.length - 1 if past is not None else 0)
        landscape = min(step, self.landscape_embedding.num_embeddings - 1)
        token = self.landscape_embedding.weight[landscape] if past is None else None  # (D,) starts a stream
        if not self.compiled:
            return Context(_context_pass(self, x, token, past.kv if past is not None else None))
        kv = compiled(_context_pass)(self, x, token, past.kv if past is not None else None)
        return Context(contiguous(kv))

    def candidate_energy(self, context: Context, p: Tensor) -> Tensor:
        """Energies (B, M, S) of prepared candidates p (B, M, S, C) for the last S context tokens."""
        s, length = p.shape[-2], context.length
        # Candidates follow the last S context keys (key 0 is the landscape token): candidate j
        # follows key L−S+j, sits one rotary position after it, and sees keys 0 … L−S+j.
        positions = torch.arange(length - s + 1, length + 1, device=p.device)
        rope = self.rotary(length - s + 1, length + 1)
        keys = torch.arange(length, device=p.device)
        visible = keys[None, :] <= (positions - 1)[:, None]  # (S, L)
        # In p's dtype, float32 under autocast: adding it promotes the 16-bit scores of the
        # candidate attention, so their softmax runs in float32 on the CPU too (CUDA's autocast
        # runs every softmax in float32).
        score_mask = torch.zeros(visible.shape, dtype=p.dtype, device=p.device).masked_fill(~visible, float("-inf"))
        h = self.candidate_embedding(p)  # (B, M, S, D)
        for block, kv in zip(self.blocks, context.kv):
            h = block.forward_candidates(h, rope, kv, score_mask)
        return self.energy_head(self.norm(h)).squeeze(-1)  # (B, M, S)

    def landscapes(self, x: Tensor, differentiable: bool = True, steps: int = 0) -> Landscapes | Checkpointed:
        """The energy function `energy(p, step)` that `think` descends, for context tokens x (B, S).

        differentiable=False computes the context stream without a graph (inference). steps: run
        the context passes of thinking steps 0 … steps−1 now rather than at their first use, as
        training does: no context pass may run inside a thinking step that the backward pass
        recomputes (activation checkpointing in training: `ebt.think.Checkpointed`), since the
        steps after it reuse it."""
        return _checkpointed(self, Landscapes(self, x, differentiable, steps), differentiable)

    def energy(self, ids: Tensor, y: Tensor, step: int = 0) -> Tensor:
        """Energies (B, S) of candidates y (B, S, C), already prepared (text: probabilities), given ids (B, S)."""
        check_context(ids, self.token_embedding, self.config.context_len)
        if isinstance(self.token_embedding, nn.Embedding):
            check_token_ids(ids, self.token_embedding.num_embeddings)
        c, dtype = self.task.candidate_dim, self.energy_head.weight.dtype
        if y.dim() != 3 or tuple(y.shape) != (*ids.shape[:2], c) or y.dtype != dtype:
            raise ConfigError(f"y must be prepared candidates of shape {(*ids.shape[:2], c)} (ids' batch and "
                              f"positions) in the model's dtype {dtype}, got shape {tuple(y.shape)} of {y.dtype}")
        return self.candidate_energy(self.encode_context(ids, step), y.unsqueeze(1)).squeeze(1)

    def think(
        self,
        ids: Tensor,
        options: ThinkingOptions | None = None,
        *,
        generator: torch.Generator | None = None,
        score_final: bool = False,
        last_only: bool = False,
        landscapes: Landscapes | None = None,
        **given,
    ) -> Thought:
        """Predict the next element at every position of ids (B, S) (text: token ids; video:
        latents (B, S, C)) by thinking (System 2 inference).

        options: a ThinkingOptions, or its fields as keywords (`steps=4, samples=3`): steps
        (default: as trained; more = thinking longer), samples (best-of-M self-verification, the
        lowest final energy kept per position), step_size (override of the trained α),
        langevin_std, tolerance (adaptive thinking, see `ebt.think.think`).
        last_only: predict only the last position (decoding). landscapes: reuse these cached
        context passes (`ThinkingDecoder` keeps them across tokens; their ids must be `ids`).
        Returns a Thought whose `y` is (B, S, C) and whose `energies` are per step (B, S)
        (of the chosen sample when M > 1); `forward_passes` counts every energy evaluation run,
        all samples included. Raises ConfigError for bad options, ThinkingDiverged when a step
        produces non-finite values.
        """
        options = ThinkingOptions.of(options, **given)
        check_context(ids, self.token_embedding, self.config.context_len)
        if isinstance(self.token_embedding, nn.Embedding) and landscapes is None:  # decoding's caller checked its ids
            check_token_ids(ids, self.token_embedding.num_embeddings)
        energy = landscapes if landscapes is not None else self.landscapes(ids, differentiable=False)
        if self.compiled:
            energy = FirstOrder(energy, energy.gradient)
        return think_best_of(self, energy, ids[:, -1:] if last_only else ids, options, generator=generator,
                             score_final=score_final)

    def predict(self, x: Tensor, options: ThinkingOptions | None = None, *, last_only: bool = False,
                generator: torch.Generator | None = None, **given) -> Thought:
        """The call shared with the Transformer++: `think` with `options` (or their fields as keywords)."""
        return self.think(x, ThinkingOptions.of(options, **given), last_only=last_only, generator=generator)

    def decoder(self, options: ThinkingOptions | None = None, generator: torch.Generator | None = None, *,
                cache: bool = True, **given) -> ThinkingDecoder:
        """The decoder of generation (`ebt.decoding.Decoder`, as the Transformer++'s): each next
        element predicted by thinking with `options` (or their fields as keywords), random draws
        from `generator`; `cache` keeps the landscapes' context passes between steps."""
        return ThinkingDecoder(self, ThinkingOptions.of(options, **given), generator, cache)


class BidirectionalEBT(nn.Module):
    """The bidirectional EBT for image denoising (SPEC §5): E_θ(y) of whole images y.

    A DiT-style backbone (`PatchTransformer`: patches, fixed 2-D sin-cos positions, adaLN-Zero
    blocks) conditioned on one learned vector per energy landscape (System 1 with one training
    step has one; no timestep input), then a per-patch energy head `Linear(D, 1, bias=False)`,
    zero-initialized so that at initialization E ≡ 0 and thinking returns its input; the image's
    energy is the mean over its patches. There is no separate context: thinking starts from the
    noisy image (`Denoising.initial_candidate`) and descends E on its pixels.

    Legend: B batch, M samples, C channels, H × W image, P patches, D width.
    """

    def __init__(self, config: ModelConfig, think_config: ThinkConfig, task: Denoising):
        super().__init__()
        if think_config.randomize_step_size:  # it draws one α per (sequence, position) of token contexts
            raise ConfigError("think.randomize_step_size = true is not supported for images (System 1 only)")
        if think_config.start_std != 1:  # images start from the noisy image, not from a draw
            raise ConfigError(f"think.start_std = {think_config.start_std!r} is not allowed for images; it must be 1 "
                              "(image thinking starts from the noisy image itself)", field="think.start_std")
        self.config, self.think_config, self.task = config, think_config, task
        d = config.dim
        self.backbone = PatchTransformer(task.image_size, task.channels, task.patch_size, d, config.n_heads,
                                         config.ffn_width, config.n_layers)
        self.landscape_embedding = nn.Embedding(think_config.num_landscapes, d)
        nn.init.normal_(self.landscape_embedding.weight, std=1.0)
        self.energy_head = nn.Linear(d, 1, bias=False)  # no bias: no gradient through ∇_y E (SPEC §2)
        nn.init.zeros_(self.energy_head.weight)  # E ≡ 0 at init: the prediction equals the input (SPEC §5)
        self.step_size = step_size_parameter(think_config)
        self.activation_checkpointing = False  # as AutoregressiveEBT's
        self.compiled = False  # as AutoregressiveEBT's

    @property
    def alpha(self) -> Tensor:
        return self.step_size.clamp(min=MIN_STEP_SIZE)

    def initial_candidate(self, x: Tensor, samples: int, generator: torch.Generator | None = None,
                          seeds: Tensor | None = None) -> Tensor:
        """Where thinking starts: the noisy images x (B, C, H, W), M copies (B, M, 1, C, H, W)."""
        return self.task.initial_candidate(x, samples, self.step_size, generator, seeds)

    def energy(self, y: Tensor, step: int = 0) -> Tensor:
        """Energies (…,) of images y (…, C, H, W): the mean of the per-patch energies."""
        lead = y.shape[:-3]
        images = y.reshape(-1, *y.shape[-3:])  # (N, C, H, W)
        landscape = min(step, self.landscape_embedding.num_embeddings - 1)
        c = self.landscape_embedding.weight[landscape].expand(images.shape[0], -1)  # (N, D)
        patches = self.energy_head(self.backbone(images, c)).squeeze(-1)  # (N, P)
        return patches.mean(-1).reshape(lead)

    def landscapes(self, x: Tensor, differentiable: bool = True, steps: int = 0):
        """The energy `energy(p, step)` that `think` descends: candidates (B, M, 1, C, H, W) →
        (B, M, 1). The noisy images x are where thinking starts, not an input of E; there is no
        context pass to run ahead for `steps` (see `AutoregressiveEBT.landscapes`)."""
        return _checkpointed(self, self.energy, differentiable)

    def think(
        self,
        noisy: Tensor,
        options: ThinkingOptions | None = None,
        *,
        generator: torch.Generator | None = None,
        score_final: bool = False,
        **given,
    ) -> Thought:
        """Denoise images (B, C, H, W) by thinking from them; options as `AutoregressiveEBT.think`.
        Every sample starts from the same noisy image, so samples > 1 needs Langevin noise to
        differ (ConfigError otherwise). `thought.y` is (B, 1, C, H, W), energies (B, 1)."""
        options = ThinkingOptions.of(options, **given)
        shape = (self.task.channels, self.task.image_size, self.task.image_size)
        if not isinstance(noisy, Tensor) or noisy.dim() != 4 or tuple(noisy.shape[1:]) != shape \
                or not noisy.is_floating_point():
            got = f"shape {tuple(noisy.shape)} of {noisy.dtype}" if isinstance(noisy, Tensor) else type(noisy).__name__
            raise ConfigError(f"images must be (B, {', '.join(map(str, shape))}) of a floating dtype, pixels in "
                              f"[-1, 1]; got {got}")
        if options.samples > 1 and not options.langevin_std:
            raise ConfigError(f"samples = {options.samples} would run {options.samples} identical candidates: image "
                              "thinking starts every sample from the noisy image; add Langevin noise "
                              "(ThinkingOptions.langevin_std) so that they differ, or use samples = 1",
                              field="langevin_std")
        energy = FirstOrder(self.energy, functools.partial(compiled(_image_first_order), self)) if self.compiled \
            else self.energy
        return think_best_of(self, energy, noisy, options, generator=generator, score_final=score_final)


def _checkpointed(model: nn.Module, energy: Callable[[Tensor, int], Tensor], differentiable: bool):
    """`energy`, recomputed step by step in the backward pass when the model trains with activation
    checkpointing (`ebt.models.set_activation_checkpointing`)."""
    return Checkpointed(energy) if differentiable and model.activation_checkpointing and model.training else energy


# --- The units `--compile` compiles (`ebt.compiled`): plain functions of the model and tensors ------


def _context_pass(model: AutoregressiveEBT, x: Tensor, token: Tensor | None,
                  past: list[tuple[Tensor, Tensor]] | None) -> list[tuple[Tensor, Tensor]]:
    """The keys/values (B, H, L, K) of every block of a context stream over x (B, N[, C]): a new
    stream starting with its landscape's token (D,), or one continuing `past`
    (`AutoregressiveEBT.encode_context`). The token arrives as a tensor, not an index, so one
    compiled graph serves every landscape."""
    h = model.token_embedding(x)  # (B, N, D)
    start = past[0][0].shape[-2] if past is not None else 0
    if token is not None:
        h = torch.cat((token.expand(x.shape[0], 1, -1), h), dim=1)  # (B, N+1, D)
    rope = model.rotary(start, start + h.shape[1])
    kv = []
    *blocks, last = model.blocks
    for i, block in enumerate(blocks):
        h, block_kv = block(h, rope, past[i] if past is not None else None)
        kv.append(block_kv)
    # Candidates read the context only through keys/values: the last block's attention and
    # feed-forward outputs would feed nothing, so only its keys/values are computed.
    kv.append(last.keys_values(h, rope, past[-1] if past is not None else None))
    return kv


def _candidate_first_order(model: AutoregressiveEBT, kv: list[tuple[Tensor, Tensor]], p: Tensor
                           ) -> tuple[Tensor, Tensor]:
    """Energies (B, M, S) and ∇_p E of prepared candidates p (B, M, S, C) given a context's keys/values."""
    return first_order(lambda p: model.candidate_energy(Context(kv), p), p)


def _image_first_order(model: BidirectionalEBT, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Energies (…,) and ∇_y E of images y (…, C, H, W) in landscape `step`."""
    return first_order(lambda y: model.energy(y, step), y)
