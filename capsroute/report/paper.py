"""The paper's own numbers, and our runs laid out the way the paper shows them.

Sabour, Frosst & Hinton (2017), Table 1: MNIST test error (%) of the baseline CNN and of
CapsNet with 1 or 3 routing iterations, with and without the reconstruction loss, mean ± std
over 3 trials. `table1` puts the matching runs of a report (final-epoch test error, mean ±
sample std over seeds) next to those values, row for row, with how the runs were trained, so
a short or subset run is never mistaken for a reproduction. Pure pandas: no torch, so reports
stay light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from capsroute.report.stats import estimate


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 1: which network, its r and decoder, and the paper's error in %."""

    method: str  # "baseline" or "CapsNet"
    routing: int | None  # None for the baseline
    reconstruction: bool | None  # None for the baseline
    error_mean: float
    error_std: float | None  # the paper gives none for the baseline


TABLE1 = (
    PaperRow("baseline", None, None, 0.39, None),
    PaperRow("CapsNet", 1, False, 0.34, 0.032),
    PaperRow("CapsNet", 1, True, 0.29, 0.011),
    PaperRow("CapsNet", 3, False, 0.35, 0.036),
    PaperRow("CapsNet", 3, True, 0.25, 0.005),
)
# Section 7: an ensemble of 7 CapsNets (r = 3, 24x24 crops) reaches 10.6% CIFAR-10 test error.
CIFAR10_ENSEMBLE_ERROR = 10.6
CIFAR10_ENSEMBLE_MODELS = 7

TABLE1_COLUMNS = [
    "method",
    "routing",
    "reconstruction",
    "n",
    "test error % (ours)",
    "test error % (paper)",
    "training",
]
# Keys of a run's flattened config that describe how it was trained (the "training" column).
_TRAIN_SIZE, _EPOCHS = "dataset.train_size", "train.epochs"
BASELINE_KEY = "model.kind"  # "baseline_cnn" marks the paper's baseline CNN


def method_of(config: Mapping[str, Any]) -> str:
    """ "baseline" for the baseline CNN, else "CapsNet" (runs saved before model.kind existed)."""
    return "baseline" if config.get(BASELINE_KEY) == "baseline_cnn" else "CapsNet"


def table1(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Table 1 with our MNIST runs beside the paper: one row per paper row, in its order.

    runs: the per-run table of a report (`aggregate.per_run`: run, dataset, r, seed,
    final_test_error, ...); configs: each run's flattened config by run name. Only MNIST
    runs enter; a CapsNet run matches the row of its r and `model.reconstruction`, a baseline
    run the baseline row. Empty when no MNIST run matches any row (then the paper table has
    nothing to be compared with).
    """
    rows, matched = [], 0
    mnist = runs[runs["dataset"] == "mnist"] if not runs.empty else runs
    for paper in TABLE1:
        cell = [run for run in mnist.itertuples(index=False) if _matches(run, configs, paper)]
        matched += len(cell)
        errors = [100 * float(run.final_test_error) for run in cell]
        rows.append(
            {
                "method": paper.method,
                "routing": "–" if paper.routing is None else paper.routing,
                "reconstruction": _yes_no(paper.reconstruction),
                "n": len(cell),
                "test error % (ours)": error_text(errors),
                "test error % (paper)": _paper_text(paper),
                "training": _training_text([configs.get(str(run.run), {}) for run in cell]),
            }
        )
    if not matched:
        return pd.DataFrame(columns=TABLE1_COLUMNS)
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def _matches(run: Any, configs: Mapping[str, Mapping[str, Any]], paper: PaperRow) -> bool:
    config = configs.get(str(run.run), {})
    if method_of(config) != paper.method:
        return False
    if paper.method == "baseline":
        return True
    return int(run.r) == paper.routing and _as_bool(config.get("model.reconstruction")) is (
        paper.reconstruction
    )


def _as_bool(value: Any) -> bool | None:
    """Config values may come back as bools or, from text columns, as 'True'/'False'."""
    if isinstance(value, bool) or value is None:
        return value
    return str(value).strip().lower() == "true"


def _yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def error_text(errors: Sequence[float], std_digits: int = 3) -> str:
    """Mean ± sample std (2 decimals; the std with `std_digits`, 3 as in Table 1); '–' without
    runs."""
    if not errors:
        return "–"
    value = estimate(list(errors))
    if value.n < 2 or math.isnan(value.std):
        return f"{value.mean:.2f} (n=1)"
    return f"{value.mean:.2f} ± {value.std:.{std_digits}f}"


def _paper_text(paper: PaperRow) -> str:
    if paper.error_std is None:
        return f"{paper.error_mean:.2f}"
    return f"{paper.error_mean:.2f} ± {paper.error_std:.3f}"


def _training_text(configs: Sequence[Mapping[str, Any]]) -> str:
    """'60000 images, 640 epochs' (every distinct setting of the cell's runs, joined by '; ')."""
    settings = sorted(
        {
            f"{_images(config.get(_TRAIN_SIZE))} images, {config.get(_EPOCHS, '?')} epochs"
            for config in configs
        }
    )
    return "; ".join(settings) or "–"


def _images(train_size: Any) -> str:
    """A missing or null train_size means the whole training split (60,000 for MNIST)."""
    if train_size is None or (isinstance(train_size, float) and math.isnan(train_size)):
        return "all 60000"
    return str(int(train_size))


ENSEMBLE_COLUMNS = [
    "dataset",
    "models",
    "test images",
    "ensemble error % (ours)",
    "members' error % (mean ± std)",
    "ensemble error % (paper)",
]


def ensemble_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per saved ensemble (`ensemble.json`, see `capsroute.study.ensemble`) beside the
    paper's 7-model CIFAR-10 ensemble (10.6%); the paper column is empty for other datasets."""
    rows = []
    for result in results:
        members = [100 * float(e) for e in result.get("member_errors", [])]
        dataset = str(result.get("dataset", "?"))
        rows.append(
            {
                "dataset": dataset,
                "models": len(members),
                "test images": result.get("images"),
                "ensemble error % (ours)": f"{100 * float(result['error']):.2f}",
                "members' error % (mean ± std)": error_text(members, std_digits=2),
                "ensemble error % (paper)": (
                    f"{CIFAR10_ENSEMBLE_ERROR:.1f} ({CIFAR10_ENSEMBLE_MODELS} models)"
                    if dataset == "cifar10"
                    else "–"
                ),
            }
        )
    return pd.DataFrame(rows, columns=ENSEMBLE_COLUMNS)
