"""`ebt scale run` and `ebt scale fit` end to end: micro sweeps of a few steps on the synthetic corpus.

A sweep's points are trained by worker processes; each point must equal what its printed
`ebt train` command trains, a finished point is skipped, an interrupted one resumes, and a bad
or failed point is named, never silently dropped from a fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ebt.train
from conftest import run_cli
from ebt.errors import Interrupted
from ebt.runs import load_run
from ebt.scaling.sweep import Sweep
from ebt.scaling.worker import train_point

# Small and fast: context 16, batch 4, 4 validation windows, 3 steps.
FAST = ["--model.context_len=16", "--train.batch_size=4", "--train.log_every=1"]


def width_args(out: Path, corpus: Path, *more: str) -> list[str]:
    return ["scale", "run", "--axis", "width", "--values", "32,64,96", "--steps", "3", "--windows", "4",
            "--data", str(corpus), "--out", str(out), *FAST, *more]


def ebt_command() -> list[str]:
    script = Path(sys.executable).parent / "ebt"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ebt.cli"]


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    return load_run(run, step=step).model.state_dict()


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def width_sweep(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    out = tmp_path_factory.mktemp("sweeps") / "width"
    from ebt.cli import main

    assert main(width_args(out, corpus_file, "--jobs", "2")) == 0
    return out


def test_a_micro_sweep_trains_every_point_as_an_ordinary_run(width_sweep: Path) -> None:
    names = sorted(p.name for p in width_sweep.iterdir() if p.is_dir() and p.name != "logs")
    assert names == sorted(f"{k}-dim{d}-seed0" for k in ("ebt", "transformer") for d in (32, 64, 96))
    for name in names:
        run = load_run(width_sweep / name)
        assert run.step == 3 and run.config.model.dim == int(name.split("dim")[1].split("-")[0])
        assert run.config.model.n_heads == run.config.model.dim // 32  # the tiny size's head width
        assert (width_sweep / "logs" / f"{name}.log").read_text().startswith("$ ebt train --preset text-")


def test_the_fit_json_has_the_documented_keys(width_sweep: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(["scale", "fit", width_sweep, "--json", "--replicates", "200", "--plots", tmp_path],
                           capsys)
    assert code == 0
    result = json.loads(out)
    assert result["axis"] == "width"
    for kind in ("ebt", "transformer"):
        model = result["models"][kind]
        assert [p["x"] for p in model["points"]] == [32.0, 64.0, 96.0]
        low, high = model["slope_ci"]
        assert low <= model["slope"] <= high
        for p in model["points"]:  # each point's loss is its run's final validation loss
            row = [json.loads(line) for line in (width_sweep / f"{kind}-dim{int(p['x'])}-seed0" / "metrics.jsonl")
                   .read_text().splitlines() if '"validation"' in line][-1]
            assert p["loss"] == pytest.approx(row["loss"], rel=1e-5)
    ratio = result["models"]["ebt"]["slope"] / result["models"]["transformer"]["slope"] - 1
    assert result["scaling_rate_ratio"] == pytest.approx(ratio)
    low, high = result["scaling_rate_ratio_ci"]
    assert low <= high
    assert len(result["points_used"]) == 6 and result["excluded"] == []
    assert (tmp_path / "scale-width.png").stat().st_size > 0


def test_running_a_finished_sweep_again_trains_nothing(width_sweep: Path, corpus_file: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in width_sweep.glob("*/model.safetensors")}
    code, out, _ = run_cli(width_args(width_sweep, corpus_file), capsys)
    assert code == 0
    assert "6 finished, 0 to run" in out
    assert {p: p.stat().st_mtime_ns for p in width_sweep.glob("*/model.safetensors")} == before
    # --out alone continues the sweep it holds
    code, out, _ = run_cli(["scale", "run", "--out", width_sweep], capsys)
    assert code == 0 and "6 finished, 0 to run" in out


def test_an_interrupted_point_resumes_to_the_same_weights(width_sweep: Path, corpus_file: Path, tmp_path: Path,
                                                          capsys, monkeypatch) -> None:
    out = tmp_path / "sweep"
    assert run_cli(width_args(out, corpus_file, "--print-commands"), capsys)[0] == 0
    sweep = Sweep.load(out)
    # Ctrl-C during the first step of one point: it saves a checkpoint at step 1 and stops.
    with monkeypatch.context() as patch:
        patch.setattr(ebt.train.StopSignals, "install", lambda self: setattr(self, "signum", signal.SIGINT))
        (out / "logs").mkdir()
        assert train_point(sweep, out, "ebt-dim64-seed0", "start") == 130
    assert load_run(out / "ebt-dim64-seed0").step == 1
    code, stdout, _ = run_cli(width_args(out, corpus_file, "--jobs", "2"), capsys)  # one thread a point, as before
    assert code == 0
    assert "ebt-dim64-seed0: resuming at step 1 of 3" in stdout
    assert same_weights(out / "ebt-dim64-seed0", width_sweep / "ebt-dim64-seed0")


def test_printed_commands_run_as_printed_and_train_the_same_points(width_sweep: Path, corpus_file: Path,
                                                                     tmp_path: Path, capsys) -> None:
    out = tmp_path / "cluster"
    code, stdout, err = run_cli(width_args(out, corpus_file, "--print-commands"), capsys)
    assert code == 0 and "6 point(s) to run" in err
    lines = stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("ebt train --preset text-") for line in lines)
    for line in lines[:2]:  # one EBT point and one Transformer++ point, as a job array would run them
        args = shlex.split(line)
        # one thread, as the sweep's points ran with --jobs 2: the same float reductions
        subprocess.run([*ebt_command(), *args[1:]], check=True, capture_output=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        name = Path(args[args.index("--out") + 1]).name
        assert same_weights(out / name, width_sweep / name)
    # the collected directories are a sweep: the unfinished points are named, not dropped
    code, _, err = run_cli(["scale", "fit", out], capsys)
    assert code == 2 and "not started" in err and "--skip-failed" in err


def test_a_sweep_interrupted_by_a_signal_saves_its_points_and_resumes(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["scale", "run", "--axis", "depth", "--values", "1,2,3", "--steps", "40", "--windows", "2",
            "--data", str(corpus_file), "--out", str(out), "--jobs", "2", *FAST, "--model.dim=32", "--model.n_heads=1"]
    runner = subprocess.Popen([*ebt_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 130, stderr
    assert f"resume with: ebt scale run --out {out}" in stderr
    interrupted = [p.parent for p in out.glob("*/train_state.pt")]
    assert interrupted and all(load_run(p).step < 40 for p in interrupted)
    done = subprocess.run([*ebt_command(), "scale", "run", "--out", str(out), "--jobs", "2"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    assert all(load_run(p).step == 40 for p in out.iterdir() if p.is_dir() and p.name != "logs")


@pytest.fixture(scope="module")
def data_sweep(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    out = tmp_path_factory.mktemp("sweeps") / "data"
    from ebt.cli import main

    assert main(["scale", "run", "--axis", "data", "--steps", "32", "--windows", "4", "--data", str(corpus_file),
                 "--out", str(out), "--jobs", "2", *FAST]) == 0
    return out


def test_the_data_axis_is_one_run_per_kind_read_at_log_spaced_steps(data_sweep: Path, tmp_path: Path,
                                                                    capsys) -> None:
    config = load_run(data_sweep / "ebt-seed0").config
    assert config.train.lr_schedule == "constant" and config.train.eval_spacing == "log"
    code, out, _ = run_cli(["scale", "fit", data_sweep, "--json", "--replicates", "200", "--thinking",
                            "--thinking-windows", "3", "--plots", tmp_path], capsys)
    assert code == 0
    result = json.loads(out)
    steps = [2, 3, 4, 6, 8, 11, 16, 23, 32]  # 32/16 · √2^i
    tokens = [s * 4 * 16 for s in steps]  # steps × batch × context
    assert [p["x"] for p in result["models"]["transformer"]["points"]] == tokens
    thinking = result["thinking"]  # each EBT point scored from the weights kept at its step
    assert [p["x"] for p in thinking["points"]] == tokens and thinking["windows"] == 3
    assert [b["budget"] for b in thinking["budgets"]] == [2, 3, 6, 15, 30]  # the paper's axis: steps × samples
    assert thinking["forward_passes"] == [2, 3, 8, 20, 40]  # + the scoring pass per sample
    for point in thinking["points"]:
        ppl = point["ppl"]
        assert point["gains"]["think_longer"]["pct"] == pytest.approx(100 * (ppl[0] - ppl[1]) / ppl[0])
        low, high = point["gains"]["self_verify"]["ci"]
        assert low <= point["gains"]["self_verify"]["pct"] <= high
    assert set(thinking["trend"]) == {"think_longer", "self_verify", "verify_only"}
    assert result["plots"] == [str(tmp_path / "scale-data.png"), str(tmp_path / "thinking-data.png")]
    assert (tmp_path / "thinking-data.png").is_file()
    code, _, err = run_cli(["scale", "fit", data_sweep, "--thinking", "--thinking-windows", "5"], capsys)
    assert code == 2 and "thinking_windows = 5 is more than the 4 validation windows" in err
    code, _, err = run_cli(["scale", "fit", data_sweep, "--thinking-windows", "2"], capsys)
    assert code == 2 and "--thinking-windows" in err and "--thinking" in err


def test_a_fit_of_bits_per_byte(width_sweep: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(["scale", "fit", width_sweep, "--metric", "bpb", "--json", "--replicates", "200"], capsys)
    assert code == 0
    bpb = json.loads(out)
    loss = json.loads(run_cli(["scale", "fit", width_sweep, "--json", "--replicates", "200"], capsys)[1])
    assert bpb["metric"] == "bpb" and loss["metric"] == "loss"
    for kind in ("ebt", "transformer"):
        for p in bpb["models"][kind]["points"]:  # each point is its run's final validation bits per byte
            row = [json.loads(line) for line in (width_sweep / f"{kind}-dim{int(p['x'])}-seed0" / "metrics.jsonl")
                   .read_text().splitlines() if '"validation"' in line][-1]
            assert p["loss"] == pytest.approx(row["bpb"], rel=1e-5)
            assert row["bpb"] == pytest.approx(row["loss"] / math.log(2))  # byte-level runs
        # bits per byte is the loss times one constant here: the same slope
        assert bpb["models"][kind]["slope"] == pytest.approx(loss["models"][kind]["slope"])
    code, text, _ = run_cli(["scale", "fit", width_sweep, "--metric", "bpb", "--replicates", "200"], capsys)
    assert code == 0 and "ln(bpb) = intercept + slope·ln(x), bpb in bits per byte" in text
    copy = tmp_path / "old"
    shutil.copytree(width_sweep, copy)
    for metrics in copy.glob("*/metrics.jsonl"):  # a sweep from before bits per byte
        metrics.write_text(metrics.read_text().replace('"bpb"', '"old_bpb"'))
    code, _, err = run_cli(["scale", "fit", copy, "--metric", "bpb"], capsys)
    assert code == 2 and "its validation has no bits per byte" in err
    code, _, err = run_cli(["scale", "fit", width_sweep, "--metric", "ppl"], capsys)
    assert code == 2 and "metric" in err and "'ppl'" in err


def test_a_non_finite_point_is_named_and_only_left_out_when_asked(data_sweep: Path, tmp_path: Path, capsys) -> None:
    import shutil

    out = tmp_path / "data"
    shutil.copytree(data_sweep, out)
    metrics = out / "ebt-seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    for row in rows:
        if row.get("split") == "validation" and row["step"] == 8:
            row["window_losses"][0] = None  # what a NaN is written as
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(["scale", "fit", out], capsys)
    assert code == 2
    assert "ebt-seed0 step 8: its validation loss is not finite" in err
    code, stdout, _ = run_cli(["scale", "fit", out, "--skip-failed", "--json", "--replicates", "200"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert len(result["models"]["ebt"]["points"]) == 8
    assert result["excluded"] == [{"run": str(out / "ebt-seed0"), "step": 8, "why": "its validation loss is not finite"}]
    assert {(p["run"], p["step"]) for p in result["points_used"]}.isdisjoint({(str(out / "ebt-seed0"), 8)})


def test_a_failed_point_is_reported_and_the_others_finish(corpus_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    # A step size past anything finite: every EBT point diverges at its first step.
    code, stdout, err = run_cli(["scale", "run", "--axis", "depth", "--values", "1,2,3", "--steps", "2",
                                 "--windows", "2", "--data", corpus_file, "--out", out, *FAST,
                                 "--think.step_size=1e30"], capsys)
    assert code == 2
    assert "3 point(s) failed: ebt-layers1-seed0, ebt-layers2-seed0, ebt-layers3-seed0" in err
    assert stdout.count("transformer-layers") >= 3 and "logs/ebt-layers1-seed0.log" in stdout
    assert "ebt train: error: step 1:" in (out / "logs" / "ebt-layers1-seed0.log").read_text()
    code, _, err = run_cli(["scale", "fit", out], capsys)
    assert code == 2 and "ebt-layers1-seed0" in err


@pytest.mark.parametrize("args, message", [
    (["--axis", "height"], "axis 'height' is not a scaling axis; it must be one of data, width, depth, batch, params (flops is a refit of a params sweep: ebt scale fit DIR --axis flops) (flag --axis)"),
    (["--axis", "width", "--values", "32,64"], "at least 3 distinct values"),
    (["--axis", "width", "--values", "32,48,64"], "not a whole number of heads of width 32"),
    (["--axis", "depth", "--values", "1,two,3"], "values: 'two' is not allowed for the depth axis; it must be a whole number ≥ 1 (flag --values)"),
    (["--axis", "width", "--model.dim=64"], "model.dim is set by the width sweep: give the widths as values (flag --values)"),
    (["--axis", "width", "--model.n_heads=2"], "model.n_heads is set by the width sweep: the heads follow the width at the "
                                               "tiny size's head width 32 (model.dim / 32); give the widths as values, or "
                                               "another size for another head width (flag --values)"),
    (["--axis", "depth", "--train.eval_examples=4"], "every point validates on the same windows; give their number as "
                                                     "windows (flag --windows)"),
    (["--axis", "data", "--steps", "20"], "too short for a data sweep"),
    (["--axis", "depth", "--size", "huge"], "size 'huge' has no text presets"),
    (["--axis", "depth", "--jobs", "0"], "jobs = 0 is not allowed; it must be an integer in [1, 256] (flag --jobs)"),
    (["--axis", "depth", "--train.lr=-1"], "train.lr = -1.0 is not allowed"),
    (["--axis", "data", "--train.lr_schedule=cosine"], "cosine is not allowed on the data axis"),
    (["--axis", "data", "--train.eval_every=5"], "it validates at log-spaced steps from steps/16 to steps and keeps the weights of each; "
                                                     "set the length with steps (flag --steps)"),
    (["--axis", "depth", "--data", "no/such/corpus"], "is neither a known corpus"),
    ([], "axis is required to start a sweep"),
])
def test_bad_sweep_settings_are_named_before_anything_runs(args: list[str], message: str, tmp_path: Path,
                                                            capsys) -> None:
    code, _, err = run_cli(["scale", "run", "--out", tmp_path / "sweep", *args], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "sweep" / "sweep.json").exists()


def test_every_field_a_sweep_sets_is_refused_naming_the_sweep_setting_that_sets_it() -> None:
    """A refused override is reported against the sweep's own setting (values, seeds, steps, windows,
    data), so the command line names a flag that takes it, never the refused config field's."""
    from ebt.cli import flag_of
    from ebt.commands.scale import ScaleRunArgs
    from ebt.errors import ConfigError
    from ebt.scaling.sweep import AXES, AXIS_FIELDS, FIXED_FIELDS

    for axis in AXES:
        for key in (*AXIS_FIELDS[axis], *FIXED_FIELDS, "data.corpus"):
            with pytest.raises(ConfigError) as caught:
                Sweep(axis, steps=64, overrides=[(key, "2")])
            setting = caught.value.field
            assert setting in {f.name for f in dataclasses.fields(Sweep)} and setting != "overrides", (axis, key)
            assert flag_of(ScaleRunArgs, setting) == f"--{setting}" and f"as {setting}" in str(caught.value) \
                or setting == "steps" and axis == "data", (axis, key, str(caught.value))


