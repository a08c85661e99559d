"""Sharded checkpoints (train.checkpoint_format = "sharded", torch.distributed.checkpoint): each
process writes its own shards; a run resumes on another number of processes (1 → 2, 2 → 3,
2 → 1) exactly where an uninterrupted full-state run is; a background save (async_checkpoint) is
waited for; loading, evaluation, export and `ebt consolidate` read the shards as full weights; a
missing or damaged shard is an error naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ebt.checkpoint
import ebt.safe_shards
import ebt.sharded
from ebt.cli import main
from ebt.errors import CheckpointError, ConfigError
from ebt.runs import load_run

from test_parallel import assert_close
from test_run_reliability import train_interrupted

# Global batch 12: 1, 2 and 3 processes each take an equal share.
SMALL = ["--model.n_layers=2", "--model.dim=32", "--model.n_heads=2", "--model.context_len=16", "--train.batch_size=12",
         "--train.eval_every=0", "--train.eval_examples=2", "--train.log_every=1", "--train.device=cpu",
         "--train.seed=3", "--train.warmup_fraction=0", "--train.lr_schedule=constant", "--quiet"]
PRESETS = {"ebt": "text-ebt-tiny", "transformer": "text-transformer-tiny"}


def _new(kind: str, out: Path, corpus: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--preset", PRESETS[kind], "--out", str(out), "--data", str(corpus), f"--train.steps={steps}",
            *SMALL, *extra]


def _resume(out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--resume", "--out", str(out), f"--train.steps={steps}", "--quiet", *extra]


def _resume_here(out: Path, steps: int, *extra: str) -> list[str]:
    """Resume a run that trained under FSDP2 in this one process (FSDP2 needs torchrun's processes)."""
    return _resume(out, steps, "--train.parallel=ddp", *extra)


def _torchrun(processes: int, argv: list[str], log: Path) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "ebt.cli", *argv]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    log.write_text(done.stdout + done.stderr)
    return done.returncode


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_run(run).model.state_dict()


