"""Finished sweeps read back as scaling curves: each point's x on an axis and its validation
windows' losses, what `ebt.scaling.fit.fit_scaling` takes (SPEC §7).

x by axis: data, training tokens at the validation step (steps × batch × context); width,
model.dim; depth, model.n_layers; batch, tokens per batch (batch × context); params,
non-embedding parameters; flops, training FLOPs to that step (`ebt.bench.train_flops_per_token`
× tokens, Hessian-vector products counted for the EBT). A ratio of log–log slopes does not change
when x is multiplied by a constant, so tokens and sequences per batch give the same rate.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ebt.bench import train_flops_per_token
from ebt.checkpoint import DATA, load_config, validation_rows
from ebt.config import RunConfig
from ebt.errors import ConfigError, DataError
from ebt.evaluate import Scoring, evaluate
from ebt.files import read_json
from ebt.models import build_model, count_parameters
from ebt.options import ThinkingOptions
from ebt.rundata import load_data
from ebt.runs import load_run
from ebt.scaling.sweep import KINDS, LOGS, Sweep, data_steps, point_state
from ebt.suite import BUDGETS

FIT_AXES = ("data", "width", "depth", "batch", "params", "flops")
X_LABELS = {"data": "training tokens", "width": "model width (model.dim)", "depth": "blocks (model.n_layers)",
            "batch": "tokens per batch", "params": "non-embedding parameters", "flops": "training FLOPs"}
MODEL_SIZE_AXES = ("width", "depth", "params")  # sweeps that can be refit on parameters


@dataclass
class Measured:
    """One point of a curve: the run directory and step it was validated at, and its windows' losses."""

    run: Path
    kind: str
    seed: int
    step: int
    final: bool  # the run's last step (its model.safetensors); else a kept checkpoint
    x: float
    window_losses: list[float]


def fit_axis(sweeps: list[Sweep], axis: str | None) -> str:
    """The axis to fit sweeps on: the one they share, or `axis` where it applies to all of them
    (params for width/depth/params sweeps; flops for any)."""
    axes = sorted({s.axis for s in sweeps})
    if axis is None:
        if len(axes) == 1:
            return axes[0]
        if set(axes) <= set(MODEL_SIZE_AXES):
            return "params"
        raise ConfigError(f"the sweeps vary different axes ({', '.join(axes)}); fit them separately")
    if axis not in FIT_AXES:
        raise ConfigError(f"axis {axis!r} is not a scaling axis; it must be one of {', '.join(FIT_AXES)}",
                          field="axis")
    for a in axes:
        ok = axis == a or axis == "flops" or (axis == "params" and a in MODEL_SIZE_AXES)
        if not ok:
            raise ConfigError(f"axis {axis} does not apply to a {a} sweep (it applies to "
                              f"{'width, depth and params' if axis == 'params' else axis} sweeps; flops to any)",
                              field="axis")
    if "data" in axes and len(axes) > 1:
        raise ConfigError("a data sweep is read at its checkpoints; fit it apart from the other sweeps")
    return axis


METRICS = ("loss", "bpb")  # what a fit can take: nats per token, or bits per byte


def collect(dirs: list[Path], axis: str | None = None, skip_failed: bool = False, metric: str = "loss"
            ) -> tuple[str, list[Measured], list[dict]]:
    """(axis, the measured points, the excluded points with why) of the sweeps in `dirs`.

    `metric` "loss" takes each validation's window losses (nats per token); "bpb" the same in bits
    per byte, each window's loss × the validation's bpb / loss (its bytes per token over all the
    windows; a text run whose validation rows have bpb).

    A point that is unfinished, failed or non-finite is an error naming it, unless `skip_failed`,
    when it is left out and listed. Points must share their validation windows (same data, same
    tokenizer settings, context and number of windows): else a ConfigError naming the point.
    """
    sweeps = [(Path(d), Sweep.load(Path(d))) for d in dirs]
    axis = fit_axis([s for _, s in sweeps], axis)
    measured, excluded = [], []
    for out, sweep in sweeps:
        for point in sweep.points():
            run = out / point.name
            state, detail = point_state(sweep, point, out)
            rows = validation_rows(run)
            if state != "finished":
                why = {"start": "not started", "restart": "stopped before its first checkpoint",
                       "resume": f"not finished ({detail})"}[state]
                if (out / LOGS / f"{point.name}.log").is_file():
                    why += f"; its log: {out / LOGS / f'{point.name}.log'}"
                excluded.append({"run": str(run), "why": why})
                continue
            config = load_config(run)
            steps = data_steps(config.train.steps) if sweep.axis == "data" else [config.train.steps]
            for step in steps:
                values = window_values(rows.get(step), metric)
                if isinstance(values, str):
                    excluded.append({"run": str(run), "step": step, "why": values})
                    continue
                measured.append(Measured(run, point.kind, point.seed, step, step == config.train.steps,
                                         x_value(config, axis, step), values))
    if excluded and not skip_failed:
        first = excluded[0]
        more = f" (and {len(excluded) - 1} more)" if len(excluded) > 1 else ""
        sweep_dir = Path(first["run"]).parent
        raise DataError(f"point {first['run']}{' step ' + str(first['step']) if 'step' in first else ''}: "
                        f"{first['why']}{more}; finish the sweep with "
                        f"`{shlex.join(['ebt', 'scale', 'run', '--out', str(sweep_dir)])}`, "
                        "or fit without these points (skip_failed)", field="skip_failed")
    _check_same_windows(measured)
    return axis, measured, excluded


