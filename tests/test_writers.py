"""One writer per directory, and faults that lose nothing (issue 23): concurrent commands, full
disks, processes killed at any moment, killed parents, prepared corpora behind links.

Kills are real where it matters (SIGKILL of a process, a write past RLIMIT_FSIZE, a full tmpfs
where the test may mount one) and injected where a moment must be hit exactly (os._exit at the
k-th rename of a save, in a child process).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ebt
import ebt.checkpoint
import ebt.data.prepared
import ebt.rundir
import ebt.train
from conftest import run_cli
from ebt.checkpoint import RUN_FILES, SAVED, SAVING, Replaced, recover
from ebt.data.corpus import load_corpus
from ebt.data.prepared import is_prepared, prepare
from ebt.errors import CheckpointError, DataError
from ebt.files import DirectoryLock
from ebt.runs import load_run
from ebt.train_state import load as load_train_state

TINY = ["--quiet", "--model.dim=16", "--model.n_heads=2", "--model.n_layers=1", "--train.batch_size=4",
        "--train.eval_examples=4", "--train.log_every=1", "--train.device=cpu", "--model.context_len=16"]
SRC = str(Path(ebt.train.__file__).parents[1])
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}


def train_args(corpus: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "text-transformer-tiny", "--data", str(corpus), *TINY, "--out", str(out), *more]


def ebt_process(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ebt.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def one_line(err: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the lock of a directory, until the test ends."""
    processes = []

    def hold(path: Path) -> subprocess.Popen:
        code = f"from ebt.files import DirectoryLock; DirectoryLock({str(path)!r}).acquire(); print('held', flush=True); input()"
        process = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


# --- One writer per directory ----------------------------------------------------------------------