def test_a_directory_of_another_sweep_or_config_is_refused(width_sweep: Path, corpus_file: Path, tmp_path: Path,
                                                           capsys) -> None:
    code, _, err = run_cli(["scale", "run", "--out", width_sweep, "--steps", "4"], capsys)
    assert code == 2 and "holds another sweep: steps (there 3, now 4)" in err
    # the same settings in another order are the same sweep
    reordered = ["scale", "run", "--axis", "width", "--values", "96,64,32", "--steps", "3", "--windows", "4",
                 "--data", str(corpus_file), "--out", str(width_sweep), *reversed(FAST)]
    code, out, _ = run_cli(reordered, capsys)
    assert code == 0 and "every point was already finished" in out
    out = tmp_path / "sweep"
    assert run_cli(width_args(out, corpus_file, "--print-commands"), capsys)[0] == 0
    foreign = out / "ebt-dim32-seed0"
    foreign.mkdir()
    config = json.loads((width_sweep / "ebt-dim32-seed0" / "config.json").read_text())
    config["train"]["lr"] = 0.5
    (foreign / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(width_args(out, corpus_file), capsys)
    assert code == 2
    assert "point ebt-dim32-seed0" in err and "train.lr (there 0.5, the sweep's 0.0024)" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(width_args(other, corpus_file), capsys)
    assert code == 2 and "is not empty and holds no sweep.json" in err


def test_fitting_a_directory_that_is_no_sweep_is_an_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["scale", "fit", tmp_path], capsys)
    assert code == 2 and "has no sweep.json" in err
    code, _, err = run_cli(["scale", "fit", tmp_path, "--replicates", "5"], capsys)
    assert code == 2 and "replicates = 5 is not allowed; it must be an integer in [100, 1000000] (flag --replicates)" in err


