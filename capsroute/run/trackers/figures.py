"""The figures a tracker run gets at the end, drawn from the run's own CSV files.

They are drawn into a temporary folder and handed to the trackers only: the run directory's
record is not changed. Two PNGs: accuracy per epoch (train-eval, test, validation if any) and
the routing diagnostics per iteration at the last epoch (mean |Δb| and coupling entropy).
"""

from __future__ import annotations

import csv
from pathlib import Path

from capsroute.run import rundir

ACCURACY_COLUMNS = ("train_eval_acc", "test_acc", "val_acc")
ROUTING_PANELS = (("delta_b", "mean |Δb_ij|"), ("entropy", "coupling entropy (nats)"))
DPI = 100


def _rows(path: Path) -> list[dict[str, float]]:
    """A CSV file's rows as numbers; empty and text cells (routing.csv's `split`) left out, []
    when the file is missing or unreadable."""
    try:
        with path.open(newline="") as handle:
            return [
                {k: float(v) for k, v in row.items() if _is_number(v)}
                for row in csv.DictReader(handle)
            ]
    except (OSError, csv.Error):
        return []


def _is_number(text: str | None) -> bool:
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def run_figures(run_dir: Path, folder: Path) -> list[Path]:
    """Draw the run's accuracy curves and last-epoch routing into `folder`; return the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _rows(run_dir / rundir.METRICS_FILE)
    routing = _rows(run_dir / rundir.ROUTING_FILE)
    made: list[Path] = []
    if metrics:
        fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        for column in ACCURACY_COLUMNS:
            points = [(r["epoch"], 100 * r[column]) for r in metrics if column in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=column)
        ax.set(xlabel="epoch", ylabel="accuracy (%)", title=run_dir.name)
        ax.legend(fontsize="small")
        made.append(_save(fig, folder / "accuracy.png"))
    last = [r for r in routing if metrics and r.get("epoch") == metrics[-1]["epoch"]]
    if last:
        fig, panels = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
        iterations = [r["iteration"] for r in last]
        for ax, (column, label) in zip(panels, ROUTING_PANELS, strict=True):
            ax.plot(iterations, [r.get(column, float("nan")) for r in last], marker="o")
            ax.set(xlabel="routing iteration", ylabel=label)
        fig.suptitle(f"routing at epoch {int(last[0]['epoch'])}")
        made.append(_save(fig, folder / "routing.png"))
    return made


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