def test_a_second_training_into_a_running_one_is_refused_and_the_first_is_untouched(corpus_file: Path,
                                                                                    tmp_path: Path, capsys) -> None:
    out = tmp_path / "shared"
    first = ebt_process(*train_args(corpus_file, out, "--train.steps=100000", "--train.eval_every=0"))
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2,
                 "the first run's steps")
        for more in (["--overwrite"], []):
            code, _, err = run_cli(train_args(corpus_file, out, "--train.steps=3", *more), capsys)
            assert code == 2 and f"being written by another process (pid {first.pid} " in one_line(err), err
        code, _, err = run_cli(["train", "--resume", "--out", out, "--quiet"], capsys)
        assert code == 2 and f"pid {first.pid}" in one_line(err)
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, first_err[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, in order
    assert load_run(out).step == steps[-1] and not (tmp_path / ".shared.lock").exists()


@pytest.mark.parametrize("command", ["train", "prepare-data", "scale run", "save_pretrained"])
def test_every_command_that_writes_a_directory_refuses_one_another_process_holds(command: str, corpus_file: Path,
                                                                                 trained_runs, holder, tmp_path: Path,
                                                                                 capsys) -> None:
    out = tmp_path / "taken" / "dir"
    process = holder(out)
    if command == "save_pretrained":
        with pytest.raises(CheckpointError, match=f"pid {process.pid} .*save_directory"):
            ebt.load(trained_runs["ebt"]["dir"]).save_pretrained(out)
        return
    argv = {"train": train_args(corpus_file, out, "--train.steps=2"),
            "prepare-data": ["prepare-data", str(corpus_file), "--out", str(out)],
            "scale run": ["scale", "run", "--axis", "width", "--values", "32,64,96", "--steps", "2", "--data",
                          str(corpus_file), "--out", str(out)]}[command]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and f"being written by another process (pid {process.pid} " in one_line(err)
    assert not out.exists()  # refused before anything was written


def test_a_killed_holder_leaves_no_lock_and_a_released_one_no_file(tmp_path: Path, holder) -> None:
    out = tmp_path / "a" / "run"
    process = holder(out)
    with pytest.raises(CheckpointError, match="another process"):
        DirectoryLock(out).acquire()
    process.kill()
    process.wait()
    with DirectoryLock(tmp_path / "a" / "." / "run") as lock:  # another spelling, the same lock
        assert lock.held
        with pytest.raises(CheckpointError, match="this very process"):
            DirectoryLock(out).acquire()
    assert not (tmp_path / "a" / ".run.lock").exists()
    with DirectoryLock(tmp_path / "new" / "deeper" / "run"):
        pass
    assert not (tmp_path / "new").exists()  # a command that wrote nothing leaves no empty folders


def test_a_link_and_its_target_are_one_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with DirectoryLock(tmp_path / "real"):
        with pytest.raises(CheckpointError, match="this very process"):
            DirectoryLock(tmp_path / "link").acquire()


# --- A checkpoint is one unit -----------------------------------------------------------------------


@pytest.fixture
def small_run(corpus_file: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    from ebt.cli import main

    assert main(train_args(corpus_file, out, "--train.steps=2", "--train.eval_every=2",
                           "--train.keep_checkpoints=true")) == 0
    return out


def consistent(out: Path) -> int:
    """The step of the run's one complete checkpoint (weights and training state agree), after the
    repairs a reader makes; fails if the checkpoint is mixed."""
    run = load_run(out)
    assert load_train_state(out)["step"] == run.step
    assert not any((out / name).exists() for name in (SAVING, SAVED))
    return run.step


KILL_AT_RENAME = textwrap.dedent("""
    import os, sys, torch
    from ebt.checkpoint import load_config, save_checkpoint_files
    from ebt.runs import load_run
    from ebt.train_state import load
    out, kill_at = sys.argv[1], int(sys.argv[2])
    run, state = load_run(out), load(out)
    weights = {k: v + 1 for k, v in run.model.state_dict().items()}
    calls = [0]
    def dying(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(9)  # as SIGKILL: no clean-up runs
            return real(*args, **kwargs)
        return call
    os.replace, os.rename = dying(os.replace), dying(os.rename)
    save_checkpoint_files(out, run.step + 1, weights, {k: v for k, v in state.items() if k != "step"},
                          load_config(out), keep=True)
    print(calls[0])
""")


def test_a_kill_at_any_moment_of_a_save_leaves_one_complete_checkpoint_that_resumes(small_run: Path,
                                                                                     corpus_file: Path) -> None:
    def save_killed_at(k: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(small_run), str(k)], env=ENV,
                              capture_output=True, text=True, timeout=120)

    before = (small_run / "model.safetensors").read_bytes()
    renames = int(save_killed_at(0).stdout)  # no kill: how many renames a save makes
    assert renames >= 8 and consistent(small_run) == 3
    step = 3
    for k in range(1, renames + 1):
        done = save_killed_at(k)
        assert done.returncode == 9, done.stderr
        got = consistent(small_run)
        assert got in (step, step + 1), (k, got)
        step = got
    assert step > 3 and (small_run / "model.safetensors").read_bytes() != before
    from ebt.cli import main

    assert main(["train", "--resume", "--out", str(small_run), "--quiet", f"--train.steps={step + 1}"]) == 0
    assert consistent(small_run) == step + 1


def test_a_failed_save_keeps_the_last_checkpoint_and_says_how_to_resume(corpus_file: Path, tmp_path: Path,
                                                                        capsys) -> None:
    out = tmp_path / "run"
    save_file = ebt.checkpoint.save_file

    def full_at_step_4(state, path, metadata):
        if metadata["step"] == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_file(state, path, metadata=metadata)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.checkpoint, "save_file", full_at_step_4)
        code, _, err = run_cli(train_args(corpus_file, out, "--train.steps=6", "--train.eval_every=2"), capsys)
    err = one_line(err)
    assert code == 2 and "checkpoint of step 4" in err and "No space left on device" in err
    assert "last complete checkpoint, step 2" in err and f"ebt train --resume --out {out}" in err
    assert consistent(out) == 2
    code, _, _ = run_cli(["train", "--resume", "--out", out, "--quiet"], capsys)
    assert code == 0 and consistent(out) == 6


