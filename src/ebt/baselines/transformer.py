"""The Transformer++ baseline (SPEC §2): a causal LM on the same blocks as the EBT.

Legend: B batch, S positions, D width, V vocabulary (or C, the latent width, for video: the
output then regresses the next frame's latent, SPEC §2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt.compiled import compiled, contiguous
from ebt.config import ModelConfig
from ebt.decoding import Decoder
from ebt.nn import Block, RMSNorm, Rotary, check_context, init_weights
from ebt.options import ThinkingOptions
from ebt.tasks.text import NextToken
from ebt.tasks.video import NextFrame
from ebt.think import Thought


class TransformerPP(nn.Module):
    """A causal Llama-style LM handed its task (text: next token; video: next frame latent).

    It cannot think: `predict` and `decoder` reject thinking options that are set (ConfigError)."""

    def __init__(self, config: ModelConfig, task: NextToken | NextFrame):
        super().__init__()
        self.config, self.task = config, task
        d = config.dim
        self.token_embedding = self.task.input_embedding(d)  # text: a token table; video: a linear map of latents
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.ffn_width, config.norm_eps) for _ in range(config.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps)
        self.output = nn.Linear(d, self.task.candidate_dim, bias=False)
        self.rotary = Rotary(d // config.n_heads, config.context_len, config.rope_theta)
        init_weights(self)
        self.compiled = False  # inference's forward passes through torch.compile (`ebt.models.compiled_inference`)

    def forward(self, ids: Tensor, past: list | None = None) -> Tensor:
        """Logits (B, S, V) for token ids (B, S); with `past` (a list of per-block keys/values that
        this call extends in place) ids continue a cached sequence."""
        cached = bool(past)  # an empty list starts a cache
        check_context(ids, self.token_embedding, self.config.context_len, seen=past[0][0].shape[-2] if cached else 0)
        if not self.compiled:
            logits, kv = _forward(self, ids, past if cached else None, past is not None)
        else:
            logits, kv = compiled(_forward)(self, ids, past if cached else None, past is not None)
            kv = contiguous(kv)
        if past is not None:
            past[:] = kv
        return logits

    def predict(self, x: Tensor, options: ThinkingOptions | None = None, *, last_only: bool = False,
                generator: torch.Generator | None = None, **given) -> Thought:
        """Predictions for inputs x (B, S[, C]) as a Thought of one forward pass: `y`, logits (B, S or 1, C).
        The same call as `AutoregressiveEBT.predict`; thinking options raise ConfigError."""
        options = ThinkingOptions.of(options, **given)
        if options.given():
            raise options.refused_by("a Transformer++")
        with torch.no_grad():
            out = self(x)  # (B, S, C)
        return Thought([out[:, -1:] if last_only else out], forward_passes=1)

    def decoder(self, options: ThinkingOptions | None = None, generator: torch.Generator | None = None, *,
                cache: bool = True, **given) -> CausalDecoder:
        """The decoder of generation (`ebt.decoding.Decoder`, as the EBT's): each next element from
        one forward pass; `cache` keeps the blocks' keys/values between steps. It draws nothing
        from `generator`, and thinking options that are set raise ConfigError."""
        options = ThinkingOptions.of(options, **given)
        if options.given():
            raise options.refused_by("a Transformer++")
        return CausalDecoder(self, cache)


class CausalDecoder(Decoder):
    """Decoding with one forward pass per element (`TransformerPP.decoder`); the keys/values of
    every block are the cache."""

    def __init__(self, model: TransformerPP, cache: bool):
        super().__init__(model.config.context_len, cache)
        self.model = model
        self.kv: list[tuple[Tensor, Tensor]] | None = None  # per block (B, H, L, K) each

    def encode(self, x: Tensor) -> Tensor:
        self.kv = [] if self.cache else None  # an empty list starts a cache
        return self.extend(x)

    def extend(self, new: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(new, past=self.kv)[:, -1]  # (B, C)


def _forward(model: TransformerPP, ids: Tensor, past: list[tuple[Tensor, Tensor]] | None, keep: bool
             ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Logits (B, S, V) of ids (B, S) continuing `past` keys/values when given, and, when `keep`,
    every block's keys/values so far (B, H, L, K): `TransformerPP.forward`, the unit `--compile`
    compiles (`ebt.compiled`)."""
    start = past[0][0].shape[-2] if past is not None else 0
    rope = model.rotary(start, start + ids.shape[1])
    h = model.token_embedding(ids)  # (B, S, D)
    kept = []
    for i, block in enumerate(model.blocks):
        h, kv = block(h, rope, past[i] if past is not None else None)
        if keep:
            kept.append(kv)
    return model.output(model.norm(h)), kept  # (B, S, V)
