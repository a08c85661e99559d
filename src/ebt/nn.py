"""Shared Llama-style blocks (SPEC §2): RMSNorm, rotary positions, SwiGLU, attention, no biases.

The DiT-style image backbone of SPEC §5 (adaLN-Zero blocks, 2-D sin-cos positions,
`PatchTransformer`) is at the end.

Both the energy transformer (`energy.py`) and the Transformer++ baseline
(`baselines/transformer.py`) are stacks of `Block`. A block runs in one of two ways:

- `Block.forward`: ordinary causal self-attention over a stream, optionally continuing a cache of
  earlier keys/values. Used by the Transformer++ and by the EBT's context stream.
- `Block.forward_candidates`: the EBT's candidate stream. Candidate s attends to its context prefix
  (the keys/values the context stream produced) and to itself, never to other candidates.

Legend: B batch, H heads, L context keys, S candidates, M samples per position, D width,
K = D / H head width.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ebt.errors import ConfigError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """Rotary position embeddings (θ = 10000), tables precomputed for positions 0..max_positions-1."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # (P, K/2)
        # Kept in float64 and cast at use, so a float64 model computes exact float64 angles.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """The tables of positions start … stop − 1: slices, checked on Python ints, so a call
        never waits for the device (and `torch.compile` traces it without a break)."""
        if stop > self.cos.shape[0]:
            raise ValueError(f"position {stop - 1} is past the rotary table ({self.cos.shape[0]})")
        return self.cos[start:stop], self.sin[start:stop]  # (N, K/2) each


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the head dimension of x (..., N, K) by the angles of N positions."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# Candidates per block of the EBT's candidate attention (see `Attention.forward_candidates`).
CANDIDATE_BLOCK = 64


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-3, -2)  # (..., H, N, K)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Causal self-attention of x (B, N, D), continuing `past` keys/values if given.

        Returns the output (B, N, D) and all keys/values so far, each (B, H, L, K).
        Only first-order gradients ever flow through this path (the context stream does not
        depend on the candidates), so the fused SDPA kernels are safe here.
        """
        q = apply_rotary(self._heads(self.query(x)), *rope)  # (B, H, N, K)
        k, v = self.keys_values(x, rope, past)  # (B, H, L, K)
        n, length = q.shape[-2], k.shape[-2]
        if n == length:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries are the last n of `length` positions
            mask = torch.ones(n, length, dtype=torch.bool, device=x.device).tril(length - n)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(-3, -2).flatten(-2)), (k, v)

    def keys_values(
        self, x: Tensor, rope: tuple[Tensor, Tensor], past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, L, K) of x (B, N, D), appended to `past` if given."""
        k = apply_rotary(self._heads(self.key(x)), *rope)  # (B, H, N, K)
        v = self._heads(self.value(x))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=-2), torch.cat((past[1], v), dim=-2)
        return k, v

    def forward_candidates(
        self, x: Tensor, rope: tuple[Tensor, Tensor], context: tuple[Tensor, Tensor], score_mask: Tensor
    ) -> Tensor:
        """Candidate stream: x (B, M, S, D) attends to the context keys it may see and to itself.

        `score_mask` (S, L) is added to the scores: 0 where a candidate position sees a context
        key, −inf where it does not. (Adding it costs nothing in the backward passes, where a
        masked_fill would be replayed; the scale goes on q, S·K numbers instead of S·L.) Written with
        explicit matmuls and softmax because training differentiates this path twice (∂E/∂y, then
        θ through it) and the fused SDPA kernels have no double backward (SPEC §9). No dense
        2S×2S mask is built: the context part is an (S, L) block, the self part one score each.

        The candidates are those of the last S context positions (candidate j sees at most keys
        0 … L−S+j), so candidates run in blocks of CANDIDATE_BLOCK, each scoring only the keys its
        last candidate can see: at S = L = 256 that skips 37% of the masked score work, which with
        its two backward passes is the largest elementwise cost of a training step.
        """
        k_ctx, v_ctx = context[0].unsqueeze(1), context[1].unsqueeze(1)  # (B, 1, H, L, K) each
        q = apply_rotary(self._heads(self.query(x)), *rope) / math.sqrt(self.head_dim)  # (B, M, H, S, K)
        k = apply_rotary(self._heads(self.key(x)), *rope)
        v = self._heads(self.value(x))
        score_self = (q * k).sum(-1, keepdim=True)  # (B, M, H, S, 1)
        s, length = q.shape[-2], k_ctx.shape[-2]
        blocks = []
        for start in range(0, s, CANDIDATE_BLOCK):
            stop = min(start + CANDIDATE_BLOCK, s)
            seen = length - s + stop  # keys visible to the block's last candidate
            scores = q[..., start:stop, :] @ k_ctx[..., :seen, :].transpose(-2, -1) + score_mask[start:stop, :seen]
            weights = torch.softmax(torch.cat((scores, score_self[..., start:stop, :]), dim=-1), dim=-1)
            blocks.append(weights[..., :-1] @ v_ctx[..., :seen, :] + weights[..., -1:] * v[..., start:stop, :])
        y = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-2)  # (B, M, H, S, K)
        return self.out(y.transpose(-3, -2).flatten(-2))  # (B, M, S, D)

    def bidirectional(self, x: Tensor) -> Tensor:
        """Full (unmasked) self-attention of x (B, P, D) for images (SPEC §5), no rotary positions
        (the caller adds absolute ones); explicit softmax so it has a double backward."""
        q, k, v = (self._heads(f(x)) for f in (self.query, self.key, self.value))  # (B, H, P, K)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)  # (B, H, P, P)
        return self.out((weights @ v).transpose(-3, -2).flatten(-2))  # (B, P, D)


def recompute_in_backward(block: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), a pass through `block`, under non-reentrant activation checkpointing when the
    block's `activation_checkpointing` is on, it is training and a graph is being built: the pass
    keeps only its arguments for the backward pass and runs again there, when a backward first
    needs its activations. It works inside `torch.autograd.grad(..., create_graph=True)` and the
    backward through that (reentrant checkpointing does not, SPEC §9). In eval mode (validation,
    inference thinking, which takes ∇E with gradients enabled) nothing is recomputed."""
    if block.activation_checkpointing and block.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + swiglu(norm(x)).

    Each of its three passes (`forward`, `keys_values`, `forward_candidates`) is recomputed in the
    backward pass when `activation_checkpointing` is on (`ebt.models.set_activation_checkpointing`)."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, norm_eps: float = 1e-5):
        super().__init__()
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.attention = Attention(dim, n_heads)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.ffn = SwiGLU(dim, ffn_dim)
        self.activation_checkpointing = False

    def forward(self, x: Tensor, rope, past=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return recompute_in_backward(self, self._forward, x, rope, past)

    def _forward(self, x: Tensor, rope, past) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attention(self.attention_norm(x), rope, past)
        x = x + a
        return x + self.ffn(self.ffn_norm(x)), kv

    def keys_values(self, x: Tensor, rope, past=None) -> tuple[Tensor, Tensor]:
        """Only this block's keys/values of stream x: all a stream's last block must give the candidates."""
        return recompute_in_backward(self, self._keys_values, x, rope, past)

    def _keys_values(self, x: Tensor, rope, past) -> tuple[Tensor, Tensor]:
        return self.attention.keys_values(self.attention_norm(x), rope, past)

    def forward_candidates(self, x: Tensor, rope, context, score_mask: Tensor) -> Tensor:
        return recompute_in_backward(self, self._forward_candidates, x, rope, context, score_mask)

    def _forward_candidates(self, x: Tensor, rope, context, score_mask: Tensor) -> Tensor:
        x = x + self.attention.forward_candidates(self.attention_norm(x), rope, context, score_mask)
        return x + self.ffn(self.ffn_norm(x))


def init_weights(module: nn.Module) -> None:
    """SPEC §2: Xavier-normal linears, N(0, 1) embedding tables."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)


# --- Bidirectional blocks for images (SPEC §5): the DiT backbone ----------------------------------
# Legend: B batch, P patches, D width, C channels, H × W image, p patch side.


def sincos_positions_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embeddings (P = grid², D) of a square patch grid, as in DiT.

    Half the width encodes the row, half the column, each with 1-D sin-cos at frequencies
    1/10000^(2i/(D/2)) (the transformer's table)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    freq = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * freq  # (P, D/4)
        return torch.cat((angles.sin(), angles.cos()), dim=1)  # (P, D/2)

    return torch.cat((encode(rows), encode(cols)), dim=1)  # (P, D)


def patchify(images: Tensor, patch: int) -> Tensor:
    """(..., C, H, W) → (..., P, C·p·p), patches in row-major order."""
    *lead, c, h, w = images.shape
    n = len(lead)
    x = images.reshape(*lead, c, h // patch, patch, w // patch, patch)
    x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)  # (..., H/p, W/p, C, p, p)
    return x.reshape(*lead, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(patches: Tensor, channels: int, size: int, patch: int) -> Tensor:
    """(..., P, C·p·p) → (..., C, H, W), the inverse of `patchify` for a square image."""
    *lead, _, _ = patches.shape
    n, g = len(lead), size // patch
    x = patches.reshape(*lead, g, g, channels, patch, patch)
    x = x.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4)  # (..., C, H/p, p, W/p, p)
    return x.reshape(*lead, channels, size, size)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, P, D) normalized, then scaled and shifted per image by (B, D) vectors."""
    return x * (1 + scale.unsqueeze(-2)) + shift.unsqueeze(-2)


class AdaLNBlock(nn.Module):
    """DiT block with adaLN-Zero (SPEC §5): LayerNorm without affine weights, modulated (shift,
    scale, gate for attention and for the feed-forward) by a conditioning vector c (B, D).

    The modulation map is zero-initialized, so every gate starts at 0 and the block starts as the
    identity. Attention is bidirectional and written with explicit matmuls: the EBT's training
    differentiates it twice (SPEC §9). The feed-forward is the library's SwiGLU, no biases.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.attention = Attention(dim, n_heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ffn = SwiGLU(dim, ffn_dim)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=False))
        self.activation_checkpointing = False  # see `recompute_in_backward`

    def zero_init(self) -> None:
        nn.init.zeros_(self.modulation[1].weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x (B, P, D), c (B, D) → (B, P, D)."""
        return recompute_in_backward(self, self._forward, x, c)

    def _forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(c).chunk(6, dim=-1)  # (B, D) each
        x = x + gate_a.unsqueeze(-2) * self.attention.bidirectional(modulate(self.attention_norm(x), shift_a, scale_a))
        return x + gate_f.unsqueeze(-2) * self.ffn(modulate(self.ffn_norm(x), shift_f, scale_f))


class PatchTransformer(nn.Module):
    """The image backbone shared by the bidirectional EBT and the DiT baseline (SPEC §5).

    images (B, C, H, W) and a conditioning input (B, D) → features (B, P, D): patchify, a linear
    patch embedding, fixed 2-D sin-cos positions, adaLN-Zero blocks, a final LayerNorm modulated
    (shift, scale) by c. The conditioning input passes through a small MLP first — DiT's
    timestep embedder shape; the EBT feeds it its learned landscape vector — so both models
    carry the same backbone and the same parameter count up to their heads.
    """

    def __init__(self, image_size: int, channels: int, patch: int, dim: int, n_heads: int, ffn_dim: int,
                 n_layers: int):
        super().__init__()
        self.patch, self.channels, self.image_size = patch, channels, image_size
        self.patch_embedding = nn.Linear(channels * patch * patch, dim, bias=False)
        self.register_buffer("positions", sincos_positions_2d(image_size // patch, dim), persistent=False)
        self.condition = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False))
        self.blocks = nn.ModuleList(AdaLNBlock(dim, n_heads, ffn_dim) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))
        init_weights(self)
        for block in self.blocks:
            block.zero_init()
        nn.init.zeros_(self.final_modulation[1].weight)

    def forward(self, images: Tensor, c: Tensor) -> Tensor:
        h = self.patch_embedding(patchify(images, self.patch)) + self.positions.to(images.dtype)  # (B, P, D)
        c = self.condition(c)  # (B, D)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm(h), shift, scale)  # (B, P, D)