def limited_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_real_write_failure_mid_save_loses_nothing(small_run: Path) -> None:
    """Unprivileged: RLIMIT_FSIZE makes the kernel refuse the training state's write (it is larger
    than the weights), as a full disk would."""
    weights = (small_run / "model.safetensors").stat().st_size
    assert (small_run / "train_state.pt").stat().st_size > 1.5 * weights
    process = ebt_process("train", "--resume", "--out", str(small_run), "--quiet", "--train.steps=4",
                  preexec_fn=limited_file_size(int(1.5 * weights)))
    _, err = process.communicate(timeout=300)
    err = one_line(err)
    assert process.returncode == 2 and "checkpoint of step 4" in err and "File too large" in err, err
    assert "last complete checkpoint, step 2" in err
    assert consistent(small_run) == 2


def test_a_full_disk_at_the_second_checkpoint_loses_nothing(corpus_file: Path, tmp_path: Path, capsys) -> None:
    """The real thing, where the test may mount a small tmpfs (as root); the unprivileged tests
    above hold the same promise without one."""
    probe = tmp_path / "probe"
    code, _, _ = run_cli(train_args(corpus_file, probe, "--train.steps=2", "--train.eval_every=2"), capsys)
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    checkpoint = sum((probe / n).stat().st_size for n in ("model.safetensors", "train_state.pt", "config.json"))
    disk = tmp_path / "disk"
    disk.mkdir()
    size = used + checkpoint // 2 + 64 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); test_a_failed_save_keeps_the_last_checkpoint... and "
                    "test_a_real_write_failure_mid_save_loses_nothing hold the promise unprivileged")
    try:
        out = disk / "run"
        code, _, err = run_cli(train_args(corpus_file, out, "--train.steps=4", "--train.eval_every=2"), capsys)
        err = one_line(err)
        assert code == 2 and "No space left on device" in err and "last complete checkpoint, step 2" in err, err
        assert consistent(out) == 2
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- An --overwrite killed at any moment puts the old run back --------------------------------------