@pytest.fixture(scope="module")
def chains(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """For each model (S1 EBT, Transformer++): 2 steps on 1 process, then 2 more on 2 processes
    ("KIND-at-4"), then 2 more on 3 processes ("KIND-3") or on 1 ("KIND-1"); and the uninterrupted
    full-state runs of 4 and 6 steps on 1 process ("KIND-full-4", "KIND-full-6"). The EBT trains
    under FSDP2 with sharded checkpoints throughout (its last leg on 1 process writes a full one);
    the Transformer++ starts with a full checkpoint, then trains under DDP with sharded ones
    written in the background (async_checkpoint, a save every step). Returns (root, exit codes)."""
    root = tmp_path_factory.mktemp("sharded")
    codes = {}
    ebt_run, t_run = root / "ebt", root / "transformer"
    codes["ebt-1p"] = main(_new("ebt", ebt_run, corpus_file, 2, "--train.checkpoint_format=sharded"))
    shutil.copytree(ebt_run, root / "ebt-at-2")
    codes["ebt-2p"] = _torchrun(2, _resume(ebt_run, 4, "--train.parallel=fsdp"), root / "ebt-2p.log")
    codes["transformer-1p"] = main(_new("transformer", t_run, corpus_file, 2))
    codes["transformer-2p"] = _torchrun(2, _resume(t_run, 4, "--train.parallel=ddp", "--train.checkpoint_format=sharded",
                                                   "--train.async_checkpoint=true", "--train.eval_every=1"),
                                        root / "transformer-2p.log")
    for kind, parallel, last in (("ebt", "fsdp", "full"), ("transformer", "ddp", "sharded")):
        shutil.copytree(root / kind, root / f"{kind}-at-4")
        shutil.copytree(root / kind, root / f"{kind}-1")
        os.rename(root / kind, root / f"{kind}-3")
        codes[f"{kind}-3p"] = _torchrun(3, _resume(root / f"{kind}-3", 6, f"--train.parallel={parallel}"),
                                        root / f"{kind}-3p.log")
        codes[f"{kind}-1p-again"] = main(_resume(root / f"{kind}-1", 6, f"--train.checkpoint_format={last}",
                                                 "--train.parallel=ddp"))  # one process: FSDP2 needs torchrun's
        for steps in (4, 6):
            codes[f"{kind}-full-{steps}"] = main(_new(kind, root / f"{kind}-full-{steps}", corpus_file, steps))
    return root, codes


def test_every_leg_of_the_chains_runs(chains) -> None:
    root, codes = chains
    failed = {name: (root / f"{name}.log").read_text()[-3000:] if (root / f"{name}.log").is_file() else code
              for name, code in codes.items() if code != 0}
    assert not failed, failed


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_a_sharded_run_resumes_on_another_number_of_processes(kind: str, chains) -> None:
    """1 → 2 processes (4 steps), then 2 → 3 and 2 → 1 (6 steps): the weights of an uninterrupted
    one-process full-state run, to float rounding."""
    root, _ = chains
    assert_close(_weights(root / f"{kind}-at-4"), _weights(root / f"{kind}-full-4"))
    for leg in ("3", "1"):
        assert_close(_weights(root / f"{kind}-{leg}"), _weights(root / f"{kind}-full-6"))
    # Training moved the weights between the legs: the comparisons are not of one point.
    four, six = _weights(root / f"{kind}-full-4"), _weights(root / f"{kind}-full-6")
    assert any(not torch.allclose(four[k], six[k]) for k in four)


def test_each_process_writes_its_own_shards_and_the_old_ones_go(chains) -> None:
    root, _ = chains
    assert sorted(p.name for p in (root / "ebt-at-4" / "shards" / "step-4").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "model.json"]
    assert ebt.sharded.shard_steps(root / "ebt-at-4") == [4]  # step 2's shards were removed once 4 was committed
    assert len(list((root / "ebt-3" / "shards" / "step-6").glob("*.distcp"))) == 3
    assert not (root / "ebt-at-4" / "model.safetensors").exists()
    state = torch.load(root / "ebt-at-4" / "train_state.pt", weights_only=True)
    assert state["step"] == 4 and state["optimizer"] is None  # the optimizer is in the shards


def test_formats_switch_between_runs(chains) -> None:
    """full → sharded (the Transformer++'s second leg) and sharded → full (the EBT's last leg on one
    process): the next checkpoint is of the new format and the old format's files go."""
    root, _ = chains
    assert not (root / "transformer-at-4" / "model.safetensors").exists()
    assert ebt.sharded.shard_steps(root / "transformer-at-4") == [4]
    assert (root / "ebt-1" / "model.safetensors").is_file() and not (root / "ebt-1" / "shards").exists()
    assert torch.load(root / "ebt-1" / "train_state.pt", weights_only=True)["optimizer"] is not None


def test_background_saves_are_waited_for(chains) -> None:
    """The Transformer++'s DDP leg saved in the background at steps 3 and 4 (the second waited for
    the first; the run's end for the second): the checkpoint in place is step 4's, complete."""
    root, _ = chains
    run = root / "transformer-at-4"
    assert not (run / ebt.checkpoint.SAVING).exists() and not (run / ebt.checkpoint.SAVED).exists()
    assert load_run(run).step == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "validation"] == [2, 3, 4]


def test_eval_load_and_export_read_a_sharded_run_as_the_full_one(chains, tmp_path: Path, capsys) -> None:
    root, _ = chains
    sharded, full = root / "ebt-at-4", root / "ebt-full-4"
    assert load_run(sharded).step == 4
    results = []
    for run in (sharded, full):
        assert main(["eval", str(run), "--json", "--max-examples", "4", "--device", "cpu"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-4)
    model = load_run(sharded).model
    model.save_pretrained(tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").is_file() and not (tmp_path / "export" / "shards").exists()
    assert_close(load_file(str(tmp_path / "export" / "model.safetensors")), _weights(full))
    assert load_run(tmp_path / "export").step == 4


def test_consolidate_writes_one_weights_file_in_place(chains, tmp_path: Path, capsys) -> None:
    root, _ = chains
    run = tmp_path / "run"
    shutil.copytree(root / "ebt-at-4", run)
    assert main(["consolidate", str(run)]) == 0
    assert "the weights of step 4" in capsys.readouterr().out
    assert_close(load_file(str(run / "model.safetensors")), _weights(root / "ebt-full-4"))
    assert ebt.sharded.newest_shards(run) is None  # load_run now reads model.safetensors
    assert main(["consolidate", str(run)]) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["consolidate", str(root / "ebt-full-4")]) == 2
    assert "holds no sharded checkpoint" in capsys.readouterr().err
    assert main(_resume_here(run, 5)) == 0  # the shards still resume it; the next checkpoint replaces the file
    assert not (run / "model.safetensors").exists() and load_run(run).step == 5


@pytest.mark.parametrize("damage", ["truncated", "missing", "metadata", "metadata-missing", "record-missing"])
def test_a_damaged_or_missing_shard_is_an_error_naming_the_file(damage: str, chains, tmp_path: Path, capsys) -> None:
    """Whatever file of the last checkpoint's shards is cut short or gone, loading, resuming and
    consolidating name it (a missing .metadata or model.json is not "no checkpoint yet")."""
    root, _ = chains
    run = tmp_path / "run"
    shutil.copytree(root / "ebt-at-4", run)
    folder = run / "shards" / "step-4"
    file = folder / {"metadata": ".metadata", "metadata-missing": ".metadata",
                     "record-missing": "model.json"}.get(damage, "__1_0.distcp")
    if damage.endswith("missing"):
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(file).replace(".", r"\.")):
        load_run(run)
    for argv in (_resume_here(run, 5), ["consolidate", str(run)]):  # resuming and consolidating read the same files
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert str(file) in err and len(err.splitlines()) == 1, err
        assert "--overwrite" not in err and "safely" not in err, err