def test_params_and_flops_refit_width_and_depth_sweeps(width_sweep: Path, capsys) -> None:
    code, out, _ = run_cli(["scale", "fit", width_sweep, "--axis", "params", "--json", "--replicates", "200"],
                           capsys)
    assert code == 0
    params = [p["x"] for p in json.loads(out)["models"]["transformer"]["points"]]
    assert params == sorted(params) and len(params) == 3 and params[0] > 1000
    code, out, _ = run_cli(["scale", "fit", width_sweep, "--axis", "flops", "--json", "--replicates", "200"], capsys)
    assert code == 0
    flops = json.loads(out)["models"]
    # the EBT costs more per token than the Transformer++ of the same width (thinking, second order)
    assert all(e["x"] > t["x"] for e, t in zip(flops["ebt"]["points"], flops["transformer"]["points"]))
    code, _, err = run_cli(["scale", "fit", width_sweep, "--axis", "batch"], capsys)
    assert code == 2 and "axis batch does not apply to a width sweep (it applies to batch sweeps; flops to any) (flag --axis)" in err


def test_a_fit_can_be_limited_to_a_stretch_of_the_axis(data_sweep: Path, capsys) -> None:
    start = 6 * 4 * 16  # step 6 of the data curve, in tokens
    code, out, _ = run_cli(["scale", "fit", data_sweep, "--min-x", start, "--json", "--replicates", "200"], capsys)
    assert code == 0
    result = json.loads(out)
    assert [p["x"] for p in result["models"]["ebt"]["points"]][0] == start
    assert len(result["models"]["ebt"]["points"]) == 6 and result["x_range"] == [start, None]
    assert all(p["x"] >= start for p in result["points_used"])
    code, _, err = run_cli(["scale", "fit", data_sweep, "--min-x", 1e12], capsys)
    assert code == 2 and "no EBT point has x in [1e+12, inf]" in err
    code, _, err = run_cli(["scale", "fit", data_sweep, "--min-x", 10, "--max-x", 5], capsys)
    assert code == 2 and "min_x = 10 must be below max_x = 5 (flag --min-x)" in err