def window_values(row: dict | None, metric: str) -> list[float] | str:
    """A validation row's per-window `metric` (`collect`), or why it has none."""
    losses = row.get("window_losses") if row else None
    if not isinstance(losses, list) or not losses:
        return "no validation with per-window losses at this step"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        return "its validation loss is not finite"
    if metric == "loss":
        return [float(v) for v in losses]
    bpb, loss = row.get("bpb"), row.get("loss")
    if not isinstance(bpb, (int, float)) or not isinstance(loss, (int, float)) or not loss > 0:
        return "its validation has no bits per byte (bpb: a text run's, from a version that reports it)"
    return [float(v) * bpb / loss for v in losses]


def _check_same_windows(measured: list[Measured]) -> None:
    """Every point must be scored on the same validation windows, or the bootstrap pairs nothing."""
    def identity(run: Path) -> tuple:
        config = load_config(run)
        data = read_json(run / DATA) if (run / DATA).is_file() else {}
        return (data.get("sha256"), json.dumps(config.to_dict().get("text")), config.model.context_len)

    first, reference = None, None
    for m in measured:
        key = (identity(m.run), len(m.window_losses))
        if reference is None:
            first, reference = m, key
        elif key != reference:
            what = "number of validation windows" if key[1] != reference[1] else "data, tokenizer or context"
            raise ConfigError(f"point {m.run} is not scored on the same validation windows as {first.run} "
                              f"(its {what} differs); a fit pairs windows across points")


def x_value(config: RunConfig, axis: str, step: int) -> float:
    """A point's x on `axis` (see the module docstring)."""
    m, tokens = config.model, step * config.train.batch_size * config.model.context_len
    if axis == "data":
        return float(tokens)
    if axis == "width":
        return float(m.dim)
    if axis == "depth":
        return float(m.n_layers)
    if axis == "batch":
        return float(config.train.batch_size * m.context_len)
    if axis == "params":
        return float(_non_embedding_params(config.to_json()))
    return _flops_per_token(config.to_json()) * tokens


@functools.lru_cache(maxsize=None)
def _non_embedding_params(config_json: str) -> int:
    with torch.device("meta"):  # counted without allocating the weights
        return count_parameters(build_model(RunConfig.from_dict(json.loads(config_json))))


@functools.lru_cache(maxsize=None)
def _flops_per_token(config_json: str) -> float:
    with torch.device("meta"):
        return train_flops_per_token(RunConfig.from_dict(json.loads(config_json)))


def curves(measured: list[Measured]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model kind: x (P,) and window losses (S, P, W), NaN where a seed lacks a point."""
    result = {}
    for kind in KINDS:
        mine = [m for m in measured if m.kind == kind]
        if not mine:
            continue
        xs, seeds = sorted({m.x for m in mine}), sorted({m.seed for m in mine})
        losses = np.full((len(seeds), len(xs), len(mine[0].window_losses)), np.nan)
        for m in mine:
            losses[seeds.index(m.seed), xs.index(m.x)] = m.window_losses
        result[kind] = (np.array(xs), losses)
    return result


def thinking_scores(measured: list[Measured], device: str | torch.device = "cpu", windows: int | None = None,
                    say=lambda line: None) -> dict:
    """Each EBT point scored at the paper suite's thinking budgets (`ebt.suite.BUDGETS`) on its
    first `windows` validation windows (all of them by default; more than a point has is a
    ConfigError naming thinking_windows): what `ebt.scaling.gains.fit_gains` takes. Points of the
    data axis load the weights kept at their step; every point thinks from the same random starts.

    Returns {"x": (P,), "budgets": [(steps, samples)] (B), "forward_passes": (B,) per token,
    "losses": (S, P, B, W) per-window mean losses in nats (NaN where a seed lacks a point),
    "tokens": (W,) the targets each window scores}."""
    mine = [m for m in measured if m.kind == "ebt"]
    have = min((len(m.window_losses) for m in mine), default=0)
    if windows is not None and windows > have:
        raise ConfigError(f"thinking_windows = {windows} is more than the {have} validation windows each point "
                          f"has; give at most {have}", field="thinking_windows")
    scoring, streams = Scoring(device), {}
    xs, seeds = sorted({m.x for m in mine}), sorted({m.seed for m in mine})
    losses, tokens, passes = None, None, [0.0] * len(BUDGETS)
    for m in mine:
        run = load_run(m.run, device, step=None if m.final else m.step)
        key = str(m.run) if run.config.text.tokenizer == "bpe" else "shared"
        if key not in streams:
            try:
                streams[key] = load_data(run.config, m.run).validation
            except DataError as e:
                raise DataError(f"point {m.run}: {e}") from None
        say(f"  thinking budgets: {m.run.name} step {m.step}")
        for b, (steps, samples) in enumerate(BUDGETS):
            scores = evaluate(run.model, streams[key], ThinkingOptions(steps=steps, samples=samples), scoring=scoring,
                              max_windows=windows or have)
            if losses is None:
                losses = np.full((len(seeds), len(xs), len(BUDGETS), len(scores)), np.nan)
                tokens = scores.tokens.numpy().astype(float)
            losses[seeds.index(m.seed), xs.index(m.x), b] = scores.loss.numpy()
            passes[b] = scores.summary()["forward_passes"]
    return {"x": np.array(xs), "budgets": list(BUDGETS), "forward_passes": passes,
            "losses": losses if losses is not None else np.zeros((0, 0, len(BUDGETS), 0)),
            "tokens": tokens if tokens is not None else np.zeros(0)}
