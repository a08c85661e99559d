"""Text: next-token prediction with discrete candidates (SPEC §2, "Text candidates").

A candidate is a vector of V logits per position, started from N(0, I). The energy model reads
its softmax, and thinking steps on the probabilities: y ← p − α ∂E/∂p, the result used as
logits for the loss and the next step (the reference code's update; normalizing was essential
for stability).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.checkpoint import TOKENIZER, atomic_write
from ebt.config import DataConfig, ModelConfig, RunConfig
from ebt.data.batches import RandomWindows, count_windows, encode_documents
from ebt.data.corpus import load_corpus
from ebt.data.tokenizers import build_tokenizer, tokenizer_from_json
from ebt.errors import CheckpointError, ConfigError
from ebt.evaluate import evaluate, perplexity
from ebt.tasks import normal_candidates


class NextToken:
    def __init__(self, vocab_size: int):
        self.candidate_dim = vocab_size

    def initial_candidate(
        self, x: Tensor, samples: int, like: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """N(0, I) logits (B, M, S, V) for contexts x (B, S): M samples per position, with the
        device and dtype of `like` (a model weight)."""
        return normal_candidates(x, samples, self.candidate_dim, like, generator)

    def input_embedding(self, dim: int) -> nn.Module:
        """How a context token enters either model: a table of V vectors of width D, N(0, 1) (SPEC §2)."""
        return nn.Embedding(self.candidate_dim, dim)

    def prepare(self, y: Tensor) -> Tensor:
        return torch.softmax(y, dim=-1)

    @staticmethod
    def loss_metrics(loss: float) -> dict[str, float]:
        """What a mean loss means to a reader: perplexity."""
        return {"ppl": perplexity(loss)}

    def loss(self, y: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of logits y (..., V) against token ids (...)."""
        logits = y.reshape(-1, y.shape[-1])
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.reshape(-1))


def make_task(config: ModelConfig) -> NextToken:
    if config.vocab_size < 1:
        raise ConfigError("model.vocab_size is unset: it comes from the tokenizer")
    return NextToken(config.vocab_size)


@dataclass
class TextData:
    """A corpus split in two token streams, and how the trainer batches and scores them."""

    tokenizer: Any
    train: Tensor  # (N,) token ids of the training split
    validation: Tensor  # (N',) token ids of the validation split
    context_len: int
    tokenizer_kind: str = "byte"

    @property
    def summary(self) -> str:
        return f"{len(self.train):,} training / {len(self.validation):,} validation tokens ({self.tokenizer_kind})"

    @property
    def overrides(self) -> dict[str, str]:
        return {"model.vocab_size": str(self.tokenizer.vocab_size)}

    def training_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> RandomWindows:
        return RandomWindows(self.train, self.context_len + 1, batch_size, seed, rank, world_size)

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        """A window (B, S+1) → context x (B, S) and next tokens (B, S)."""
        return batch[:, :-1], batch[:, 1:]

    unit = "tokens"  # what the training speed counts

    @staticmethod
    def count(targets: Tensor) -> int:
        return targets.numel()

    def validate(self, model, *, batch_size: int, max_batches: int, device) -> dict:
        return evaluate(model, self.validation, batch_size=batch_size, max_windows=max_batches, device=device)

    def save(self, out: Path) -> None:
        atomic_write(out / TOKENIZER, lambda p: p.write_text(self.tokenizer.to_json()))


def load_data(config: RunConfig, run_dir: Path | None = None) -> TextData:
    tokenizer = load_tokenizer(run_dir) if run_dir is not None else None  # a resumed run keeps its vocabulary
    return load_text_data(config.data, config.model.context_len, tokenizer)


def load_text_data(config: DataConfig, context_len: int, tokenizer=None) -> TextData:
    """Read the corpus, build (or reuse) the tokenizer, encode both splits, check they fit a window."""
    corpus = load_corpus(config.corpus, config.validation_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(config.tokenizer, corpus.train, config.bpe_vocab_size)
    data = TextData(tokenizer, encode_documents(corpus.train, tokenizer), encode_documents(corpus.validation, tokenizer),
                    context_len, config.tokenizer)
    for name, tokens in (("training split", data.train), ("validation split", data.validation)):
        count_windows(tokens, context_len + 1, name=f"{name} of {config.corpus!r}")  # raises if too short
    return data


def load_tokenizer(run_dir: Path, vocab_size: int | None = None):
    path = Path(run_dir) / TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no {TOKENIZER}")
    tokenizer = tokenizer_from_json(path.read_text())
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"{path} has {tokenizer.vocab_size} tokens but the config says model.vocab_size = {vocab_size}")
    return tokenizer


def load_artifacts(config: RunConfig, run_dir: Path):
    return load_tokenizer(run_dir, config.model.vocab_size)


# --- Commands -----------------------------------------------------------------------------------


def evaluate_run(run, args, thinking: dict, device) -> tuple[dict, str]:
    """`ebt eval RUN [--data NAME_OR_PATH]`: loss and perplexity on the run's validation split, or
    on another corpus whole."""
    from ebt.data.batches import encode_documents

    cfg = run.config
    if args.data is None or args.data == cfg.data.corpus:
        source, corpus = cfg.data.corpus, load_corpus(cfg.data.corpus, cfg.data.validation_fraction)
        documents, split = corpus.validation, "validation"  # never score the text a run trained on
    else:
        source, corpus = args.data, load_corpus(args.data, cfg.data.validation_fraction)
        documents, split = corpus.train + corpus.validation, "all"
    tokens = encode_documents(documents, run.tokenizer)
    result = evaluate(run.model, tokens, batch_size=args.batch_size, max_windows=args.max_windows,
                      seed=args.seed, device=device, **thinking)
    result = {"run": str(args.run), "kind": cfg.model.kind, "data": source, "split": split, **result}
    line = (f"{args.run} ({cfg.model.kind}) on {source} [{split}]: loss {result['loss']:.4f} nats/token, "
            f"ppl {result['ppl']:.3f}, {result['tokens']:,} tokens, {result['forward_passes']:g} forward passes per token")
    return result, line


def generate_run(run, args, thinking: dict, device) -> str:
    """`ebt generate RUN --prompt TEXT`: the prompt and its continuation."""
    from ebt.generate import generate

    if args.prompt is None:
        raise ConfigError("text runs continue a prompt: give --prompt TEXT")
    ids = generate(run.model, run.tokenizer.encode(args.prompt), args.max_new_tokens, temperature=args.temperature,
                   seed=args.seed, device=device, cache=not args.no_cache, **thinking)
    return args.prompt + run.tokenizer.decode(ids)
