"""Tasks: what a candidate is and how a prediction is scored, one file per modality.

A task is a small object, no parameters, with:
  candidate_dim            size of one candidate vector (text: the vocabulary)
  initial_candidate(shape) where thinking starts (text: N(0, I) logits)
  prepare(y)               the form the energy model reads and ∇E is taken against (text: softmax)
  loss(y, targets)         mean loss of a prediction (text: cross-entropy in nats)
Core code (models, `think`, the trainer) only talks to this interface.
"""

from ebt.errors import ConfigError
from ebt.tasks.text import NextToken


def make_task(name: str, vocab_size: int):
    if name == "text":
        return NextToken(vocab_size)
    raise ConfigError(f"model.task = {name!r} is not a known task; known: 'text'")
