"""Runs per hour of a sweep run one after another vs packed on one GPU (`gpu_run.sh`).

    python benchmarks/pack_summary.py SWEEPS_ROOT T0 T1 T2 [T3]

SWEEPS_ROOT holds the sweeps `seq` (basic launcher, timed T0..T1), `packed`
(`--jobs-per-gpu`, timed T1..T2) and optionally `packed_graph` (the same with
`train.cuda_graph=true`, timed T2..T3). Prints, for each, the completed runs, the wall
seconds of the whole `capsroute sweep` command (process start, data loading, training,
evaluation, checkpoints) and runs/hour from them, the same from the first run's start to the
last run's end (summary.json), and the training throughput of the last epoch of each run
(images/s from its metrics.csv).
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from datetime import datetime
from pathlib import Path


def sweep_stats(root: Path) -> tuple[int, list[float], float]:
    """(completed runs, last-epoch training images/s of each run, seconds from the first run's
    start to the last run's end: the sweep without the command's own start) of one sweep."""
    done, rates, starts, ends = 0, [], [], []
    for summary in sorted(root.rglob("summary.json")):
        record = json.loads(summary.read_text())
        if record.get("status") == "completed":
            done += 1
            starts.append(datetime.fromisoformat(record["started_at"]))
            ends.append(datetime.fromisoformat(record["finished_at"]))
        metrics = summary.with_name("metrics.csv")
        if metrics.exists():
            rows = list(csv.DictReader(metrics.open()))
            if rows:
                rates.append(float(rows[-1]["images_per_s"]))
    span = (max(ends) - min(starts)).total_seconds() if starts else float("nan")
    return done, rates, span


def main() -> None:
    root, times = Path(sys.argv[1]), [float(t) for t in sys.argv[2:]]
    names = ["seq", "packed", "packed_graph"][: len(times) - 1]
    results = {}
    for name, seconds in zip(names, [b - a for a, b in itertools.pairwise(times)], strict=True):
        if not (root / name).exists():
            continue
        done, rates, span = sweep_stats(root / name)
        per_hour = 3600 * done / seconds
        results[name] = per_hour
        print(
            f"{name}: {done} runs completed in {seconds:.1f} s wall = {per_hour:.0f} runs/hour "
            f"(first run start to last run end {span:.0f} s = {3600 * done / span:.0f} runs/hour)"
            f"; last-epoch train img/s per run {[round(r) for r in rates]}, sum {sum(rates):.0f}"
        )
    for name in names[1:]:
        if results.get("seq") and name in results:
            print(f"{name} / one after another: {results[name] / results['seq']:.2f}x runs/hour")


if __name__ == "__main__":
    main()
