"""Tasks: what a candidate is and how a prediction is scored, one file per modality (SPEC §2).

A task object (no parameters, no data, no files) is what the models and `think` talk to; models
are handed one (`ebt.models.build_model`):
  candidate_dim                 size of one candidate vector (text: the vocabulary; video: the latent)
  example_values(context_len)   values in one example's candidate (text, video: context_len ×
                                candidate_dim; images: the image), for memory estimates
  input_embedding(dim)          the module taking one context element to width D (text: a token
                                table nn.Embedding(V, D); video: nn.Linear(latent, D, bias=False))
  initial_candidate(x, samples, like, generator, seeds)
                                where thinking starts for input x, M samples (text: N(0, I) logits
                                (B, M, S, V), drawn from `generator` or, in training, from each
                                example's seed; images: the noisy image itself)
  prepare(y)                    the form the energy model reads and ∇E is taken against (text:
                                softmax; video and images: the identity)
  loss(y, targets)              mean loss of a prediction (text: cross-entropy in nats; images and
                                video: Smooth-L1)
  loss_metrics(loss)            what a mean loss means to a reader (text: {"ppl": e^loss})
  position_losses(y, targets)   the loss of each candidate at each position (…, S), for ranking
                                candidates (`think.ranking_weight`) and the verifier's diagnostics
  scored(targets)               where a prediction is scored (text: not at padding), bool (B, S)
  mix(y, weights)               soft selection: the weighted mixture of M samples' predictions
  decoded(y)                    text only: what a prediction decodes to (the one-hot of its argmax)

Where the data comes from, and how a trained run is scored and used, sit above the models:
`ebt.rundata` (a run's data), `ebt.evaluate` (metrics), `ebt.commands` (the commands).

Read next: `text.py`, then `ebt/energy.py` (the model a task is handed to).
"""

from __future__ import annotations

from ebt.config import RunConfig
from ebt.errors import ConfigError
from ebt.tasks.image import Denoising
from ebt.tasks.text import NextToken
from ebt.tasks.video import NextFrame

TASKS = {"text": NextToken, "image": Denoising, "video": NextFrame}  # model.task → its task object


def make_task(config: RunConfig) -> NextToken | Denoising | NextFrame:
    """The task object of a run, built from its task's config section (`config.modality`)."""
    if config.model.task not in TASKS:
        raise ConfigError(f"model.task = {config.model.task!r} is not a known task; known: {', '.join(map(repr, TASKS))}")
    return TASKS[config.model.task].from_config(config.modality)