def check_context(x: Tensor, embedding: nn.Module, context_len: int, seen: int = 0) -> None:
    """Refuse a context the model cannot read, at its public entries, with the fix: token ids (B, S)
    of an integer dtype (a token table) or latents (B, S, C) (a linear map), S ≤ context_len. `seen`:
    positions a cache holds, which x continues. Shapes only: no device sync."""
    if isinstance(embedding, nn.Embedding):
        name, unit = "ids", "tokens"
        form, fix = "token ids (B, S) of an integer dtype", "one sequence: ids[None]; float ids: ids.long()"
        ok = (isinstance(x, Tensor) and x.dim() == 2
              and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool))
    else:
        name, unit = "x", "frames"
        form, fix = f"latents (B, S, {embedding.in_features}) of a floating dtype", "one clip: x[None]"
        ok = isinstance(x, Tensor) and x.dim() == 3 and x.shape[-1] == embedding.in_features and x.is_floating_point()
    if not ok:
        got = f"shape {tuple(x.shape)} of {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name} must be {form}, got {got} ({fix})")
    if x.shape[1] < 1:
        raise ConfigError(f"{name} has no positions (shape {tuple(x.shape)}); give at least one of the {unit}")
    if seen + x.shape[1] > context_len:
        held = f" after the {seen} a cache holds" if seen else ""
        raise ConfigError(f"{name} has {x.shape[1]} positions{held} but the model's context_len is {context_len}; "
                          f"pass the last context_len {unit} ({name}[:, -{context_len}:]), as `ebt generate` slides "
                          "its window")


def check_token_ids(ids: Tensor, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab_size) at a public entry (one device sync; not used in the
    training step, whose ids come from the run's own tokenizer)."""
    if ids.numel() and not ids.is_floating_point():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ConfigError(f"ids hold {low if low < 0 else high}, outside the model's vocabulary [0, {vocab_size}); "
                              "encode text with the run's own tokenizer (run.tokenizer)")
