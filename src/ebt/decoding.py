"""Decoding: predict the element after a sequence that grows by one element per step (SPEC §2).

Each sequence model hands out its own decoder, `model.decoder(options, generator, cache=...)`,
and the decoder keeps what the model caches between steps (as litgpt's cache lives with its
model): the EBT its energy landscapes' context passes (a KV cache per landscape), the
Transformer++ its blocks' keys and values. `ebt.generate` drives either through `start` and
`step` alone, text and video alike.

When a step may extend the cache is decided here, once, for both models. While the sequence
fits the model's window (context_len), the cache holds all of it and a new element runs only
itself through the model. Past the window the window slides by one element per step and,
since every rotary position then shifts, the window is encoded afresh each step: exactly what
decoding without the cache computes, so both give the same predictions.

Legend: B batch, N elements, C candidate width (text: V, the logits; video: the frame latent).

Read next: `ebt.generate` (sampling, rollouts), `energy.py` and `baselines/transformer.py`
(the two decoders).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Decoder(ABC):
    """The next-element predictions of one growing batch of sequences, the model's cache kept
    between calls. A model's decoder supplies `encode` (run a window afresh) and `extend` (run
    only the new elements over the cache)."""

    def __init__(self, window: int, cache: bool):
        self.window = window  # the model's context_len
        self.cache = cache  # extend the cache while the sequence fits the window (False: every step afresh)
        self.length = 0  # elements decoded so far
        self.x: Tensor | None = None  # the last `window` of them, (B, ≤ window[, C])

    def start(self, x: Tensor) -> Tensor:
        """Begin a sequence with x, token ids (B, N) or latents (B, N, C); the prediction of the
        element after it (B, C), from its last `window` elements."""
        self.length, self.x = x.shape[1], x[:, -self.window:]
        return self.encode(self.x)

    def step(self, new: Tensor) -> Tensor:
        """Append new elements (B, 1[, C]) to the sequence; the prediction of the one after (B, C)."""
        self.length += new.shape[1]
        self.x = torch.cat((self.x, new), dim=1)[:, -self.window:]
        if self.cache and self.length <= self.window:
            return self.extend(new)
        return self.encode(self.x)

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Run the window x (B, N[, C]) afresh (a new cache); the prediction after it (B, C)."""

    @abstractmethod
    def extend(self, new: Tensor) -> Tensor:
        """Run new (B, n[, C]) over the cache, which then holds them; the prediction after them (B, C)."""