def test_shards_that_do_not_fit_the_config_are_refused_in_one_line(chains, tmp_path: Path, capsys) -> None:
    root, _ = chains
    run = tmp_path / "run"
    shutil.copytree(root / "ebt-at-4", run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["dim"] = 64  # an edited config.json
    (run / "config.json").write_text(json.dumps(config))
    assert main(_resume_here(run, 5)) == 2
    err = capsys.readouterr().err.strip()
    assert "model.dim = 64" in err and "shards/step-4" in err and len(err.splitlines()) == 1, err
    record = run / "shards" / "step-4" / "model.json"  # without the record of the model: the shapes say it
    record.write_text(json.dumps({"step": "4"}))
    assert main(_resume_here(run, 5)) == 2
    err = capsys.readouterr().err.strip()
    assert "of shape (256, 32)" in err and "has (256, 64)" in err and len(err.splitlines()) == 1, err


def test_async_checkpoint_needs_sharded_checkpoints_and_a_torch_that_has_it(corpus_file: Path, tmp_path: Path,
                                                                            capsys, monkeypatch) -> None:
    assert main(_new("ebt", tmp_path / "a", corpus_file, 2, "--train.async_checkpoint=true")) == 2
    err = capsys.readouterr().err.strip()
    assert "train.async_checkpoint" in err and "'full'" in err and len(err.splitlines()) == 1, err
    import torch.distributed.checkpoint as dcp

    monkeypatch.delattr(dcp, "async_save")
    with pytest.raises(ConfigError, match=r"train.async_checkpoint = true needs .*async_save.*torch ≥ 2.3"):
        ebt.sharded.check_async()
    assert main(_new("ebt", tmp_path / "b", corpus_file, 2, "--train.checkpoint_format=sharded",
                     "--train.async_checkpoint=true")) == 2
    assert "async_save" in capsys.readouterr().err
    assert main(_new("ebt", tmp_path / "c", corpus_file, 2, "--train.checkpoint_format=zip")) == 2
    err = capsys.readouterr().err.strip()
    assert "train.checkpoint_format = 'zip' is not allowed" in err and "'sharded'" in err, err


def test_an_interrupt_during_a_background_save_leaves_a_complete_checkpoint(chains, corpus_file: Path,
                                                                           tmp_path: Path) -> None:
    """SIGINT at step 3 while step 2's checkpoint is written in the background: both are waited
    for, step 3's is the run's, and resuming to step 4 reaches the uninterrupted run's weights."""
    root, _ = chains
    out = tmp_path / "run"
    argv = [a if a != "--train.eval_every=0" else "--train.eval_every=2" for a in _new(
        "ebt", out, corpus_file, 100, "--train.checkpoint_format=sharded", "--train.async_checkpoint=true")]
    assert train_interrupted(argv, 3) == 130
    assert load_run(out).step == 3 and ebt.sharded.shard_steps(out) == [3]
    assert not (out / ebt.checkpoint.SAVING).exists()
    assert main(_resume(out, 4, "--train.async_checkpoint=false")) == 0
    assert_close(_weights(out), _weights(root / "ebt-full-4"))


def test_a_save_killed_after_its_commit_is_completed_and_one_killed_before_is_dropped(chains,
                                                                                    tmp_path: Path) -> None:
    root, _ = chains
    run = tmp_path / "run"
    shutil.copytree(root / "ebt-at-2", run)
    finish = ebt.checkpoint.finish_interrupted_save

    def killed_after_the_commit(out: Path):  # the kill lands after the rename, before the files are moved
        if (Path(out) / ebt.checkpoint.SAVED).is_dir():
            raise KeyboardInterrupt
        return finish(out)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ebt.checkpoint, "finish_interrupted_save", killed_after_the_commit)
        assert main(_resume(run, 3)) == 130
    assert (run / ebt.checkpoint.SAVED).is_dir()
    assert load_run(run).step == 3  # the reader finished the moves
    assert not (run / ebt.checkpoint.SAVED).exists() and ebt.sharded.shard_steps(run) == [2, 3]
    partial = run / ebt.checkpoint.SAVING / "shards" / "step-4"  # a save killed before its commit
    partial.mkdir(parents=True)
    (partial / "__0_0.distcp").write_bytes(b"half")
    assert main(_resume(run, 4)) == 0
    assert load_run(run).step == 4 and ebt.sharded.shard_steps(run) == [4]


