"""Training objectives: what a batch costs each kind of model (SPEC §3).

An objective is a module wrapping the model, so DDP (or FSDP) can wrap the pair and see one
`forward`: `objective(x, targets, seeds) -> (loss, stats)`; stats are detached scalars for the
progress bar. `seeds` (B,), one per example (`ebt.data.batches.Batch`), are where each example's
own random draws come from (the EBT's start candidates, the DiT's timestep and noise), so for
System 1, the Transformer++ and the DiT a batch split over processes or micro-batches is the same
computation; None draws from torch's generator.

System 2 is not, because some of its draws belong to a forward call, not to an example: its step
count, its per-position α factors, its Langevin noise and its replay picks come from torch's
generator once per call. With train.grad_accum > 1, each micro-batch draws its own step count (the
micro-batches of one step may think for different numbers of steps), its own α factors and noise,
and its own max(1, b // 2) replayed sequences from a buffer that already holds the sequences of
the step's earlier micro-batches. Over processes, torch's generator is seeded alike on every
process, so every process draws the same step count (FSDP2 needs as many passes on each) and the
same α factors and noise for its i-th row as the others for theirs; each process replays from its
own buffer. So a System 2 run is reproducible for a given number of processes and micro-batches,
not across them.

- `UnrolledThinking`: the EBT. Thinking is unrolled from random candidates and the task loss is
  put on the optimized candidates, so θ learns through ∇_y E; by default no loss is put on the
  energy's values. Two optional terms (issue 22, off by default): `think.ranking_weight` asks the
  energies of the candidates the descent visited to order them as their losses do
  (`ranking_loss`, first-order in θ), so that best-of-M can trust its pick; `think.monotone_weight`
  penalises a step that raised a position's loss (`monotone_penalty`).
  System 1 (the default ThinkConfig): N steps, a landscape per step, detach at every step, loss
  after every step averaged. System 2 (the s2 presets): one landscape, a random step count and
  per-position step size, Langevin noise, only the last step's graph and loss, and a replay
  buffer of recent final candidates; every trick is its own ThinkConfig field. With activation
  checkpointing (`ebt.models.set_activation_checkpointing`) every step that builds the
  second-order graph is recomputed in the backward pass (`ebt.think.Checkpointed`).
- `DirectPrediction`: the Transformer++: one forward pass, the task loss on its output.
- `NoisePrediction`: the DiT image baseline: ε-prediction on the low-noise timesteps (SPEC §5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebt.baselines.diffusion import add_noise
from ebt.config import RunConfig
from ebt.data.batches import example_normal, example_randint
from ebt.energy import inner_optimizer
from ebt.errors import CheckpointError
from ebt.memory import check_fits
from ebt.models import describe_sizes, largest_size, model_size
from ebt.tasks import make_task
from ebt.think import think


class UnrolledThinking(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        size = model.think_config.replay_buffer_size
        self.replay = ReplayBuffer(size) if size else None

    def forward(self, x: Tensor, targets: Tensor, seeds: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        model, cfg = self.model, self.model.think_config
        fresh = x.shape[0]
        y = model.initial_candidate(x, 1, seeds=seeds).squeeze(1)  # (B, S, C)
        if self.replay is not None and len(self.replay):
            # Half a batch of recent sequences, resumed from their final candidates (SPEC §3).
            x_r, targets_r, y_r = self.replay.sample(max(1, fresh // 2), x.device)
            x, targets, y = torch.cat((x, x_r)), torch.cat((targets, targets_r)), torch.cat((y, y_r))
        steps = cfg.steps
        if cfg.min_steps:
            steps = int(torch.randint(cfg.min_steps, cfg.steps + 1, ()))
        alpha = model.alpha
        if cfg.randomize_step_size:  # one factor per (sequence, position), broadcast over samples and V
            alpha = alpha * torch.empty(x.shape[0], 1, x.shape[1], 1, device=x.device).uniform_(0.5, 2.0)
        energy = model.landscapes(x, steps=steps)
        thought = think(
            energy,
            y.unsqueeze(1),  # (B, 1, S, C): one sample per position
            steps=steps,
            step_size=alpha,
            prepare=model.task.prepare,
            create_graph=True,
            truncate_graph=cfg.truncate_graph,
            detach_steps=cfg.detach_steps,
            langevin_std=cfg.langevin_std,
            optimizer=inner_optimizer(cfg),
        )
        final = thought.y.squeeze(1)  # (B, S, C)
        if self.replay is not None:
            self.replay.add(x[:fresh], targets[:fresh], final[:fresh].detach())
        if cfg.loss_every_step:
            loss = torch.stack([model.task.loss(c.squeeze(1), targets) for c in thought.candidates]).mean()
        else:
            loss = model.task.loss(final, targets)
        stats = {
            # the fresh sequences' prediction loss, comparable with Transformer++
            "loss": model.task.loss(final[:fresh], targets[:fresh]).detach(),
            "energy_gap": (thought.energies[0].mean() - thought.energies[-1].mean()).detach(),
            "alpha": model.alpha.detach(),
        }
        visited = [y.unsqueeze(1), *thought.candidates]  # (B, 1, S, C) each: the start, then each step's
        if cfg.monotone_weight:
            penalty = monotone_penalty(model.task, visited, targets)
            loss, stats["monotone"] = loss + cfg.monotone_weight * penalty, penalty.detach()
        if cfg.ranking_weight:
            if cfg.ranking_samples > 1:  # more candidates of the same positions, from other starts
                visited += other_starts(model, energy, x, cfg.ranking_samples - 1, steps, alpha)
            ranking = ranking_loss(model, energy, visited, targets, steps, cfg.ranking_temperature)
            loss, stats["ranking"] = loss + cfg.ranking_weight * ranking, ranking.detach()
        return loss, stats


def ranking_loss(model: nn.Module, energy, visited: list[Tensor], targets: Tensor, steps: int,
                 temperature: float) -> Tensor:
    """The listwise ranking loss that asks the energy to order candidates of one position as their
    losses do (`think.ranking_weight`; a ListNet-style cross-entropy): for the N candidates a
    position's descents visited (`visited`: tensors (B, M, S, C), N candidates in all), the
    target distribution q = softmax(−loss/τ) over them (τ = `temperature`, nats) against the
    energy's softmax(−E), E of each candidate scored afresh in the last landscape with the
    candidates detached, so its gradient reaches θ to first order only (one more candidate pass
    over N candidates, no second-order term). The mean of −Σ q log softmax(−E) over scored
    positions."""
    pool = torch.cat([c.detach() for c in visited], dim=1)  # (B, N, S, C), N = Σ of the candidates' M
    with torch.no_grad():
        losses = model.task.position_losses(pool, targets)  # (B, N, S)
        q = torch.softmax(-(losses - losses.amin(dim=1, keepdim=True)) / temperature, dim=1)  # a tiny τ: one-hot
    e = energy(model.task.prepare(pool), steps - 1)  # (B, N, S), graph to θ
    each = -(q * torch.log_softmax(-e.float(), dim=1)).sum(dim=1)  # (B, S)
    scored = model.task.scored(targets).to(each.dtype)
    return (each * scored).sum() / scored.sum().clamp_min(1)


def other_starts(model: nn.Module, energy, x: Tensor, samples: int, steps: int, alpha: Tensor) -> list[Tensor]:
    """The candidates (B, M, S, C) that `samples` = M more descents from fresh starts visit (the
    start, then each step's), for the ranking loss (`think.ranking_samples`): they share the
    training descent's context passes (`energy`), its steps and α, and run first-order (no graph
    to θ: only the ranking loss's own scoring pass trains on them). Drawn from torch's generator."""
    cfg = model.think_config
    start = model.initial_candidate(x, samples)
    thought = think(energy, start, steps=steps, step_size=alpha.detach(), prepare=model.task.prepare,
                    langevin_std=cfg.langevin_std, optimizer=inner_optimizer(cfg))
    return [start, *thought.candidates]


def monotone_penalty(task, visited: list[Tensor], targets: Tensor) -> Tensor:
    """Σ over steps of the mean over scored positions of max(0, loss_k − loss_{k−1})
    (`think.monotone_weight`): a hinge on each step that raised a position's loss, nothing for one
    that lowered it (candidates `visited`, the start first, each (B, 1, S, C)). Only steps whose
    candidate carries the graph train θ (System 2's truncated graph: the last, against the
    detached one before it)."""
    losses = [task.position_losses(c.squeeze(1), targets) for c in visited]  # (B, S) each
    scored = task.scored(targets).to(losses[0].dtype)
    rises = [torch.relu(now - before) for before, now in zip(losses, losses[1:])]
    return sum((r * scored).sum() for r in rises) / scored.sum().clamp_min(1)


class ReplayBuffer:
    """FIFO of (context, targets, final candidate) for recent sequences, at most `size` of them.

    Storage is allocated on first use, on the device of the data, and never grows: size × S ×
    (C × 4 + 16) bytes; a loaded state moves there on its first use. It is saved with the training
    state (`state_dict`), because the batches it replays shape every later step: without it a
    resumed System 2 run would not continue exactly.
    """

    def __init__(self, size: int):
        self.size, self.count, self.next = size, 0, 0
        self.x = self.targets = self.y = None

    def __len__(self) -> int:
        return self.count

    def add(self, x: Tensor, targets: Tensor, y: Tensor) -> None:
        self._place(x.device)
        if self.x is None:
            self.x = x.new_empty(self.size, *x.shape[1:])  # (N, S)
            self.targets = targets.new_empty(self.size, *targets.shape[1:])
            self.y = y.new_empty(self.size, *y.shape[1:])  # (N, S, C)
        n = min(x.shape[0], self.size)
        slots = (self.next + torch.arange(n, device=x.device)) % self.size
        self.x[slots], self.targets[slots], self.y[slots] = x[-n:], targets[-n:], y[-n:]
        self.next = (self.next + n) % self.size
        self.count = min(self.count + n, self.size)

    def sample(self, n: int, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
        """`n` stored sequences picked at random (with replacement), on `device`, where the data is."""
        self._place(device)
        index = torch.randint(0, self.count, (n,), device=self.x.device)
        return self.x[index], self.targets[index], self.y[index]

    def _place(self, device: torch.device | str) -> None:
        if self.x is not None and self.x.device != torch.device(device):
            self.x, self.targets, self.y = (t.to(device) for t in (self.x, self.targets, self.y))

    def state_dict(self) -> dict[str, Any]:
        """Counters and contents, on the CPU: ints and tensors only, so the training state loads
        with torch.load(weights_only=True)."""
        state: dict[str, Any] = {"size": self.size, "count": self.count, "next": self.next}
        if self.x is not None:
            state.update(x=self.x.cpu(), targets=self.targets.cpu(), y=self.y.cpu())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("size") != self.size:
            saved = state.get("size") if isinstance(state, dict) else state
            raise CheckpointError(f"the saved replay buffer holds {saved!r} sequences but think.replay_buffer_size "
                                  f"is {self.size}; the training state is from another run")
        self.count, self.next = int(state["count"]), int(state["next"])
        if "x" in state:
            self.x, self.targets, self.y = (state[k] for k in ("x", "targets", "y"))


class DirectPrediction(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, targets: Tensor, seeds: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.model.task.loss(self.model(x), targets)
        return loss, {"loss": loss.detach()}


class NoisePrediction(nn.Module):
    """The DiT baseline (SPEC §5): ε-prediction on the low-noise range of the schedule.

    x are the noisy training images, ignored: the clean targets x₀ are noised afresh at a
    timestep drawn uniformly from 0 … `model.max_timestep` (the training level's), and the loss is
    the MSE between the predicted and the true noise (DDPM's simple loss).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, targets: Tensor, seeds: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if seeds is None:
            t = torch.randint(0, self.model.max_timestep + 1, (targets.shape[0],), device=targets.device)  # (B,)
            noise = torch.randn_like(targets)  # (B, C, H, W)
        else:  # each image's own draws (streams 1 and 2: stream 0 noised the data's input)
            t = example_randint(seeds, self.model.max_timestep + 1, targets.device, stream=1)
            noise = example_normal(seeds, targets.shape[1:], targets.device, targets.dtype, stream=2)
        loss = torch.nn.functional.mse_loss(self.model(add_noise(targets, t, noise), t), noise)
        return loss, {"loss": loss.detach()}


def make_objective(model: nn.Module) -> nn.Module:
    if hasattr(model, "think_config"):
        return UnrolledThinking(model)
    return NoisePrediction(model) if hasattr(model, "max_timestep") else DirectPrediction(model)


def check_training_memory(config: RunConfig, device: torch.device, processes: int = 1) -> None:
    """ConfigError, before the model is built, when what training holds cannot fit on `device`, each
    a lower bound (activations come on top): the model's weights, gradients and AdamW's two moments
    (16 bytes a float32 parameter, shared among the `processes` at best; `ebt.models.model_size`);
    a micro-batch's predictions, float32, one per thinking step for an EBT (`think` keeps every
    step's candidate); System 2's replay buffer (`ReplayBuffer`: size × S × (C × 4 + 16) bytes)."""
    parameters, _ = model_size(config)
    check_fits(16 * parameters // processes, device,
               f"training the model ({describe_sizes(config)}: {parameters:.3g} parameters; weights, gradients and "
               "AdamW's two moments in float32" + (f", over {processes} processes" if processes > 1 else "") + ")",
               largest_size(config))
    tc, ebt = config.train, config.model.kind == "ebt"
    values = make_task(config).example_values(config.model.context_len)
    examples, steps = max(1, tc.batch_size // processes // tc.grad_accum), config.think.steps if ebt else 1
    check_fits(examples * values * 4 * steps, device,
               f"a micro-batch's predictions (train.batch_size = {tc.batch_size} over {processes} process(es) and "
               f"train.grad_accum = {tc.grad_accum}: {examples} examples of {values} values"
               + (f", kept for each of think.steps = {steps}" if ebt else "") + ")",
               "think.steps" if ebt and steps > examples else "train.batch_size")
    size = config.think.replay_buffer_size if ebt else 0
    if size:
        check_fits(size * (values * 4 + 16 * config.model.context_len), device,
                   f"the replay buffer (think.replay_buffer_size = {size} sequences of {values} values)",
                   "think.replay_buffer_size")
