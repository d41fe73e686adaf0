"""Section 7's single-model results on other data sets, with our runs beside them.

Sabour et al. (2017), Section 7: 2.7% test error on smallNORB ("the exact same architecture"
as MNIST's) and 4.3% on SVHN (a smaller network on the 73,257-image training set), each from
a CapsNet with 3 routing iterations. `section7_table` puts our CapsNet runs on those data sets
(final-epoch test error, mean ± sample std over seeds, per r) next to those numbers, with a
training column as in Table 1, so a short or subset run is never taken for a reproduction.
Other data sets the paper gives no single-model number for (Fashion-MNIST: not in the paper;
CIFAR-10: only an ensemble) are left to the ensemble table and the summary. Pure pandas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from capsroute.report.paper import error_text, method_of

# dataset -> the paper's test error in %, reported for r = 3
SECTION7_ERRORS: dict[str, float] = {"smallnorb": 2.7, "svhn": 4.3}
PAPER_ROUTING = 3

SECTION7_COLUMNS = [
    "dataset",
    "routing",
    "n",
    "test error % (ours)",
    "test error % (paper)",
    "training",
]
_TRAIN_SIZE, _EPOCHS = "dataset.train_size", "train.epochs"


def section7_table(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (Section 7 data set, r) with CapsNet runs; the paper's number on r = 3.

    runs: the per-run table of a report (run, dataset, r, seed, final_test_error, ...);
    configs: each run's flattened config by run name. Empty when no run matches.
    """
    if runs.empty:
        return pd.DataFrame(columns=SECTION7_COLUMNS)
    rows = []
    for dataset, paper_error in SECTION7_ERRORS.items():
        chosen = [
            run
            for run in runs[runs["dataset"] == dataset].itertuples(index=False)
            if method_of(configs.get(str(run.run), {})) == "CapsNet"
        ]
        for r in sorted({int(run.r) for run in chosen}):
            cell = [run for run in chosen if int(run.r) == r]
            rows.append(
                {
                    "dataset": dataset,
                    "routing": r,
                    "n": len(cell),
                    "test error % (ours)": error_text(
                        [100 * float(run.final_test_error) for run in cell]
                    ),
                    "test error % (paper)": f"{paper_error:.1f}" if r == PAPER_ROUTING else "–",
                    "training": _training_text([configs.get(str(run.run), {}) for run in cell]),
                }
            )
    return pd.DataFrame(rows, columns=SECTION7_COLUMNS)


def _training_text(configs: list[Mapping[str, Any]]) -> str:
    """'all images, 524 epochs' (every distinct setting of the cell's runs, joined by '; ')."""
    settings = {
        f"{_images(config.get(_TRAIN_SIZE))} images, {config.get(_EPOCHS, '?')} epochs"
        for config in configs
    }
    return "; ".join(sorted(settings)) or "–"


def _images(train_size: Any) -> str:
    """A missing or null train_size means the whole training split."""
    if train_size is None or (isinstance(train_size, float) and math.isnan(train_size)):
        return "all"
    return str(int(train_size))
