"""Where thinking starts (docs/results.md): the size of ∇_p E and the first training loss of the
text EBT presets at initialization, across widths and vocabularies, with the energy head Xavier-
initialized (SPEC §2) and at zero (the presets' `model.energy_head_init`). Random tokens, 4 × 64
positions, seed 0; a few seconds on a CPU.

    .venv/bin/python benchmarks/thinking_start.py [TEXT_EBT_PRESET]
"""

import argparse
import math

import torch

from ebt.models import build_model
from ebt.objectives import make_objective
from ebt.presets import PRESETS, preset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", default="text-ebt-tiny", help="a text EBT preset (default text-ebt-tiny)")
    name = parser.parse_args(argv).preset
    text_ebts = sorted(n for n, make in PRESETS.items() if n.startswith("text-ebt-"))
    if name not in text_ebts:
        parser.error(f"preset {name!r} is not a text EBT preset; one of: {', '.join(text_ebts)}")
    print(f"{name}: α₀ = {preset(name).think.step_size:g}")
    print("| V | width | std(∇_p E), Xavier head | α₀ · std | first loss, Xavier head | first loss, zero head | ln V |")
    print("|---|---|---|---|---|---|---|")
    for vocab in (256, 2048, 8192):
        for dim in (32, 64, 128, 256):
            row = {}
            for init in ("xavier", "zero"):
                config = preset(name)
                config.model.dim, config.model.n_heads, config.model.energy_head_init = dim, 4, init
                config.text.vocab_size = vocab
                torch.manual_seed(0)
                model = build_model(config.validated())
                x, targets = torch.randint(0, vocab, (4, 64)), torch.randint(0, vocab, (4, 64))
                p = torch.softmax(torch.randn(4, 1, 64, vocab), -1).requires_grad_()
                (grad,) = torch.autograd.grad(model.landscapes(x)(p, 0).sum(), p)
                row[init] = (float(grad.std()), float(make_objective(model)(x, targets)[0].detach()))
            std, alpha = row["xavier"][0], config.think.step_size
            print(f"| {vocab} | {dim} | {std:.1f} | {alpha * std:,.0f} | {row['xavier'][1]:,.0f} | "
                  f"{row['zero'][1]:.3f} | {math.log(vocab):.3f} |")


if __name__ == "__main__":
    main()
