"""Energy-Based Transformers (Gladstone et al., arXiv 2507.02092) in PyTorch.

    import ebt
    model = ebt.load("runs/ebt")                  # a trained EBT or Transformer++
    thought = model.think(ids, steps=3, samples=5)  # EBT: logits (B, S, V), per-step energies

Start reading at `ebt/think.py` (energy descent), then `ebt/energy.py` (the energy transformer).
"""

from ebt.runs import Run, load, load_run
from ebt.think import ThinkingOptions, Thought, think

__all__ = ["load", "load_run", "Run", "think", "Thought", "ThinkingOptions"]
