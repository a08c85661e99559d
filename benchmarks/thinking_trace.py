"""What limits an EBT's thinking gains (docs/results.md, "Which System 2 recipe thinks best"): on
16 windows of validation and of each prose OOD set, per thinking step up to 10 the mean energy
and loss (nats per token) at the trained α and at half of it; and for best-of-10 at 3 steps, the
loss of the sample the energy picks against the mean sample, the best one (an oracle), and how
often samples agree on the most likely token.

    .venv/bin/python benchmarks/thinking_trace.py RUN [RUN ...] > trace.jsonl

One JSON line per run and set: under "alpha=A", "energy" (steps + 1 values: the start, then after
each step) and "loss" (steps values: after each step); under "best_of_10", the losses (nats per
token) of the picked, mean and oracle samples, the share of positions whose samples agree on the
most likely token with the first sample, and the spread (std) of the samples' final energies.
"""

import argparse
import json
import sys

import torch

import ebt
import ebt.errors
from ebt.data.corpus import load_corpus
from ebt.data.tokens import encode_documents, sequential_windows
from ebt.energy import inner_optimizer
from ebt.models import is_energy_based
from ebt.think import think

SETS = ("validation", "kjv", "austen")


def windows(run, name: str) -> torch.Tensor:
    corpus = load_corpus(run.config.data.corpus if name == "validation" else name)
    documents = corpus.validation if name == "validation" else corpus.train + corpus.validation
    return next(sequential_windows(encode_documents(documents, run.tokenizer), run.config.model.context_len + 1, 16))


def losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (…, S) of logits (…, S, V) against targets broadcast to them."""
    logp = torch.log_softmax(logits.float(), -1)
    return -logp.gather(-1, targets.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def trace(run, name: str) -> dict:
    model, batch = run.model, windows(run, name)
    x, targets = batch[:, :-1], batch[:, 1:]
    row = {"run": str(run.path), "data": name}
    for scale in (1.0, 0.5):
        alpha = float(model.alpha) * scale
        thought = model.think(x, steps=10, step_size=alpha, score_final=True, generator=torch.Generator().manual_seed(0))
        row[f"alpha={alpha:g}"] = {"energy": [round(float(e.mean()), 3) for e in thought.energies],
                                   "loss": [round(float(losses(c, targets).mean()), 4) for c in thought.candidates]}
    # Best-of-10 at 3 steps, every sample kept: (B, M, S, V).
    generator = torch.Generator().manual_seed(0)
    y = model.task.initial_candidate(x, 10, model.step_size, generator)
    with torch.no_grad():
        t = think(model.landscapes(x, differentiable=False), y, steps=3, step_size=model.alpha.detach(),
                  prepare=model.task.prepare, score_final=True, generator=generator,
                  optimizer=inner_optimizer(model.think_config))
    each = losses(t.candidates[-1], targets[:, None, :])  # (B, M, S)
    picked = each.gather(1, t.energies[-1].argmin(1, keepdim=True)).squeeze(1)
    top = t.candidates[-1].argmax(-1)  # (B, M, S)
    row["best_of_10"] = {
        "picked_loss": round(float(picked.mean()), 4), "mean_sample_loss": round(float(each.mean()), 4),
        "oracle_loss": round(float(each.min(1).values.mean()), 4),
        "argmax_agreement": round(float((top == top[:, :1]).float().mean()), 4),
        "energy_spread": round(float(t.energies[-1].std(1).mean()), 4),
    }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="text EBT run directories")
    args = parser.parse_args(argv)
    for path in args.runs:
        try:
            run = ebt.load_run(path)
        except ebt.errors.EBTError as error:
            parser.exit(2, f"thinking_trace.py: error: {error}\n")
        if run.config.model.task != "text" or not is_energy_based(run.model):
            parser.exit(2, f"thinking_trace.py: error: {path} is a {run.config.model.task} {run.config.model.kind} run; "
                           "this traces text EBT runs\n")
        for name in SETS:
            print(json.dumps(trace(run, name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
