"""Scaling sweeps (SPEC §7): the runs behind "EBTs scale X% faster than the Transformer++".

A sweep varies one axis for both model kinds and keeps everything else fixed:

    data    one run per kind and seed at a constant learning rate, validated at log-spaced
            steps (two per doubling, over 16× the tokens) and its weights kept there: the
            paper's data curve is one run read at checkpoints
    width   model.dim (heads keep the base size's head width), a fixed number of steps
    depth   model.n_layers
    batch   train.batch_size at a fixed number of steps, so the data grows with the batch
            (as in the paper)
    params  the width points and the depth points together (non-embedding parameters; refit
            on training FLOPs with `ebt scale fit --axis flops`)

Each point is an ordinary run directory made by an ordinary `ebt train` command, run in its own
process, so any point can be inspected (`ebt eval`), resumed or run elsewhere (`--print-commands`
prints the commands for a cluster's job array). A sweep directory holds:

    sweep.json          what the sweep is: axis, size, recipe, values, seeds, steps, data,
                        validation windows, overrides
    <point>/            one run directory per point, e.g. ebt-dim64-seed0
    logs/<point>.log    the output of each point's command

Running a sweep (`ebt.scaling.running`) again skips finished points, resumes interrupted ones (`ebt train --resume`),
restarts points stopped before their first checkpoint, and refuses a directory or a point that
belongs to another sweep or config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebt.checkpoint import CONFIG, TRAIN_STATE, WEIGHTS, load_config, recover_if_idle, validation_rows
from ebt.checkpoint import weights_step as checkpoint_weights_step
from ebt.checks import check_choice, check_int
from ebt.config import RunConfig, TrainConfig, refuse_repeated
from ebt.data.corpus import KNOWN_CORPORA
from ebt.errors import CheckpointError, ConfigError
from ebt.files import atomic_write, read_json
from ebt.presets import PRESETS, preset
from ebt.rundata import resolve_source
from ebt.schedule import validation_steps

AXES = ("data", "width", "depth", "batch", "params")
KINDS = ("ebt", "transformer")
RECIPES = ("s1", "s2")  # the EBT's thinking recipe: text-ebt-SIZE or text-ebt-s2-SIZE
SWEEP_FILE, LOGS = "sweep.json", "logs"
SWEEP_VERSION = 1
# Default values as multiples of the base size's (width rounded to whole heads).
FACTORS = {"width": (0.5, 0.75, 1.0, 1.5), "depth": (0.5, 1.0, 2.0), "batch": (0.25, 0.5, 1.0, 2.0)}
DATA_SPAN = 16  # the data axis validates from steps/16 to steps: 9 points two per doubling
MIN_POINTS = 3  # a line through fewer says nothing about its slope
# The config field each axis varies: an override of it is refused (the sweep sets it per point).
AXIS_FIELDS = {"width": ("model.dim", "model.n_heads"), "depth": ("model.n_layers",),
               "batch": ("train.batch_size",), "params": ("model.dim", "model.n_heads", "model.n_layers"),
               "data": ("train.eval_every", "train.eval_spacing", "train.keep_checkpoints")}
FIXED_FIELDS = ("train.seed", "train.steps", "train.eval_examples")  # set by --seeds, --steps, --windows
SET_BY_THE_DATA = ("text.vocab_size",)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: a model kind, an axis value and a seed, and the overrides that make it."""

    name: str
    kind: str
    seed: int
    value: int | str  # the axis value (params: "LxD", layers × width; data: the final step)
    overrides: tuple[tuple[str, str], ...]


