"""Experiment trackers (`train.log_to`): the rows of metrics.jsonl, also sent to TensorBoard or
Weights & Biases.

The trainer writes each row in one place (`ebt.rundir.MetricsLog`), on the main process only, and
hands it to the tracker opened here: `log(row, step)` for every row, `close()` once when training
stops, however it stops. A tracker sees the numeric fields of a row named by the row's split
(`train/loss`, `validation/ppl`); lists (a text validation's `window_losses`) stay in metrics.jsonl.

- "tensorboard": `torch.utils.tensorboard.SummaryWriter` event files in RUN_DIR/tensorboard/ and
  the resolved config as text. A resumed run purges the events a crash left after its checkpoint
  (`purge_step`), as metrics.jsonl drops their rows.
- "wandb": one W&B run per run directory. Its id is kept in RUN_DIR/wandb-run.json, so --resume
  continues the same W&B run; W&B's files go to RUN_DIR/wandb/. Everything else comes from the
  environment, as W&B documents it: WANDB_MODE (`offline` needs no account or network), the project
  WANDB_PROJECT (default "ebt", kept with the id: a resumed run stays in its project),
  WANDB_ENTITY, WANDB_NAME (default: the run directory's name), WANDB_API_KEY.

Both packages are optional (`pip install 'energy-based-transformers[track]'`); `check` imports
the one a run names before the run writes anything.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from ebt.checkpoint import TENSORBOARD, WANDB_RUN
from ebt.config import RunConfig
from ebt.errors import CheckpointError, ConfigError
from ebt.files import atomic_write, read_json, standard_json
from ebt.packages import import_package

DEFAULT_WANDB_PROJECT = "ebt"


class Tracker:
    """Where the rows of metrics.jsonl also go; this one (train.log_to = "none") sends them nowhere."""

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        """Flush and stop; `exit_code` ≠ 0: training stopped on an error or a signal."""


def check(kind: str) -> None:
    """Import what tracker `kind` needs, so that a missing package stops the run before it starts."""
    if kind == "none":
        return
    _import(kind)


def open_tracker(kind: str, out: Path, config: RunConfig, step: int) -> Tracker:
    """The tracker of a run in `out` that starts (or, resumed, continues) after step `step`."""
    if kind == "tensorboard":
        return TensorBoard(out, config, step)
    if kind == "wandb":
        return WandB(out, config, step)
    return Tracker()


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A row's numeric fields by `split/field` (the step and lists left out)."""
    return {f"{row['split']}/{k}": float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard(Tracker):
    def __init__(self, out: Path, config: RunConfig, step: int):
        # Events at or after purge_step that an earlier session wrote (steps after the checkpoint
        # this run resumes from) are hidden from TensorBoard, so the curves read as one run.
        self.writer = _import("tensorboard")(str(out / TENSORBOARD), purge_step=step + 1 if step else None)
        # Indented: TensorBoard renders text as Markdown, and an indented block keeps the JSON as it is.
        config_text = "\n".join("    " + line for line in config.to_json().splitlines())
        self.writer.add_text("config", config_text, global_step=step)

    def log(self, row: dict[str, Any], step: int) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()


class WandB(Tracker):
    def __init__(self, out: Path, config: RunConfig, step: int):
        wandb = _import("wandb")
        saved = _wandb_run(out)
        run = saved or {"id": secrets.token_hex(6), "project": os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT}
        try:
            # resume="allow": the saved id continues its W&B run; a new id starts one. A resumed run
            # may change train.* fields (allow_val_change).
            self.run = wandb.init(project=run["project"], id=run["id"], resume="allow", dir=str(out),
                                  name=os.environ.get("WANDB_NAME") or out.resolve().name,
                                  config=config.to_dict(), allow_val_change=True)
        except wandb.errors.Error as e:
            raise ConfigError(f"train.log_to = 'wandb': W&B could not start ({e}); log in with `wandb login` "
                              "(or set WANDB_API_KEY), or track offline with WANDB_MODE=offline") from None
        if saved is None:  # only once W&B has started: a run that could not start leaves no run file
            atomic_write(out / WANDB_RUN, lambda p: p.write_text(standard_json(run, indent=2) + "\n"))

    def log(self, row: dict[str, Any], step: int) -> None:
        # W&B ignores a step below one it already has: after a crash, the steps between the
        # checkpoint and the crash keep the first attempt's values there (metrics.jsonl and
        # TensorBoard drop them).
        self.run.log(scalars(row), step=step)

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def _wandb_run(out: Path) -> dict[str, str] | None:
    """The W&B run (id, project) saved in `out`, None if it has none."""
    path = out / WANDB_RUN
    if not path.exists():
        return None
    saved = read_json(path)
    if not (isinstance(saved, dict) and all(isinstance(saved.get(k), str) and saved[k] for k in ("id", "project"))):
        raise CheckpointError(f"{path} must hold the W&B run's \"id\" and \"project\" (strings); "
                              "remove it to start a new W&B run")
    return saved


def _import(kind: str):
    """TensorBoard's SummaryWriter or the wandb module; PackageError (one line naming train.log_to)
    when the package is not installed or fails to import."""
    module = import_package("torch.utils.tensorboard" if kind == "tensorboard" else kind, package=kind,
                            needed_for=f"train.log_to = {kind!r}", field="train.log_to",
                            pip=f"'energy-based-transformers[track]' (or: pip install {kind})",
                            otherwise="set train.log_to to 'none'")
    return module.SummaryWriter if kind == "tensorboard" else module
