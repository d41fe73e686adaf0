"""Runs per hour of a sweep run one after another vs packed on one GPU (`gpu_run.sh`).

    python benchmarks/pack_summary.py SWEEPS_ROOT T0 T1 T2

SWEEPS_ROOT holds the sweeps `seq` (basic launcher, timed T0..T1) and `packed`
(`--jobs-per-gpu`, timed T1..T2). Prints, for each, the completed runs, the wall seconds of the
whole `capsroute sweep` command (process start, data loading, training, evaluation, checkpoints)
and runs/hour from them; then the training throughput of the last epoch of each run
(images/s from its metrics.csv): one after another the GPU trains one run at a time, packed the
runs' throughputs add up while they overlap.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def sweep_stats(root: Path) -> tuple[int, list[float]]:
    """(completed runs, last-epoch training images/s of each run) of one sweep folder."""
    done, rates = 0, []
    for summary in sorted(root.rglob("summary.json")):
        if json.loads(summary.read_text()).get("status") == "completed":
            done += 1
        metrics = summary.with_name("metrics.csv")
        if metrics.exists():
            rows = list(csv.DictReader(metrics.open()))
            if rows:
                rates.append(float(rows[-1]["images_per_s"]))
    return done, rates


def main() -> None:
    root, t0, t1, t2 = Path(sys.argv[1]), *(float(t) for t in sys.argv[2:5])
    results = {}
    for name, seconds in (("seq", t1 - t0), ("packed", t2 - t1)):
        done, rates = sweep_stats(root / name)
        per_hour = 3600 * done / seconds
        results[name] = per_hour
        print(
            f"{name}: {done} runs completed in {seconds:.1f} s wall = {per_hour:.0f} runs/hour; "
            f"last-epoch train img/s per run {[round(r) for r in rates]}, sum {sum(rates):.0f}"
        )
    if results.get("seq"):
        print(f"packed / one after another: {results['packed'] / results['seq']:.2f}x runs/hour")


if __name__ == "__main__":
    main()
