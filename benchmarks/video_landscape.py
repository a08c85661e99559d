"""The shape of a trained video EBT's energy landscape around the true next frame (docs/results.md).

For candidates y = t + r·u (t the true next latent, u a random unit direction, r a distance) it
prints the mean energy, |∇_y E|, the step α|∇_y E| and the cosine between −∇_y E and the way
back to t. A quadratic bowl would give |∇E| growing with r; a cone gives a constant |∇E|, so a
thinking step has one length whatever the distance.

    .venv/bin/python benchmarks/video_landscape.py runs/video/ebt
"""

from __future__ import annotations

import sys

import torch

from ebt.runs import load_run
from ebt.rundata.video import clips, encode


def main(path: str) -> None:
    torch.manual_seed(0)
    run = load_run(path)
    model = run.model
    frames, _ = clips(run.config, "validation")
    latents = encode(run.frame_encoder, frames[:64])  # (N, T, C)
    x, t = latents[:, :-1], latents[:, 1:]
    alpha = float(model.alpha.detach())
    print(f"{path}: α = {alpha:.4g}; |t| = {t.norm(dim=-1).mean():.3f} (latent norm of a frame)")
    print(f"{'distance r':>10} {'energy':>9} {'|∇E|':>8} {'α|∇E|':>8} {'cos(−∇E, t−y)':>14}")
    for r in (0.0, 0.5, 1, 2, 4, 8, 16):
        u = torch.nn.functional.normalize(torch.randn_like(t), dim=-1)
        y = (t + r * u).requires_grad_()
        e = model.energy(x, y, step=model.think_config.steps - 1)  # (N, S)
        (g,) = torch.autograd.grad(e.sum(), y)
        cos = torch.nn.functional.cosine_similarity(-g, t - y.detach(), dim=-1).mean() if r else float("nan")
        norm = g.norm(dim=-1).mean()
        print(f"{r:>10g} {e.mean():>9.3f} {norm:>8.4f} {alpha * norm:>8.3f} {cos:>14.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
