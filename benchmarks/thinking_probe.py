"""Why thinking longer does or does not help (docs/results.md, "System 2 thinking"): for 16
windows of each set, think for 1, 2, 3 and 5 steps and print the prediction's mean entropy,
loss and accuracy, the final energy and the candidate logits' size.

    .venv/bin/python benchmarks/thinking_probe.py runs/thinking/s2-full
"""

import json
import sys

import torch

import ebt
from ebt.data.tokens import encode_documents, sequential_windows
from ebt.data.corpus import load_corpus


def main(path: str) -> None:
    run = ebt.load_run(path)
    window = run.config.model.context_len + 1
    for name in (run.config.data.corpus, "kjv", "austen", "dyck", "arithmetic"):
        corpus = load_corpus(name)
        documents = corpus.validation if name == run.config.data.corpus else corpus.train + corpus.validation
        batch = next(sequential_windows(encode_documents(documents, run.tokenizer), window, 16))
        x, targets = batch[:, :-1], batch[:, 1:]
        row = {"data": name}
        for steps in (1, 2, 3, 5):
            thought = run.model.think(x, steps=steps, generator=torch.Generator().manual_seed(0), score_final=True)
            logp = torch.log_softmax(thought.y.float(), -1)  # (B, S, V)
            row[f"steps={steps}"] = {
                "entropy": round(float(-(logp.exp() * logp).sum(-1).mean()), 3),
                "loss": round(float(-logp.gather(-1, targets[..., None]).mean()), 3),
                "accuracy": round(float((logp.argmax(-1) == targets).float().mean()), 4),
                "energy": round(float(thought.energies[-1].mean()), 3),
                "max_logit": round(float(thought.y.abs().amax(-1).mean()), 2),
            }
        print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/thinking/s2-full")