@dataclass
class Sweep:
    """What a sweep is (saved as sweep.json). `values` None means the axis's defaults around
    the base size; `steps` None the preset's train.steps."""

    axis: str
    size: str = "tiny"
    recipe: str = "s1"
    values: list[int | str] | None = None
    seeds: int = 1
    steps: int | None = None
    data: str | None = None
    windows: int = 256
    overrides: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_settings()
        refuse_repeated(self.overrides)  # in the order given, before the sort
        self.overrides = sorted(tuple(pair) for pair in self.overrides)  # in any order, the same sweep
        for key, value in self.overrides:
            self._check_override(key, value)
        if self.data is not None:
            self.data = resolve_source(self.data)  # a path works from any directory, names stay names
            if self.data not in KNOWN_CORPORA and not Path(self.data).exists():
                raise ConfigError(f"data {self.data!r} is neither a known corpus ({', '.join(KNOWN_CORPORA)}) "
                                  "nor an existing file or directory", field="data")
        self.values = self._values()
        if self.axis != "data" and len(set(self.values)) < MIN_POINTS:
            raise ConfigError(f"a {self.axis} sweep needs at least {MIN_POINTS} distinct values per model kind; "
                              f"it has {len(set(self.values))} ({', '.join(map(str, self.values))})")
        self.points()  # builds every point's config now: a bad override or value fails before anything runs

    def _check_settings(self) -> None:
        if self.axis not in AXES:
            raise ConfigError(f"axis {self.axis!r} is not a scaling axis; it must be one of {', '.join(AXES)} "
                              "(flops is a refit of a params sweep: ebt scale fit DIR --axis flops)", field="axis")
        for kind in KINDS:
            if self.preset_name(kind) not in PRESETS:
                sizes = sorted({n.rsplit("-", 1)[1] for n in PRESETS if n.startswith("text-transformer-")})
                raise ConfigError(f"size {self.size!r} has no text presets; it must be one of {', '.join(sizes)}",
                                  field="size")
        check_choice("recipe", self.recipe, RECIPES)
        for name in ("seeds", "windows", "steps"):
            check_int(name, getattr(self, name), 1, 10**9, optional=name == "steps", unset="the preset's")

    def _check_override(self, key: str, value: str) -> None:
        """An override the sweep leaves to the user: not a field it sets per point."""
        if key in AXIS_FIELDS[self.axis] or key in FIXED_FIELDS or key == "data.corpus":
            how, setting = self._set_by_the_sweep(key)
            raise ConfigError(f"{key} is set by the {self.axis} sweep: {how}", field=setting)
        if self.axis == "data" and key == "train.lr_schedule" and value == "cosine":
            raise ConfigError("train.lr_schedule = cosine is not allowed on the data axis: a curve read at "
                              "checkpoints needs a steady rate; use constant (the default) or wsd", field=key)

    def _set_by_the_sweep(self, key: str) -> tuple[str, str]:
        """How the sweep sets config field `key` and what the user can do instead, and the sweep
        setting that does it (the field a refused override of `key` is reported against)."""
        fixed = {"train.seed": ("the points run seeds 0 … N−1; give N as seeds", "seeds"),
                 "train.steps": ("every point trains the same number of steps; give it as steps", "steps"),
                 "train.eval_examples": ("every point validates on the same windows; give their number as windows",
                                         "windows"),
                 "data.corpus": ("every point reads the same corpus; give it as data", "data")}
        if key in fixed:
            return fixed[key]
        if self.axis == "data":
            return ("it validates at log-spaced steps from steps/16 to steps and keeps the weights of each; "
                    "set the length with steps", "steps")
        if key == "model.n_heads":
            m = self.base().model
            return (f"the heads follow the width at the {self.size} size's head width {m.dim // m.n_heads} "
                    f"(model.dim / {m.dim // m.n_heads}); give the widths as values, or another size for another "
                    "head width", "values")
        what = {"model.dim": "the widths", "model.n_layers": "the depths", "train.batch_size": "the batch sizes"}[key]
        return (f"give {'LAYERSxWIDTH pairs' if self.axis == 'params' else what} as values", "values")

    # --- what the sweep runs ---------------------------------------------------------------------

    def preset_name(self, kind: str) -> str:
        return f"text-ebt-s2-{self.size}" if kind == "ebt" and self.recipe == "s2" else f"text-{kind}-{self.size}"

    def base(self) -> RunConfig:
        return preset(self.preset_name("transformer"))

    def _values(self) -> list[int | str]:
        base = self.base()
        if self.axis == "data":
            steps = self.steps or base.train.steps
            if self.values is not None and list(self.values) != [steps]:  # sweep.json holds [steps]
                raise ConfigError("values do not apply to the data axis: its points are the log-spaced "
                                  "validations of one run per kind (set the length with steps)", field="values")
            if steps < 2 * DATA_SPAN:  # the first validation at step 2 or later, 16× before the last
                raise ConfigError(f"steps = {steps} is too short for a data sweep; give at least {DATA_SPAN * 2}",
                                  field="steps")
            return [steps]
        m, head_width = base.model, base.model.dim // base.model.n_heads
        if self.values is not None:
            values = [_parse_value(self.axis, v) for v in self.values]
        elif self.axis == "width":
            values = [max(1, round(m.dim * f / head_width)) * head_width for f in FACTORS["width"]]
        elif self.axis == "depth":
            values = [max(1, round(m.n_layers * f)) for f in FACTORS["depth"]]
        elif self.axis == "batch":
            values = [max(1, round(base.train.batch_size * f)) for f in FACTORS["batch"]]
        else:  # params: the width points at the base depth and the depth points at the base width
            widths = Sweep("width", self.size, self.recipe).values
            depths = Sweep("depth", self.size, self.recipe).values
            values = [f"{m.n_layers}x{d}" for d in widths] + [f"{n}x{m.dim}" for n in depths if n != m.n_layers]
        if self.axis == "width":
            bad = [v for v in values if v % head_width]
            if bad:
                raise ConfigError(f"values: {bad[0]} is not a whole number of heads of width {head_width} "
                                  f"(the {self.size} size's head width); use multiples of {head_width}", field="values")
        key = (lambda v: tuple(int(n) for n in v.split("x"))) if self.axis == "params" else (lambda v: v)
        return sorted(dict.fromkeys(values), key=key)  # without repeats, in order of size

    def points(self) -> list[Point]:
        """Every run of the sweep: kinds × values × seeds, each with the overrides that make it."""
        points = []
        for kind in KINDS:
            for value in self.values:
                for seed in range(self.seeds):
                    overrides = self._point_overrides(value, seed)
                    point = Point(_point_name(kind, self.axis, value, seed), kind, seed, value, tuple(overrides))
                    self.config(point)  # validated now
                    points.append(point)
        return points

    def _point_overrides(self, value: int | str, seed: int) -> list[tuple[str, str]]:
        base = self.base()
        steps = self.steps or base.train.steps
        before = [("train.steps", str(steps)), ("train.eval_examples", str(self.windows))]
        # Defaults the user's overrides replace (a key is given once): a data sweep's schedule (e.g.
        # wsd; its spacing is the axis's), and the other axes' validation (once, at the end).
        defaults = [("train.lr_schedule", "constant")] if self.axis == "data" else [("train.eval_every", "0")]
        before += [(key, value) for key, value in defaults if key not in dict(self.overrides)]
        after = [("train.seed", str(seed))]
        if self.axis == "data":
            after += [("train.eval_spacing", "log"), ("train.eval_every", str(round(steps / DATA_SPAN))),
                      ("train.keep_checkpoints", "true")]
        head_width = base.model.dim // base.model.n_heads
        if self.axis == "width":
            after += [("model.dim", str(value)), ("model.n_heads", str(value // head_width))]
        elif self.axis == "depth":
            after.append(("model.n_layers", str(value)))
        elif self.axis == "batch":
            after.append(("train.batch_size", str(value)))
        elif self.axis == "params":
            layers, dim = (int(v) for v in str(value).split("x"))
            after += [("model.n_layers", str(layers)), ("model.dim", str(dim)),
                      ("model.n_heads", str(max(1, dim // head_width)))]
        return before + list(self.overrides) + after

    def config(self, point: Point) -> RunConfig:
        """The config `ebt train` builds for a point (before the data sets text.vocab_size)."""
        data = [("data.corpus", self.data)] if self.data is not None else []
        return preset(self.preset_name(point.kind)).with_overrides(data + list(point.overrides))

    def command(self, point: Point, out: Path, how: str = "start") -> list[str]:
        """The `ebt train` arguments of a point: "start" it, "resume" it or "restart" it (--overwrite)."""
        run = str(out / point.name)
        if how == "resume":
            return ["train", "--resume", "--out", run, "--quiet"]
        args = ["train", "--preset", self.preset_name(point.kind), "--out", run]
        if self.data is not None:
            args += ["--data", self.data]
        args += [f"--{k}={v}" for k, v in point.overrides] + ["--quiet"]
        return args + (["--overwrite"] if how == "restart" else [])

    # --- sweep.json --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = [list(p) for p in self.overrides]
        return {"version": SWEEP_VERSION, **d, "points": [p.name for p in self.points()]}

    @classmethod
    def load(cls, out: Path) -> Sweep:
        path = Path(out) / SWEEP_FILE
        if not Path(out).exists() or Path(out).is_file():
            raise CheckpointError(f"sweep directory {str(out)!r} " + ("is a file" if Path(out).exists() else "does not exist"))
        if not path.is_file():
            raise CheckpointError(f"{out} is not a sweep directory: it has no {SWEEP_FILE} (make one with ebt scale run)")
        d = read_json(path)
        if not isinstance(d, dict) or d.get("version") != SWEEP_VERSION:
            raise CheckpointError(f"{path} is not a sweep file this library reads (version {SWEEP_VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(d))
        if missing:
            raise CheckpointError(f"{path} is damaged or was edited: it has no {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except (TypeError, ValueError, AttributeError, ConfigError) as e:
            raise CheckpointError(f"{path} is damaged or was edited: {e}") from None

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / SWEEP_FILE, lambda p: p.write_text(json.dumps(self.to_dict(), indent=2) + "\n"))

    def settings(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("points")
        return d


def data_steps(steps: int) -> list[int]:
    """The validation steps of a data sweep of `steps` steps: steps/16 · √2^i up to `steps`."""
    first = round(steps / DATA_SPAN)
    return sorted(validation_steps(TrainConfig(steps=steps, eval_every=first, eval_spacing="log"))) if first else [steps]


def _parse_value(axis: str, value: Any) -> int | str:
    if axis == "params":
        parts = str(value).lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ConfigError(f"values: {value!r} is not a params point; write LAYERSxWIDTH, e.g. 2x128", field="values")
        return f"{int(parts[0])}x{int(parts[1])}"
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1 or number > 10**9:
        raise ConfigError(f"values: {value!r} is not allowed for the {axis} axis; it must be a whole number ≥ 1",
                          field="values")
    return number


def _point_name(kind: str, axis: str, value: int | str, seed: int) -> str:
    label = {"width": "dim", "depth": "layers", "batch": "batch", "params": "", "data": None}[axis]
    return f"{kind}-seed{seed}" if label is None else f"{kind}-{label}{value}-seed{seed}"


# --- the state of a point's directory ---------------------------------------------------------------


def point_state(sweep: Sweep, point: Point, out: Path) -> tuple[str, str]:
    """(state, detail) of a point's run directory: "finished", "resume" (stopped after a
    checkpoint), "restart" (stopped before its first), or "start" (nothing there). A directory
    holding another config is a CheckpointError naming the point and the fields that differ."""
    run = out / point.name
    recover_if_idle(run)  # a point killed mid-save or mid-restart: its last complete state first
    if not (run / CONFIG).is_file():
        return ("restart", "no config.json") if run.is_dir() and any(run.iterdir()) else ("start", "")
    _check_point_config(sweep, point, run)
    if not (run / WEIGHTS).is_file() or not (run / TRAIN_STATE).is_file():
        return "restart", "stopped before its first checkpoint"
    step = weights_step(run)
    steps = load_config(run).train.steps
    if step >= steps and final_validation(run, steps) is not None:
        return "finished", f"step {step}"
    return "resume", f"step {step} of {steps}"


def _check_point_config(sweep: Sweep, point: Point, run: Path) -> None:
    saved = load_config(run).to_dict()
    expected = sweep.config(point).to_dict()
    differ = []
    for section, fields in expected.items():
        if not isinstance(fields, dict):
            continue
        for key, value in fields.items():
            name, got = f"{section}.{key}", saved.get(section, {}).get(key) if isinstance(saved.get(section), dict) else None
            if name == "data.corpus":
                value = resolve_source(value)
            if (name in SET_BY_THE_DATA and value == 0) or got == value:
                continue
            differ.append(f"{name} (there {got!r}, the sweep's {value!r})")
    if differ:
        raise CheckpointError(f"point {point.name}: {run} holds a run of another sweep or config: "
                              f"{'; '.join(differ[:4])}{' …' if len(differ) > 4 else ''}; "
                              "move it away or give this sweep another out", field="out")


def weights_step(run: Path) -> int:
    """The step of a point's model.safetensors; a damaged file is a CheckpointError naming it."""
    step = checkpoint_weights_step(run / WEIGHTS)
    if step is None:
        raise CheckpointError(f"{run / WEIGHTS} is damaged or unreadable; remove {run} to start this point again")
    return step


def final_validation(run: Path, steps: int) -> dict | None:
    return validation_rows(run).get(steps)