def test_kept_checkpoints_keep_their_shards_and_load_by_step(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [a if a != "--train.eval_every=0" else "--train.eval_every=1" for a in _new(
        "transformer", out, corpus_file, 3, "--train.checkpoint_format=sharded", "--train.keep_checkpoints=true")]
    assert main(argv) == 0
    assert ebt.sharded.shard_steps(out) == [1, 2, 3]
    two, three = load_run(out, step=2), load_run(out)
    assert (two.step, three.step) == (2, 3)
    assert any(not torch.equal(v, three.model.state_dict()[k]) for k, v in two.model.state_dict().items())
    with pytest.raises(CheckpointError, match="keeps no weights of step 7; it keeps steps 1, 2, 3"):
        load_run(out, step=7)


class _Touch:
    """A pickle that creates a file when it is loaded: what a malicious checkpoint would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_reading_shards_runs_no_code_from_them(chains, tmp_path: Path, capsys) -> None:
    """DCP's .metadata is a pickle: one that would run code is refused naming the file, and a
    non-tensor item of the shards is read only once `torch.load(weights_only=True)` accepts it."""
    import io
    import pickle

    root, _ = chains
    run, pwned = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(root / "ebt-at-4", run)
    metadata = run / "shards" / "step-4" / ".metadata"
    metadata.write_bytes(pickle.dumps(_Touch(pwned)))
    with pytest.raises(CheckpointError, match=r"\.metadata is not a checkpoint's metadata that can be read safely "
                                              r"\(it refers to pathlib.*touch"):
        load_run(run)
    assert main(["eval", str(run), "--max-examples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(metadata) in err and len(err.splitlines()) == 1, err
    assert not pwned.exists()

    class Item:  # what DCP's planner hands over for a non-tensor item
        class dest_index:
            fqn = "optimizer.param_groups.0.lr"

    planner, data = ebt.safe_shards.checked_planner(), io.BytesIO()
    torch.save({"lr": _Touch(pwned)}, data)
    data.seek(0)
    with pytest.raises(CheckpointError, match=r"'optimizer.param_groups.0.lr' is not plain data \(it refers to "):
        planner.load_bytes(Item, data)
    assert not pwned.exists()


def test_a_failed_sharded_save_stops_in_one_line_and_keeps_the_last_checkpoint(corpus_file: Path, tmp_path: Path,
                                                                                capsys, monkeypatch) -> None:
    """A full disk while the shards of step 2 are written (DCP wraps the OSError in an exception
    that is not an `Exception`): one line with the operating system's cause; step 1's checkpoint
    is the run's and nothing partial is left."""
    import errno

    from torch.distributed.checkpoint import FileSystemWriter

    out = tmp_path / "run"
    argv = [a if a != "--train.eval_every=0" else "--train.eval_every=1"
            for a in _new("ebt", out, corpus_file, 2, "--train.checkpoint_format=sharded")]
    write, calls = FileSystemWriter.write_data, []

    def full_disk(self, plan, planner):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", full_disk)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "saving the sharded checkpoint of step 2" in err and "No space left on device" in err, err
    assert len(err.splitlines()) == 1, err
    assert load_run(out).step == 1 and ebt.sharded.shard_steps(out) == [1]
    assert not (out / ebt.checkpoint.SAVING).exists()
