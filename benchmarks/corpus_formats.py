"""`ebt prepare-data` on parquet and compressed JSON-lines corpora, measured: its peak memory on a
generated corpus of about 1 GB against a 10 MB one (documents stream, so the two should be about
equal), and its throughput, per format.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/corpus_formats.py [--large-mb 1024] [--small-mb 10]
        [--formats parquet,jsonl.zst] [--work DIR] [--json]

The corpora are generated as `benchmarks/prepared_data.py` makes them (documents of 2–8 KB, runs
of Shakespeare's lines at seeded random places, never all held in memory): a folder of files of
about --file-mb MB of text each, as the Hub's datasets come. Parquet files have row groups of about
--row-group-mb MB (pyarrow's default compression, snappy) and the columns "text" and "id";
.jsonl.zst files are one Zstandard frame each (level 3). The sizes are of the text (the documents'
UTF-8 bytes); the files on disk are smaller. Each `ebt prepare-data --tokenizer byte` runs in its
own process under `/usr/bin/time -v` (its "Maximum resident set size" and CPU seconds; CPU, not
wall time, since the machine may be shared). Everything is written under --work (default: a
temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator


def documents(megabytes: float, seed: int = 0) -> Iterator[str]:
    """Documents of 2–8 KB of Shakespeare's lines until about `megabytes` MB of UTF-8 text."""
    from ebt.data.corpus import load_corpus

    text = "\n".join(line for play in load_corpus("shakespeare").train for line in play.splitlines() if line.strip())
    rng = random.Random(seed)
    target, written = int(megabytes * 1e6), 0
    while written < target:
        start = text.find("\n", rng.randrange(len(text) - 10_000)) + 1
        end = text.find("\n", start + rng.randint(2000, 8000))
        document = text[start:end]
        written += len(document.encode("utf-8"))
        yield document


def write_corpus(folder: Path, kind: str, megabytes: float, file_mb: float, row_group_mb: float) -> dict:
    """A folder of `kind` files ("parquet", "jsonl.zst", "jsonl.gz") holding about `megabytes` MB
    of text; returns {"text_mb", "disk_mb", "files", "documents"}."""
    folder.mkdir(parents=True)
    files, text_bytes, count, batch, batch_bytes, writer = 0, 0, 0, [], 0, None

    def open_next():
        nonlocal files
        path = folder / f"part-{files:05d}.{kind}"
        files += 1
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            return pq.ParquetWriter(path, pa.schema([("text", pa.string()), ("id", pa.int64())]))
        if kind == "jsonl.zst":
            import zstandard
            return zstandard.ZstdCompressor(level=3).stream_writer(path.open("wb"))
        import gzip
        return gzip.open(path, "wb")

    def flush():
        nonlocal batch, batch_bytes
        if kind == "parquet":
            import pyarrow as pa
            writer.write_table(pa.table({"text": batch, "id": list(range(count - len(batch), count))}))
        else:
            writer.write("".join(json.dumps({"text": d}) + "\n" for d in batch).encode("utf-8"))
        batch, batch_bytes = [], 0

    in_file = 0
    for document in documents(megabytes):
        if writer is None:
            writer, in_file = open_next(), 0
        size = len(document.encode("utf-8"))
        batch.append(document)
        batch_bytes, in_file, text_bytes, count = batch_bytes + size, in_file + size, text_bytes + size, count + 1
        if batch_bytes >= row_group_mb * 1e6 or in_file >= file_mb * 1e6:  # a row group (parquet) or a write
            flush()
        if in_file >= file_mb * 1e6:
            writer.close()
            writer = None
    if writer is not None:
        flush()
        writer.close()
    disk = sum(p.stat().st_size for p in folder.iterdir())
    return {"text_mb": text_bytes / 1e6, "disk_mb": disk / 1e6, "files": files, "documents": count}


def prepare(corpus: Path, out: Path) -> dict:
    """`ebt prepare-data CORPUS --out OUT` in its own process under /usr/bin/time -v."""
    argv = ["/usr/bin/time", "-v", sys.executable, "-m", "ebt.cli", "prepare-data", str(corpus), "--out", str(out),
            "--json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    index = json.loads(done.stdout)

    def field(name: str) -> float:
        return float(re.search(rf"{re.escape(name)}: ([0-9.:]+)", done.stderr).group(1))

    cpu = field("User time (seconds)") + field("System time (seconds)")
    return {"tokens": sum(s["tokens"] for s in index["splits"].values()), "cpu_s": cpu,
            "peak_rss_mib": round(field("Maximum resident set size (kbytes)") / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mb", type=float, default=1024)
    parser.add_argument("--small-mb", type=float, default=10)
    parser.add_argument("--file-mb", type=float, default=128, help="text per file")
    parser.add_argument("--row-group-mb", type=float, default=4, help="text per parquet row group")
    parser.add_argument("--formats", default="parquet,jsonl.zst")
    parser.add_argument("--work", type=Path, help="where to write corpora and prepared data (kept)")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="ebt-corpus-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for kind in a.formats.split(","):
            for name, megabytes in (("small", a.small_mb), ("large", a.large_mb)):
                corpus, out = work / f"{name}-{kind}", work / f"{name}-{kind}-prepared"
                made = write_corpus(corpus, kind, megabytes, min(a.file_mb, megabytes / 2), a.row_group_mb)
                measured = prepare(corpus, out)
                rows.append({"format": kind, "corpus": name, **made, **measured,
                             "text_mb_per_cpu_s": made["text_mb"] / measured["cpu_s"]})
                shutil.rmtree(corpus)
                shutil.rmtree(out)
        result = {"rows": rows, "machine": f"{platform.machine()}, {platform.python_version()}"}
        if a.json:
            print(json.dumps(result, indent=2))
            return
        print(f"{'format':10} {'corpus':6} {'files':>5} {'text MB':>9} {'disk MB':>9} {'tokens':>14} "
              f"{'CPU s':>7} {'MB/CPU s':>9} {'peak RSS MiB':>13}")
        for r in rows:
            print(f"{r['format']:10} {r['corpus']:6} {r['files']:5} {r['text_mb']:9.1f} {r['disk_mb']:9.1f} "
                  f"{r['tokens']:14,} {r['cpu_s']:7.1f} {r['text_mb_per_cpu_s']:9.1f} {r['peak_rss_mib']:13,}")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
