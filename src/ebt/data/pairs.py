"""Prompt/answer pairs: fine-tuning data and the downstream sets, scored on the answer only.

A pairs file holds JSON lines, each an object with the string fields "prompt" and "answer":

    {"prompt": "Question: 12+7=?\\nAnswer:", "answer": " 19"}

The model reads the prompt's tokens followed by the answer's and is trained and scored on the
answer's tokens only: the paper's downstream measure (SPEC §7, Table 3) is the perplexity of the
reference answer given its question. The answer's text follows the prompt's directly, so any
separator (a newline, "Answer:", a leading space) belongs in the texts. Prompt and answer are
tokenized separately: the answer's tokens are exactly its own.

`encode_pairs` turns pairs into a `TokenSplit` in the "padded" layout: one example per pair, the
prompt's tokens stored `context_only` (read, not predicted), the answer's as they are. Everything
that reads token windows (the trainer, `ebt.evaluate.evaluate`) then takes the loss on answer
tokens only, with no special case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ebt.data.formats import json_lines
from ebt.data.tokens import TokenSplit, check_window, context_only
from ebt.errors import DataError

FIELDS = ("prompt", "answer")


@dataclass(frozen=True)
class Pair:
    """One example: the model reads `prompt` + `answer` and is scored on the answer."""

    prompt: str
    answer: str
    where: str = field(default="", compare=False)  # where it came from, for errors: "FILE, line N"


def is_pairs_file(source: str | Path) -> bool:
    """Whether `source` is a .jsonl (or .json) file whose first record is an object with a "prompt"
    field: a pairs file, not a corpus of "text" documents."""
    path = Path(source).expanduser()
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            for raw in handle:
                if raw.strip():
                    record = json.loads(raw.decode("utf-8-sig"))
                    return isinstance(record, dict) and "prompt" in record
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # read_pairs or the corpus reader names the problem
    return False


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a JSON-lines file, blank lines skipped. DataError naming the file and line for
    a line that is not a JSON object, a missing or non-string "prompt" or "answer", an empty
    prompt or answer (blank text), and for a file with no pairs."""
    path = Path(path).expanduser()
    form = 'a pairs file holds one JSON object per line with the string fields "prompt" and "answer"'
    pairs = []
    for where, record in json_lines(path, form, "pairs file"):
        if not isinstance(record, dict):
            raise DataError(f"{where} is a JSON {type(record).__name__}, not an object; {form}")
        for name in FIELDS:
            value = record.get(name)
            if not isinstance(value, str):
                problem = "has no field" if name not in record else f"has the {type(value).__name__} {str(value)[:20]} in the field"
                raise DataError(f'{where} {problem} "{name}"; {form}')
            if not value.strip():
                raise DataError(f'{where} has an empty "{name}"; a pair needs a prompt to read and an answer to score')
        pairs.append(Pair(record["prompt"].replace("\r\n", "\n"), record["answer"].replace("\r\n", "\n"), where))
    if not pairs:
        raise DataError(f"pairs file {str(path)!r} holds no pairs; {form}")
    return pairs


def split_pairs(pairs: Sequence[Pair], validation_fraction: float, name: str = "pairs") -> dict[str, list[Pair]]:
    """{"train", "validation"}: every k-th pair (k = round(1 / validation_fraction)) to validation,
    as corpora split their documents (`ebt.data.corpus.split_stream`); with fewer than k pairs the
    last one. DataError for fewer than 2 pairs."""
    if len(pairs) < 2:
        raise DataError(f"{name} holds {len(pairs)} pair(s); training needs at least 2 (one is held out for validation)")
    k = max(2, round(1.0 / validation_fraction))
    if len(pairs) < k:
        return {"train": list(pairs[:-1]), "validation": [pairs[-1]]}
    return {"train": [p for i, p in enumerate(pairs) if i % k != k - 1],
            "validation": [p for i, p in enumerate(pairs) if i % k == k - 1]}


@dataclass
class EncodedPairs:
    """Pairs as a padded `TokenSplit` (one example each, the prompt `context_only`), and how many
    prompts were cut from the left and answers cut at the window's end to fit."""

    split: TokenSplit
    cut_prompts: int
    cut_answers: int


def encode_pairs(pairs: Sequence[Pair], tokenizer: Any, window: int, name: str = "pairs",
                 cut_prompts: bool = False) -> EncodedPairs:
    """Encode pairs for windows of `window` = context_len + 1 tokens.

    A prompt must leave room for at least one answer token (≤ context_len tokens); a longer one is
    a DataError naming the pair (its `where`, e.g. "pairs.jsonl, line 7") unless `cut_prompts`,
    which keeps the prompt's last tokens (the downstream sets: a question after a long paragraph):
    those that fit beside the whole answer, but at least half a window's (or the whole prompt if
    shorter), so that a long answer is still scored given its question. An answer longer than the
    rest of the window is cut there and counted. An answer or prompt that encodes to no tokens is
    a DataError."""
    check_window(window)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    texts = [p.prompt for p in pairs] + [p.answer for p in pairs]
    encoded = encode_batch(texts) if encode_batch is not None else [tokenizer.encode(t) for t in texts]
    prompts, answers = encoded[:len(pairs)], encoded[len(pairs):]
    rows: list[tuple[list[int], list[int]]] = []  # (prompt, answer) ids
    cut_prompt, cut_answer = 0, 0
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        where = pairs[i].where or f"pair {i + 1} of {name}"
        if not prompt or not answer:
            raise DataError(f"{where}: its {'prompt' if not prompt else 'answer'} encodes to no tokens")
        if len(prompt) >= window and not cut_prompts:
            raise DataError(f"{where}: the prompt is {len(prompt)} tokens, more than the model's context of "
                            f"{window - 1} (model.context_len) that must also predict the answer's first token; "
                            "shorten the prompt")
        # The prompt's last tokens that fit beside the whole answer, or at least half a window's.
        keep = max(window - len(answer), min(len(prompt), window // 2))
        if cut_prompts and len(prompt) > keep:
            cut_prompt += 1
            prompt = prompt[len(prompt) - keep:]
        if len(prompt) + len(answer) > window:
            cut_answer += 1
            answer = answer[:window - len(prompt)]
        rows.append((prompt, answer))
    return EncodedPairs(rows_split(rows, name), cut_prompt, cut_answer)


def rows_split(rows: Sequence[tuple[Sequence[int], Sequence[int]]], name: str = "pairs") -> TokenSplit:
    """Rows (read ids, scored ids), each ≤ one window and read ≥ 1 token → a padded `TokenSplit`,
    one example per row: the read ids stored `context_only`, the scored ones as they are."""
    pieces = [np.concatenate([context_only(np.asarray(read, dtype=np.int64)), np.asarray(scored, dtype=np.int64)])
              for read, scored in rows]
    lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)
    ends = np.cumsum(lengths)
    tokens = torch.from_numpy(np.concatenate(pieces)) if pieces else torch.zeros(0, dtype=torch.int64)
    return TokenSplit([tokens], [np.stack([ends - lengths, ends], axis=1)], "padded", name)
