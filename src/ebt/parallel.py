"""How the training objective runs over processes: one process, DDP or FSDP2 (`train.parallel`).

The trainer sees one interface, `Parallel`:
  module                 what to call for a micro-batch: `module(x, targets, seeds) -> (loss, stats)`
  model, device          the model (its parameters are what the optimizer holds) and this process's device
  sync(last)             a context for one micro-batch's forward and backward; gradients are
                         synchronized across processes only on the last micro-batch of a step
  after_backward()       what must follow the backward of a step's last micro-batch (FSDP2: reshard)
  full_state_dict()      the model's weights as full tensors (a collective under FSDP2), for
                         checkpoints that load in a single process
  full_optimizer_state(optimizer) / load_optimizer_state(optimizer, state)
                         the optimizer state in `torch.optim.Optimizer.state_dict()` form with full
                         tensors, so a run resumes on any number of processes and any `parallel`;
  optimizer_state(optimizer)
                         the same as a part of the training state (state_dict / load_state_dict)

FSDP2 with second-order gradients (the EBT differentiates through ∇_y E). FSDP2's defaults free
the unsharded parameters after the first backward pass — the one `autograd.grad(E, y,
create_graph=True)` makes inside the forward — that the second-order graph still needs ("storage
of size 0"). What works (checked against one process: tests/test_parallel.py):
  - `fully_shard` each transformer block and the root (the objective, whose forward is the step);
  - `set_reshard_after_backward(False)` on the root (recursive), so parameters stay gathered for
    the whole step, then `reshard()` on every FSDP module after the step's backward (it is not
    recursive). Without it the next forward reuses stale unsharded copies after the optimizer
    step: the first step is right and every later one silently wrong;
  - methods other than `forward` that run a sharded block (`Block.forward_candidates`, the
    candidate stream; `Block.keys_values`, the context's last block) registered with
    `register_fsdp_forward_method`;
  - the optimizer holds the sharded parameters (DTensors), read after `fully_shard`.
So parameters are gathered whole during a step while gradients and optimizer state stay sharded
(ZeRO-2-like memory): FSDP2 here saves gradient and optimizer memory, not parameter memory.

FSDP2 with activation checkpointing (`train.activation_checkpointing`): the objective is one FSDP2
unit, the root alone, not one per block. An EBT's training recomputes whole thinking steps in the
backward pass (`ebt.think.Checkpointed`); with a unit per block, the recomputation runs the
blocks' FSDP2 hooks again in another state (the step's ∇_y E ran their backward hooks inside the
forward), saves a different number of tensors and fails torch's check (CheckpointError). With one
unit no hook runs inside a step: the recomputed step sees the parameters the forward saw, gathered
once for the step. The cost is the gradients: a unit per block reduce-scatters a block's gradients
as the backward reaches it, the root unit only once the backward is done, so the whole unsharded
gradients are held at the end of the backward (about P more at the peak; docs/results.md, "FSDP2
with activation checkpointing", measures both layouts).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ebt.distributed import Distributed
from ebt.errors import ConfigError
from ebt.nn import AdaLNBlock, Block

# Methods of a block that run its parameters outside `forward` (the EBT's two streams).
FORWARD_METHODS = ("forward_candidates", "keys_values")


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor"


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor as a whole: a DTensor (FSDP2's parameters, gradient norm) gathered (a collective)."""
    return t.full_tensor() if _is_dtensor(t) else t


class Parallel:
    """One process: the objective as it is."""

    def __init__(self, objective: nn.Module, model: nn.Module, device: torch.device | str = "cpu"):
        self.module, self.model, self.device = objective, model, torch.device(device)

    def sync(self, last: bool):
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        pass

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: full_tensor(v.detach()) for k, v in self.model.state_dict().items()}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        state = optimizer.state_dict()
        state["state"] = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in state["state"].items()}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> OptimizerState:
        return OptimizerState(self, optimizer)


