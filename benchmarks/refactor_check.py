"""Proof that a refactor changed nothing: every model kind trains to the same per-step losses and
final validation, and run directories written before the change still load and score the same.

    python benchmarks/refactor_check.py record REF_DIR     # before the change: train, score, keep the runs
    python benchmarks/refactor_check.py check REF_DIR      # after it: train again and compare; re-score REF_DIR's runs

`record` trains each kind (text S1, both System 2 recipes, the Transformer++, S1 with gradient
accumulation, the image EBT, the DiT, the video EBT and the video Transformer++) for a few steps
at tiny sizes on the CPU through the command line, writes their runs under REF_DIR/runs, and the
losses of every step, the validation rows and `ebt eval` of each run to REF_DIR/reference.json.
`check` trains the same runs into a temporary folder with the code as it is now and compares
row by row (relative 1e-6, float rounding of a reordered sum), then scores the runs REF_DIR kept
(written by the old code) with the new code. A key the reference lacks (a metric added since) is
listed, not compared; a key it has that is gone is a difference. Exit 0 when everything matches. Takes about two
minutes on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from ebt.cli import main as ebt

TEXT = ["--model.n_layers=1", "--model.dim=32", "--model.n_heads=2", "--model.context_len=32",
        "--train.batch_size=8", "--train.eval_examples=8"]
KINDS = {
    "text-ebt-s1": ["--preset", "text-ebt-tiny", *TEXT],
    "text-ebt-s2paper": ["--preset", "text-ebt-s2paper-tiny", *TEXT],
    "text-ebt-s2": ["--preset", "text-ebt-s2-tiny", *TEXT],
    "text-transformer": ["--preset", "text-transformer-tiny", *TEXT],
    "text-ebt-s1-accum": ["--preset", "text-ebt-tiny", *TEXT, "--train.grad_accum=2"],
    "text-ebt-s2paper-accum": ["--preset", "text-ebt-s2paper-tiny", *TEXT, "--train.grad_accum=2"],
    "image-ebt": ["--preset", "image-ebt-tiny", "--model.n_layers=1", "--model.dim=16", "--model.n_heads=2",
                  "--train.batch_size=8", "--train.eval_examples=8"],
    "image-dit": ["--preset", "image-dit-tiny", "--model.n_layers=1", "--model.dim=16", "--model.n_heads=2",
                  "--train.batch_size=8", "--train.eval_examples=8"],
    "video-ebt": ["--preset", "video-ebt-tiny", "--model.n_layers=1", "--model.dim=32", "--model.n_heads=2",
                  "--video.clips=64", "--train.batch_size=4", "--train.eval_examples=4"],
    "video-transformer": ["--preset", "video-transformer-tiny", "--model.n_layers=1", "--model.dim=32",
                          "--model.n_heads=2", "--video.clips=64", "--train.batch_size=4",
                          "--train.eval_examples=4"],
}
COMMON = ["--train.steps=8", "--train.eval_every=4", "--train.log_every=1", "--train.device=cpu", "--quiet"]
# The thinking budgets an old run is scored at (EBTs; the others once, as they are).
BUDGETS = {"text": [[], ["--steps", "3", "--samples", "2"]], "image": [[], ["--steps", "3"]],
           "video": [[], ["--steps", "3"]]}


def _cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ebt(list(args))
    if code != 0:
        raise SystemExit(f"ebt {' '.join(args)} exited {code}")
    return out.getvalue()


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train_s", "wall_s") and not k.endswith("_per_s")}
            for r in rows]


def _scores(name: str, run: Path) -> list[dict]:
    task = name.split("-")[0]
    budgets = BUDGETS[task] if "ebt" in name else [[]]
    scores = [json.loads(_cli("eval", str(run), "--json", "--max-examples", "8", *b)) for b in budgets]
    return [{k: v for k, v in s.items() if k != "run"} for s in scores]  # where the run lies is no score


def _train(name: str, root: Path) -> Path:
    torch.manual_seed(0)
    _cli("train", *KINDS[name], *COMMON, "--out", str(root / name))
    return root / name


ADDED: set[str] = set()  # keys of outputs the reference predates (a new metric): listed, not differences


def _same(a, b, where: str, problems: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                ADDED.add(k)
            elif k not in b:
                problems.append(f"{where}.{k}: only before")
            else:
                _same(a[k], b[k], f"{where}.{k}", problems)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", problems)
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if not (math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))):
            problems.append(f"{where}: {a!r} before, {b!r} after")
    elif a != b:
        problems.append(f"{where}: {a!r} before, {b!r} after")


def record(ref: Path) -> int:
    runs = ref / "runs"
    runs.mkdir(parents=True, exist_ok=False)
    reference = {}
    for name in KINDS:
        run = _train(name, runs)
        reference[name] = {"rows": _rows(run), "scores": _scores(name, run)}
        print(f"{name}: {len(reference[name]['rows'])} rows recorded")
    (ref / "reference.json").write_text(json.dumps(reference, indent=1))
    return 0


def check(ref: Path) -> int:
    reference = json.loads((ref / "reference.json").read_text())
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in KINDS:
            run = _train(name, Path(tmp))
            found: list[str] = []
            _same(reference[name]["rows"], _rows(run), f"{name} training", found)
            _same(reference[name]["scores"], _scores(name, run), f"{name} fresh eval", found)
            _same(reference[name]["scores"], _scores(name, ref / "runs" / name), f"{name} old run", found)
            print(f"{name}: {'same' if not found else f'{len(found)} differences'}")
            problems += found
    for p in problems[:40]:
        print("  " + p)
    if ADDED:
        print(f"new outputs the reference predates (not compared): {', '.join(sorted(ADDED))}")
    print("everything matches" if not problems else f"{len(problems)} differences")
    return 0 if not problems else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "check"):
        sys.exit(__doc__)
    torch.set_num_threads(1)
    sys.exit((record if sys.argv[1] == "record" else check)(Path(sys.argv[2])))
