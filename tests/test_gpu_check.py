"""`benchmarks/gpu_check.sh --device cpu`: the GPU check's dry run, every part at tiny sizes.

The same script runs on one CUDA device in under 8 minutes (README "Speed"); here it runs on the
CPU and the test reads its one JSON file: every part present and passed, the equivalence checks
within the tests' float64 tolerances, training losses finite and falling, the benchmark's keys.
Never its timings.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PARTS = {"environment", "equivalence", "train_ebt", "train_ebt_s2", "train_transformer", "bench"}
BENCH_KEYS = {"train_ratio", "train_ratio_s2", "matmul_flops_per_s", "mfu_ebt", "mfu_ebt_s2", "mfu_transformer",
              "cache_speedup", "ebt_cached_s_per_token", "ebt_uncached_s_per_token", "ebt_activation_mib",
              "ebt_activation_mib_checkpointed", "transformer_activation_mib", "transformer_peak_mib_checkpointed"}


@pytest.fixture
def check_module():
    """benchmarks/gpu_check.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_on_the_cpu_writes_every_part(tmp_path: Path, check_module) -> None:
    corpus = tmp_path / "corpus.txt"  # the script generates one when not given (the `corpus` part)
    corpus.write_text(check_module.corpus(0.05, "synthetic"))
    out = tmp_path / "gpu_check.json"
    done = gpu_check("--device", "cpu", "--out", str(out), "--corpus", str(corpus))
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["passed"] and r["failed_parts"] == [] and r["device"] == "cpu" and r["settings"]["dry_run"] is True
    assert r["settings"]["corpus"] == str(corpus) and r["settings"]["corpus_bytes"] == corpus.stat().st_size
    assert set(r["parts"]) == PARTS
    assert all(p["ok"] and p["seconds"] >= 0 for p in r["parts"].values())
    assert r["torch"] == torch.__version__ and r["device_name"]

    equivalence = r["parts"]["equivalence"]
    assert equivalence["passed"] and equivalence["dtype"] == "float64" and equivalence["max_abs_diff"] < 1e-9
    assert len(equivalence["checks"]) == 7 and all(c["passed"] for c in equivalence["checks"].values())

    for kind in ("ebt", "ebt_s2", "transformer"):
        run = r["parts"][f"train_{kind}"]
        assert run["precision"] == "fp32" and run["steps"] == r["settings"]["steps"] == 24
        assert run["finite"] and run["falling"] and run["last_loss"] < run["first_loss"]
        assert math.isfinite(run["validation_loss"]) and run["flops_per_token"] > 0
        assert r["summary"][f"train_{kind}"]["mfu"] > 0

    bench = r["parts"]["bench"]
    assert BENCH_KEYS <= set(bench) and BENCH_KEYS <= set(r["summary"])
    assert bench["device"] == "cpu" and bench["overrides"]["model.dim"] == "32"
    assert bench["ebt_activation_mib"] > bench["ebt_activation_mib_checkpointed"] > 0
    assert "flops_per_token" in r["summary"]["mfu_formula"]


def test_a_missing_corpus_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = gpu_check("--device", "cpu", "--corpus", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "x.json"),
                     timeout=30)
    assert done.returncode == 2 and "is not a file" in done.stderr and not (tmp_path / "x.json").exists()


def test_merge_records_a_failed_part_and_keeps_the_others(tmp_path: Path, check_module) -> None:
    for name, rc, result in (("equivalence", 0, {"passed": True}), ("train_ebt", 2, None),
                             ("train_transformer", 0, {"first_loss": 5.0, "finite": False})):
        (tmp_path / f"{name}.rc").write_text(f"{rc}\n")
        (tmp_path / f"{name}.seconds").write_text("1.5\n")
        (tmp_path / f"{name}.log").write_text("Traceback ...\nebt train: error: the corpus is empty\n")
        if result is not None:
            (tmp_path / f"{name}.json").write_text(json.dumps(result))
    r = check_module.merge(tmp_path, {"device": "cuda"})
    assert not r["passed"] and r["failed_parts"] == ["train_ebt", "train_transformer"]
    assert r["parts"]["equivalence"]["ok"] and r["parts"]["train_ebt"]["exit_code"] == 2
    assert "the corpus is empty" in r["parts"]["train_ebt"]["error"]
    assert r["elapsed_s"] == 4.5
