"""Text: next-token prediction with discrete candidates (SPEC §2, "Text candidates").

A candidate is a vector of V logits per position, started from N(0, I). The energy model reads
its softmax, and thinking steps on the probabilities: y ← p − α ∂E/∂p, the result used as
logits for the loss and the next step (the reference code's update; normalizing was essential
for stability).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.config import DataConfig
from ebt.data.batches import count_windows, encode_documents
from ebt.data.corpus import load_corpus
from ebt.data.tokenizers import build_tokenizer


class NextToken:
    def __init__(self, vocab_size: int):
        self.candidate_dim = vocab_size

    def initial_candidate(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """N(0, I) logits of shape (*shape, V), with the device and dtype of `like` (a model weight)."""
        device = generator.device if generator is not None else like.device
        y = torch.randn(*shape, self.candidate_dim, device=device, dtype=like.dtype, generator=generator)
        return y.to(like.device)

    def prepare(self, y: Tensor) -> Tensor:
        return torch.softmax(y, dim=-1)

    def loss(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of logits y (..., V) against token ids (...)."""
        logits = y.reshape(-1, y.shape[-1])
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.reshape(-1))


@dataclass
class TextData:
    tokenizer: object
    train: Tensor  # (N,) token ids of the training split
    validation: Tensor  # (N',) token ids of the validation split


def load_text_data(config: DataConfig, context_len: int, tokenizer=None) -> TextData:
    """Read the corpus, build (or reuse) the tokenizer, encode both splits, check they fit a window."""
    corpus = load_corpus(config.corpus, config.validation_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(config.tokenizer, corpus.train, config.bpe_vocab_size)
    data = TextData(tokenizer, encode_documents(corpus.train, tokenizer), encode_documents(corpus.validation, tokenizer))
    for name, tokens in (("training split", data.train), ("validation split", data.validation)):
        count_windows(tokens, context_len + 1, name=f"{name} of {config.corpus!r}")  # raises if too short
    return data
