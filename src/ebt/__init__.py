"""Energy-Based Transformers (Gladstone et al., arXiv 2507.02092) in PyTorch.

    import ebt
    model = ebt.load("runs/ebt")                  # a trained EBT or Transformer++ (or a Hub id "user/name")
    thought = model.think(ids, steps=3, samples=5)  # EBT: logits (B, S, V), per-step energies
    model.save_pretrained("export/ebt")           # a loadable run directory with a model card; push_to_hub(id)

Start reading at `ebt/think.py` (energy descent), then `ebt/energy.py` (the energy transformer).
"""

from ebt.options import InnerOptimizer, ThinkingOptions
from ebt.think import Thought, think

_RUNS = ("Pretrained", "Run", "load", "load_run")


def __getattr__(name: str):
    # ebt.runs (and huggingface_hub, which it builds on) is imported on first use, so that the
    # command line starts first and names a broken install of a package in one line (ebt.packages).
    if name in _RUNS:
        from ebt import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'ebt' has no attribute {name!r}")


__all__ = ["load", "load_run", "Run", "Pretrained", "think", "Thought", "ThinkingOptions", "InnerOptimizer"]