def fake_run(out: Path, tag: str) -> dict[str, bytes]:
    """A run directory's files (content tagged, not loadable): what Replaced moves around."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "tokenizer.json"):
        (out / name).write_text(f"{tag} {name}")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "step-1.safetensors").write_text(f"{tag} kept")
    return snapshot(out)


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


class _Killed(BaseException):
    pass


def killed_after(k: int, patch: pytest.MonkeyPatch) -> None:
    real, calls = os.replace, [0]

    def replace(*args):
        calls[0] += 1
        if calls[0] > k:
            raise _Killed
        return real(*args)

    patch.setattr(os, "replace", replace)


@pytest.mark.parametrize("k", range(6))
def test_an_overwrite_killed_while_setting_aside_or_restoring_puts_the_old_run_back(k: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = fake_run(out, "old")
    replaced = Replaced()
    with pytest.MonkeyPatch.context() as patch:  # killed while setting the old run aside
        killed_after(k + 1, patch)  # (the names list is the first replace)
        with pytest.raises(_Killed):
            replaced.set_aside(out, [out / n for n in RUN_FILES if (out / n).exists()])
    assert recover(out) and snapshot(out) == old
    replaced = Replaced()
    replaced.set_aside(out, [out / n for n in RUN_FILES if (out / n).exists()])
    (out / "config.json").write_text("new config")  # the new run started, no checkpoint yet
    (out / "metrics.jsonl").write_text("new rows")
    with pytest.MonkeyPatch.context() as patch:  # killed while putting it back
        killed_after(k, patch)
        with pytest.raises(_Killed):
            replaced.restore()
    assert "back in place" in recover(out)[0] and snapshot(out) == old


def test_an_overwrite_killed_after_the_first_checkpoint_keeps_the_new_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fake_run(out, "old")
    replaced = Replaced()
    replaced.set_aside(out, [out / n for n in RUN_FILES if (out / n).exists()])
    new = {k: v for k, v in fake_run(out, "new").items() if not k.startswith(".")}
    assert "removed the replaced run" in recover(out)[0] and snapshot(out) == new
    replaced = Replaced()
    replaced.set_aside(out, [out / n for n in RUN_FILES if (out / n).exists()])
    newer = {k: v for k, v in fake_run(out, "newer").items() if not k.startswith(".")}
    os.rename(out / Replaced.ASIDE, out / f"{Replaced.ASIDE}.dropped")  # killed while dropping
    assert recover(out) and snapshot(out) == newer


def test_sigkill_of_an_overwrite_before_its_first_checkpoint_leaves_the_old_run(small_run: Path,
                                                                                corpus_file: Path) -> None:
    before, step = snapshot(small_run), load_run(small_run).step
    process = ebt_process(*train_args(corpus_file, small_run, "--overwrite", "--train.steps=100000", "--train.eval_every=0"))
    try:
        wait_for(lambda: (small_run / Replaced.ASIDE).is_dir() and (small_run / "metrics.jsonl").is_file()
                 and (small_run / "metrics.jsonl").read_text().count("\n") >= 2, "the new run's steps")
    finally:
        process.kill()
        process.communicate()
    assert load_run(small_run).step == step  # a reader puts the old run back
    assert snapshot(small_run) == before


# --- A killed parent leaves no child ----------------------------------------------------------------


def test_a_sweep_killed_outright_stops_its_workers_which_save(corpus_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    runner = ebt_process("scale", "run", "--axis", "width", "--values", "32,64,96", "--steps", "100000", "--windows", "2",
                 "--data", str(corpus_file), "--out", str(out), "--model.context_len=16", "--train.batch_size=4",
                 "--train.log_every=1")
    try:
        locks = lambda: [p for p in out.glob(".*.lock")]  # noqa: E731 - a point's run is being written
        wait_for(lambda: (locks() and list(out.glob("*/metrics.jsonl"))) or runner.poll() is not None,
                 "a point to train")
        assert runner.poll() is None, runner.communicate()
        code, _, err = run_cli(["scale", "run", "--out", out], capsys)  # a second sweep into it
        assert code == 2 and f"pid {runner.pid} " in one_line(err)
        worker = json.loads(locks()[0].read_text())["pid"]
        runner.kill()
        runner.communicate()
        wait_for(lambda: not alive(worker), "the worker to stop", seconds=60)
    finally:
        runner.kill()
    point = locks()[0].name[1:-len(".lock")] if locks() else None
    assert point is None  # every lock was released
    trained = [p.parent for p in out.glob("*/train_state.pt")]
    assert trained and all(consistent(p) > 0 for p in trained)  # the point saved before it stopped


# --- Prepared corpora: links, and finished work kept --------------------------------------------------


def test_prepare_data_over_a_link_replaces_the_corpus_it_points_to(corpus_file: Path, tmp_path: Path) -> None:
    prepare(str(corpus_file), tmp_path / "v1", progress=False)
    (tmp_path / "current").symlink_to(tmp_path / "v1")
    index = prepare(str(corpus_file), tmp_path / "current", overwrite=True, progress=False, validation_fraction=0.2)
    assert (tmp_path / "current").is_symlink() and is_prepared(tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "index.json").read_text())["validation_fraction"] == 0.2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_last_rename_keeps_the_finished_corpus_and_the_old_one(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    prepare(str(corpus_file), out, progress=False)
    old = snapshot(out)
    real = os.rename

    def failing(src, dst):
        if Path(src).name == ".prep.partial":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.data.prepared.os, "rename", failing)
        with pytest.raises(DataError, match=r"complete in .*\.prep\.partial.*mv "):
            prepare(str(corpus_file), out, overwrite=True, progress=False, shard_tokens=500)
    assert snapshot(out) == old and is_prepared(tmp_path / ".prep.partial")


def test_a_corpus_a_killed_prepare_was_replacing_comes_back(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    prepare(str(corpus_file), out, progress=False)
    old = snapshot(out)
    os.rename(out, tmp_path / ".prep.replaced")  # killed between the two renames
    with pytest.raises(Exception, match="holds a prepared corpus"):
        prepare(str(corpus_file), out, progress=False)
    assert snapshot(out) == old


def test_an_export_cut_short_is_completed_by_the_next(trained_runs, tmp_path: Path) -> None:
    model = ebt.load(trained_runs["ebt"]["dir"])
    out = tmp_path / "export"
    model.save_pretrained(out)
    (out / "config.json").unlink()  # what a kill before the last file leaves
    model.save_pretrained(out)
    assert torch.equal(next(iter(ebt.load(out).state_dict().values())), next(iter(model.state_dict().values())))


def test_no_hint_deletes_weights_a_run_cannot_resume_from(small_run: Path, capsys) -> None:
    (small_run / "train_state.pt").unlink()  # e.g. lost in a copy: the weights are all that is left
    code, _, err = run_cli(["train", "--resume", "--out", small_run, "--quiet"], capsys)
    err = one_line(err)
    assert code == 2 and "--overwrite" not in err and "--train.init=" in err and "ebt eval" in err
    assert load_run(small_run).step == 2


def test_a_resume_after_a_killed_overwrite_continues_the_run_put_back(small_run: Path, capsys) -> None:
    saved = json.loads((small_run / "config.json").read_text())
    Replaced().set_aside(small_run, [small_run / n for n in RUN_FILES if (small_run / n).exists()])
    killed = {**saved, "train": {**saved["train"], "lr": 0.05, "steps": 2000}}  # the --overwrite's own run
    (small_run / "config.json").write_text(json.dumps(killed))
    code, _, err = run_cli(["train", "--resume", "--out", small_run, "--quiet", "--train.steps=3"], capsys)
    assert code == 0 and "back in place" in err, err
    assert json.loads((small_run / "config.json").read_text())["train"]["lr"] == saved["train"]["lr"]
    assert consistent(small_run) == 3


def test_a_reader_during_an_overwrite_is_told_the_old_run_is_kept(small_run: Path, holder) -> None:
    Replaced().set_aside(small_run, [small_run / n for n in RUN_FILES if (small_run / n).exists()])
    (small_run / "config.json").write_text((small_run / Replaced.ASIDE / "config.json").read_text())
    holder(small_run)  # the --overwrite still running
    with pytest.raises(CheckpointError, match=r"being replaced \(--overwrite\).*kept in .*\.replaced"):
        load_run(small_run)


def test_a_directory_in_a_read_only_parent_takes_its_lock_inside(tmp_path: Path) -> None:
    (tmp_path / "mount" / "mine").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "mount")  # as a read-only mount
        with DirectoryLock(tmp_path / "mount" / "mine") as lock:
            assert lock.file == tmp_path / "mount" / "mine" / ".ebt.lock" and lock.file.is_file()
            with pytest.raises(CheckpointError, match="this very process"):
                DirectoryLock(tmp_path / "mount" / "mine").acquire()
    assert list((tmp_path / "mount" / "mine").iterdir()) == []


def test_a_full_disk_between_checkpoints_names_the_last_one(corpus_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    write = ebt.rundir.MetricsLog.write

    def full_after_step_3(self, row: dict) -> None:
        if row["step"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        write(self, row)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.rundir.MetricsLog, "write", full_after_step_3)
        code, _, err = run_cli(train_args(corpus_file, out, "--train.steps=6", "--train.eval_every=2"), capsys)
    err = one_line(err)
    assert code == 2 and "No space left on device" in err and "metrics.jsonl" in err
    assert "last complete checkpoint, step 2" in err and consistent(out) == 2


def test_a_corpus_a_killed_prepare_had_finished_goes_in_place(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    prepare(str(corpus_file), out, progress=False)
    prepare(str(corpus_file), tmp_path / "new", progress=False, validation_fraction=0.2)
    os.rename(out, tmp_path / ".prep.replaced")  # killed between the two renames, the new corpus finished
    os.rename(tmp_path / "new", tmp_path / ".prep.partial")
    with pytest.raises(DataError, match=r"left a prepared corpus in .*\.prep\.partial.*mv "):
        load_corpus(str(out))  # a reader is told where it is
    with pytest.raises(Exception, match="holds a prepared corpus"):
        prepare(str(corpus_file), out, progress=False)  # repairs first, then refuses to overwrite
    assert json.loads((out / "index.json").read_text())["validation_fraction"] == 0.2
