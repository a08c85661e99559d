"""Corpora larger than memory, measured: peak memory of training from a prepared 1 GB corpus
against a 10 MB one (and the 10 MB corpus held in memory), and `ebt prepare-data`'s throughput.

    .venv/bin/python benchmarks/prepared_data.py [--large-mb 1024] [--small-mb 10] [--steps 100] [--json]

The corpora are generated: documents of 2–8 KB, runs of Shakespeare's lines at seeded random places,
written as JSON lines (the large one is never held in memory). Each training run is its own
process (`ebt train --preset text-ebt-tiny`, byte tokenizer), whose peak resident set size
(ru_maxrss) is reported; the goal is the large corpus's peak within 20% of the small one's.
Everything is written under --work (default: a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs `ebt ARGS` in this process and prints its peak RSS (KiB on Linux) as the last line.
PEAK_RSS = ("import resource, sys\nfrom ebt.cli import main\ncode = main(sys.argv[1:])\n"
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)")


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A .jsonl corpus of about `megabytes` MB; returns its size in bytes."""
    from ebt.data.corpus import load_corpus

    text = "\n".join(line for play in load_corpus("shakespeare").train for line in play.splitlines() if line.strip())
    rng = random.Random(seed)
    target, written = int(megabytes * 1e6), 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:  # a document: a random run of whole lines, 2–8 KB
            start = text.find("\n", rng.randrange(len(text) - 10_000)) + 1
            end = text.find("\n", start + rng.randint(2000, 8000))
            record = json.dumps({"text": text[start:end]}) + "\n"
            out.write(record)
            written += len(record)  # json.dumps escapes non-ASCII: characters are bytes
    return written


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ebt(*args: str, peak: bool = False) -> tuple[float, int | None, str]:
    """Run `ebt ARGS` in a fresh process: (CPU seconds, peak RSS in MiB or None, stdout). CPU time,
    not wall time: the machine may be shared."""
    argv = [sys.executable, "-c", PEAK_RSS, *args] if peak else [sys.executable, "-m", "ebt.cli", *args]
    started = cpu_seconds()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = cpu_seconds() - started
    if done.returncode != 0:
        raise SystemExit(f"ebt {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    rss = None
    if peak:
        last = done.stdout.strip().splitlines()[-1].split()
        rss = round(int(last[1]) / 1024)
    return seconds, rss, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mb", type=float, default=1024)
    parser.add_argument("--small-mb", type=float, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--work", type=Path, help="where to write corpora and runs (kept)")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="ebt-prepared-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    try:
        train = ["train", "--preset", "text-ebt-tiny", f"--train.steps={a.steps}", "--train.eval_every=0",
                 "--train.device=cpu", "--quiet", "--overwrite"]
        for name, megabytes in (("small", a.small_mb), ("large", a.large_mb)):
            corpus, prepared = work / f"{name}.jsonl", work / f"{name}-prepared"
            size = write_corpus(corpus, megabytes)
            seconds, _, _ = ebt("prepare-data", str(corpus), "--out", str(prepared), "--overwrite")
            index = json.loads((prepared / "index.json").read_text())
            tokens = sum(s["tokens"] for s in index["splits"].values())
            train_seconds, rss, _ = ebt(*train, "--data", str(prepared), "--out", str(work / f"run-{name}"), peak=True)
            rows[f"{name} prepared"] = {"corpus_mb": size / 1e6, "tokens": tokens, "prepare_cpu_s": seconds,
                                        "prepare_mb_per_cpu_s": size / 1e6 / seconds, "train_cpu_s": train_seconds,
                                        "peak_rss_mib": rss}
            if name == "small":  # the same corpus read into memory, as without prepare-data
                train_seconds, rss, _ = ebt(*train, "--data", str(corpus), "--out", str(work / "run-memory"), peak=True)
                rows["small in memory"] = {"corpus_mb": size / 1e6, "train_cpu_s": train_seconds, "peak_rss_mib": rss}
            corpus.unlink()  # only the prepared copy is needed from here
        ratio = rows["large prepared"]["peak_rss_mib"] / rows["small prepared"]["peak_rss_mib"]
        result = {"rows": rows, "large_over_small_peak_rss": ratio, "steps": a.steps}
        if a.json:
            print(json.dumps(result, indent=2))
            return
        print(f"{'':18} {'corpus MB':>10} {'tokens':>14} {'prepare CPU s':>14} {'MB per CPU s':>13} "
              f"{'train CPU s':>12} {'peak RSS MiB':>13}")
        for name, r in rows.items():
            print(f"{name:18} {r['corpus_mb']:10.1f} {r.get('tokens', 0):14,} {r.get('prepare_cpu_s', 0):14.1f} "
                  f"{r.get('prepare_mb_per_cpu_s', 0):13.1f} {r['train_cpu_s']:12.1f} {r['peak_rss_mib']:13,}")
        print(f"peak RSS, large / small prepared: {ratio:.3f} (goal ≤ 1.2); {a.steps} training steps each")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