class OptimizerState:
    """An optimizer's state as a part of the training state: `state_dict()` with full tensors (a
    collective under FSDP2: every process calls it), `load_state_dict` from any run's."""

    def __init__(self, parallel: Parallel, optimizer: torch.optim.Optimizer):
        self.parallel, self.optimizer = parallel, optimizer

    def state_dict(self) -> dict:
        return self.parallel.full_optimizer_state(self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        self.parallel.load_optimizer_state(self.optimizer, state)


class DDP(Parallel):
    """DistributedDataParallel: weights replicated, gradients all-reduced (averaged) on the last
    micro-batch of a step (`no_sync` before it)."""

    def __init__(self, objective: nn.Module, model: nn.Module, device: torch.device):
        super().__init__(DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None),
                         model, device)

    def sync(self, last: bool):
        return contextlib.nullcontext() if last else self.module.no_sync()


class FSDP(Parallel):
    """FSDP2 (`fully_shard`) per block and at the root, or at the root alone (`one_unit`: with
    activation checkpointing), set up for second-order gradients (module docstring). Gradients are
    reduce-scattered (averaged) on the last micro-batch of a step."""

    def __init__(self, objective: nn.Module, model: nn.Module, dist: Distributed, device: torch.device,
                 one_unit: bool = False):
        try:
            from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
        except ImportError:  # torch < 2.6 keeps FSDP2 under _composable
            from torch.distributed._composable.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
        from torch.distributed.device_mesh import init_device_mesh

        # A block returns its keys/values as views (the heads transposed); torch warns that an
        # in-place op on such an output would skip FSDP2's all-gather. Nothing here modifies a
        # block's output in place (caches grow by torch.cat), and the weights match one process's.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor",
                                category=UserWarning)
        mesh = init_device_mesh(device.type, (dist.world_size,))
        blocks = [] if one_unit else [m for m in model.modules() if isinstance(m, (Block, AdaLNBlock))]
        for block in blocks:
            fully_shard(block, mesh=mesh)
            for name in FORWARD_METHODS:
                if hasattr(block, name):
                    register_fsdp_forward_method(block, name)
        fully_shard(objective, mesh=mesh)
        objective.set_reshard_after_backward(False)
        super().__init__(objective, model, device)
        self._fsdp_module = FSDPModule

    def sync(self, last: bool):
        self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        for m in self.module.modules():
            if isinstance(m, self._fsdp_module):
                m.reshard()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """A full optimizer state (any run's), each tensor sharded like its parameter."""
        from torch.distributed.tensor import distribute_tensor

        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = {}
        for i, s in state["state"].items():
            p = params[int(i)]
            sharded[i] = {k: distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
                          if _is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.shape else v
                          for k, v in s.items()}
        optimizer.load_state_dict({**state, "state": sharded})


def check(parallel: str, dist: Distributed) -> None:
    """ConfigError unless `parallel` is one of "ddp", "fsdp" and can run with these processes
    (FSDP2 needs torchrun's)."""
    if parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"train.parallel = {parallel!r} is not allowed; it must be 'ddp' or 'fsdp'")
    if parallel == "fsdp" and not dist.enabled:
        raise ConfigError("train.parallel = 'fsdp' shards the model over the processes torchrun starts, and this is "
                          "one process: launch with `torchrun --nproc_per_node N -m ebt.cli train ...` (N ≥ 2), or set "
                          "--train.parallel=ddp to train in one process (an FSDP2 run resumes so too: its "
                          "checkpoints load on any number of processes)")


def wrap(objective: nn.Module, model: nn.Module, parallel: str, dist: Distributed, device: torch.device,
         activation_checkpointing: bool = False) -> Parallel:
    """The objective run by `parallel` ("ddp" or "fsdp") over the processes of `dist` (one
    process: as it is, whatever `parallel` says); `activation_checkpointing` as the model was set
    (`ebt.models.set_activation_checkpointing`), which picks FSDP2's layout. Build the optimizer
    after this: under FSDP2 it must hold the sharded parameters."""
    check(parallel, dist)
    if not dist.enabled:
        return Parallel(objective, model, device)
    if parallel == "fsdp":
        return FSDP(objective, model, dist, device, one_unit=activation_checkpointing)
    return DDP(objective, model, device)
