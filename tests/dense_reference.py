"""The EBT's energy written out densely (SPEC §2): the reference the layout and speed tests compare with.

One (2S+1)-token sequence, an explicit attention mask and plain attention, recomputed in full for
every candidate: slow and obviously right. `test_models.py` checks the model's layout against it,
`test_shared_context.py` the shared context pass and the candidate blocks, and
`benchmarks/gpu_check.py` the same on a CUDA device (this module needs torch alone, not pytest).

Legend: B batch, S positions, N = 2S+1 sequence, D width, H heads, K head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, the library's convention: the head's two halves are the coordinate pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def exact_rotary(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (N, K/2)
    return angles.cos(), angles.sin()


def reference_energy(model: nn.Module, ids: Tensor, p: Tensor, step: int, rotary=None) -> Tensor:
    """SPEC §2 written out densely: one (2S+1)-token sequence, an explicit mask, plain attention.

    Sequence [landscape_step, ctx_1 … ctx_S, cand_1 … cand_S] at rotary positions 0, 1 … S, 2 … S+1;
    ctx_t sees landscape and ctx_1..ctx_t; cand_t sees landscape, ctx_1..ctx_t and itself.
    `rotary(positions) -> (cos, sin)`: by default exact float64 angles.
    """
    cfg = model.config
    b, s = ids.shape
    d, h = cfg.dim, cfg.n_heads
    k = d // h
    n = 2 * s + 1
    landscape = model.landscape_embedding.weight[min(step, model.landscape_embedding.num_embeddings - 1)]
    x = torch.cat(
        (landscape.expand(b, 1, d), model.token_embedding.weight[ids], p @ model.candidate_embedding.weight.T), dim=1
    )  # (B, 2S+1, D)
    positions = torch.cat((torch.arange(0, s + 1), torch.arange(2, s + 2))).to(ids.device)
    allowed = torch.zeros(n, n, dtype=torch.bool, device=ids.device)
    for i in range(s + 1):  # landscape token and context
        allowed[i, : i + 1] = True
    for t in range(1, s + 1):  # cand_t at sequence index s + t
        allowed[s + t, : t + 1] = True
        allowed[s + t, s + t] = True
    cos, sin = (rotary or (lambda pos: exact_rotary(pos, k, cfg.rope_theta)))(positions)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)

    def heads(z: Tensor) -> Tensor:
        return z.view(b, n, h, k).transpose(1, 2)  # (B, H, N, K)

    for block in model.blocks:
        att = block.attention
        z = _rms(x, block.attention_norm.weight, cfg.norm_eps)
        q = _rotate(heads(z @ att.query.weight.T), cos, sin)
        key = _rotate(heads(z @ att.key.weight.T), cos, sin)
        value = heads(z @ att.value.weight.T)
        scores = (q @ key.transpose(-2, -1) / math.sqrt(k)).masked_fill(~allowed, float("-inf"))
        mixed = torch.softmax(scores, dim=-1) @ value  # (B, H, N, K)
        x = x + mixed.transpose(1, 2).reshape(b, n, d) @ att.out.weight.T
        z = _rms(x, block.ffn_norm.weight, cfg.norm_eps)
        ffn = block.ffn
        x = x + (F.silu(z @ ffn.gate.weight.T) * (z @ ffn.up.weight.T)) @ ffn.down.weight.T
    return (_rms(x[:, s + 1:], model.norm.weight, cfg.norm_eps) @ model.energy_head.weight.T).squeeze(-1)  # (B, S)
