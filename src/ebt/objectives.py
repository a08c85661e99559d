"""Training objectives: what a batch costs each kind of model (SPEC §3).

An objective is a module wrapping the model, so DDP can wrap the pair and see one `forward`:
`objective(x, targets) -> (loss, stats)`; stats are detached scalars for the progress bar.

- `UnrolledThinking`: the EBT. Thinking is unrolled from random candidates and the task loss is
  put on the optimized candidates, so θ learns through ∇_y E. No loss is put on the energy.
  System 1 (the default ThinkConfig): N steps, a landscape per step, detach at every step, loss
  after every step averaged.
- `DirectPrediction`: the Transformer++: one forward pass, the task loss on its output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt.think import think


class UnrolledThinking(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        model, cfg = self.model, self.model.think_config
        y = model.task.initial_candidate(x.shape, model.candidate_embedding.weight)  # (B, S, C)
        thought = think(
            model.landscapes(x),
            y.unsqueeze(1),  # (B, 1, S, C): one sample per position
            steps=cfg.steps,
            step_size=model.alpha,
            prepare=model.task.prepare,
            create_graph=True,
            detach_steps=cfg.detach_steps,
        )
        losses = [model.task.loss(c.squeeze(1), targets) for c in thought.candidates]
        loss = torch.stack(losses).mean() if cfg.loss_every_step else losses[-1]
        stats = {
            "loss": losses[-1].detach(),  # the prediction's loss, comparable with Transformer++
            "energy_gap": (thought.energies[0].mean() - thought.energies[-1].mean()).detach(),
            "alpha": model.alpha.detach(),
        }
        return loss, stats


class DirectPrediction(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.model.task.loss(self.model(x), targets)
        return loss, {"loss": loss.detach()}


def make_objective(model: nn.Module) -> nn.Module:
    return UnrolledThinking(model) if hasattr(model, "think_config") else DirectPrediction(model)
