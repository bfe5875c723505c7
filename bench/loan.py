"""Lending Club loading: parsing the csv against reading the parsed-file cache, side by side in one run.

Writes a generated accepted_2007_to_2018Q4.csv in the real 151-column format (`--rows`, 200,000 by
default), then loads it in fresh processes, so each figure has its own peak memory (ru_maxrss):
  * cold: an empty cache (parse the csv, write the cache);
  * warm: the cache written by the cold load (hash the file, read the .npz, split and fit);
  * uncached: `data.cache: false` (parse every time);
each `--repeats` times (median). Ratios are against the uncached load.

Run: `make bench-loan` or `.venv/bin/python bench/loan.py [--rows 200000]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uverify.testing.loan import write_loan_csv

CHILD = """
import json, resource, sys, time
from uverify.datasets import load
from uverify.specs.schema import LoanData
started = time.perf_counter()
splits = load(LoanData(dataset="loan", path=sys.argv[1], cache=sys.argv[2] == "1"))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "train": len(splits.train), "features": splits.train.X.shape[1]}))
"""


def measure(csv: Path, cache_dir: Path, cached: bool) -> dict[str, float]:
    env = {"UVERIFY_CACHE_DIR": str(cache_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(csv), "1" if cached else "0"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        csv = write_loan_csv(folder / "accepted_2007_to_2018Q4.csv", args.rows, seed=0)
        print(
            f"generated {args.rows:,} rows ({csv.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - started:.1f} s; each load in a fresh process, timed after the imports"
        )
        rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "uncached": []}
        for _ in range(args.repeats):
            cache = folder / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            rows["cold"].append(measure(csv, cache, cached=True))
            rows["warm"].append(measure(csv, cache, cached=True))
            rows["uncached"].append(measure(csv, folder / "unused", cached=False))
        cache_bytes = sum(p.stat().st_size for p in (folder / "cache").rglob("*.npz"))
        base = statistics.median(r["seconds"] for r in rows["uncached"])
        print(f"{'load':9} {'seconds':>8} {'vs uncached':>12} {'peak MiB':>9}")
        for name, results in rows.items():
            seconds = statistics.median(r["seconds"] for r in results)
            peak = statistics.median(r["peak"] for r in results) / 2**20
            print(f"{name:9} {seconds:8.2f} {base / seconds:11.2f}x {peak:9.0f}")
        first = rows["warm"][0]
        print(
            f"cache file {cache_bytes / 2**20:.1f} MiB; {int(first['train']):,} training loans, "
            f"{int(first['features'])} features"
        )


if __name__ == "__main__":
    main()