def test_a_point_whose_log_was_lost_is_repaired_by_running_the_sweep_again(width_sweep: Path, tmp_path: Path,
                                                                           corpus_file: Path, capsys) -> None:
    import shutil

    out = tmp_path / "width"
    shutil.copytree(width_sweep, out)
    (out / "ebt-dim32-seed0" / "metrics.jsonl").unlink()
    code, _, err = run_cli(["scale", "fit", out], capsys)
    assert code == 2 and "ebt-dim32-seed0: not finished" in err and f"ebt scale run --out {out}" in err
    code, stdout, _ = run_cli(["scale", "run", "--out", out], capsys)
    assert code == 0 and "ebt-dim32-seed0: resuming at step 3 of 3" in stdout
    assert same_weights(out / "ebt-dim32-seed0", width_sweep / "ebt-dim32-seed0")
    assert run_cli(["scale", "fit", out, "--replicates", "200"], capsys)[0] == 0


_ORPHAN = """
import os, subprocess, sys
child = '''
import signal, sys, time
from ebt.scaling.worker import watch_parent
signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", file=sys.stderr, flush=True), sys.exit(143)))
watch_parent(0.05)
print("watching", flush=True)
time.sleep(120)
'''
worker = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=open(sys.argv[1], "w"), text=True)
assert worker.stdout.readline() == "watching\\n"
print(os.getpid(), flush=True)
"""  # a parent that starts a watching worker and then is gone without a word (as after a SIGKILL)


def test_a_worker_whose_sweep_has_gone_says_so_before_it_stops(tmp_path: Path) -> None:
    log = tmp_path / "point.log"
    env = {**os.environ, "PYTHONPATH": str(Path(ebt.train.__file__).parents[1])}
    parent = subprocess.run([sys.executable, "-c", _ORPHAN, str(log)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert parent.returncode == 0, parent.stderr
    for _ in range(600):  # the orphan is init's (or a subreaper's) child now: its log tells when it has stopped
        if "got SIGTERM" in log.read_text():
            break
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert lines[:2] == [f"the sweep that started this worker has gone (pid {int(parent.stdout)}); stopping the "
                         "point, saving", "got SIGTERM"], lines
