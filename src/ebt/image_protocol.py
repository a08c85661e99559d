"""The image evaluation protocol (SPEC §5): how each image model denoises a noisy image at a
budget of forward passes, and the budgets its PSNR-against-passes curve is drawn at.

The models keep only their networks; what a budget is differs between them:

- the bidirectional EBT thinks from the noisy image (`BidirectionalEBT.think`): its budget is
  thinking options (steps, samples, …). It is never told the noise level, so its curve is the
  same 1 … 4 thinking steps at every level.
- the DiT runs the DDIM sampler from the level's timestep t (`diffusion.ddim_denoise`): its
  budget is `steps`, the network passes on an even grid of timesteps from t to 0 (default
  t + 1, every timestep; the command line's `--steps`), and `repeats`, recursive re-runs of the
  whole sampler. Its curve: sub-grids of 1, 2, 5, 10 and 25 passes, the full grid, and the
  full grid run twice.

Read next: `ebt.evaluate.denoise_metrics` (PSNR at one budget), `ebt.denoise` (`ebt denoise`).
"""

from __future__ import annotations

from torch import Tensor, nn

from ebt.baselines.diffusion import ddim_denoise, timestep
from ebt.baselines.dit import DiT
from ebt.errors import ConfigError
from ebt.options import ThinkingOptions
from ebt.think import Thought

EBT_STEPS = (1, 2, 3, 4)  # thinking steps of the EBT's curve
DDIM_PASSES = (1, 2, 5, 10, 25)  # sub-grids of the DiT's curve, each as far as the level's t + 1


def budgets(model: nn.Module, noise_level: float) -> list[dict]:
    """The budgets of `model`'s curve at `noise_level`, each the keywords `options` and `repeats`
    of `denoise` (see the module docstring). ConfigError for a level off the schedule (DiT)."""
    if isinstance(model, DiT):
        full = timestep(noise_level) + 1
        passes = sorted({b for b in (*DDIM_PASSES, full) if b <= full})
        return [{"options": ThinkingOptions(steps=b), "repeats": 1} for b in passes] + [{"options": None, "repeats": 2}]
    return [{"options": ThinkingOptions(steps=s), "repeats": 1} for s in EBT_STEPS]


def denoise(model: nn.Module, noisy: Tensor, noise_level: float, options: ThinkingOptions | None = None, *,
            repeats: int = 1, **given) -> Thought:
    """Denoise images noisy (B, C, H, W), pixels in [-1, 1], noised at `noise_level`, at one
    budget: a Thought whose `y` holds the images ((B, 1, C, H, W) from an EBT, (B, C, H, W) from
    a DiT) and whose `forward_passes` counts the network passes per image.

    An EBT thinks with `options` (or their fields as keywords) and `repeats` must stay 1. A DiT
    runs DDIM with `options.steps` passes, `repeats` times; any other option set raises
    ConfigError (it cannot think), as do passes outside 1 … t + 1 and repeats outside 1 … 100."""
    options = ThinkingOptions.of(options, **given)
    if isinstance(model, DiT):
        refused = set(options.given()) - {"steps"}
        if refused:
            error = options.refused_by("a DiT", refused)
            raise ConfigError(f"{error} (a DiT takes steps, its DDIM passes, and repeats)", field=error.field)
        images, passes = ddim_denoise(model, noisy, noise_level, options.steps, repeats)
        return Thought([images], forward_passes=passes)
    if repeats != 1:
        raise ConfigError(f"repeats = {repeats!r} is not allowed for an EBT; it must be 1 (repeats re-runs a DiT's "
                          "DDIM sampler)", field="repeats")
    return model.think(noisy, options)
