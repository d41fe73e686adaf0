"""An ensemble of trained runs, as the paper's CIFAR-10 result (Section 7): 7 CapsNets whose
class-capsule lengths are averaged on the test set (10.6% error).

`evaluate_ensemble(run_dirs)` loads each run's final network from its checkpoint, computes
its class scores on the common test set (unaugmented, centre-cropped as in training's
evaluation), averages them over the models and counts the errors of the average. The members
must have been tested on the same images: same dataset and test subset (a `dataset.test_size`
subset depends on the seed, so seeds must then agree). `write_ensemble` saves the result as
`ensemble.json` next to the runs, where `capsroute report` (which never loads torch) reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from capsroute.config import Config
from capsroute.data.batches import eval_batches, make_splits
from capsroute.errors import ConfigError
from capsroute.io import write_json
from capsroute.nn.capsnet import correct_predictions
from capsroute.run.checkpoint import load_run
from capsroute.run.evaluate import classify
from capsroute.run.rundir import ENSEMBLE_FILE


@dataclass
class EnsembleResult:
    """Test error (fractions) of the averaged scores and of every member alone."""

    dataset: str
    images: int
    error: float
    member_errors: list[float]
    runs: list[str] = field(default_factory=list)

    @property
    def models(self) -> int:
        return len(self.member_errors)


def _test_key(config: Config) -> tuple[Any, ...]:
    """What decides the test images: dataset, its preprocessing, and the subset."""
    data = config.dataset
    subset_seed = config.seed if data.test_size is not None else None
    return (data.name, data.test_size, subset_seed, data.crop)


@torch.no_grad()
def evaluate_ensemble(
    run_dirs: Sequence[Path], data_root: Path | None = None, batch_size: int = 500
) -> EnsembleResult:
    """Average the class scores (capsule lengths) of the runs' networks on their test set."""
    if not run_dirs:
        raise ConfigError("an ensemble needs at least one run directory")
    device = torch.device("cpu")
    loaded = [(t.config, t.model) for t in (load_run(Path(run), data_root) for run in run_dirs)]
    keys = {_test_key(config) for config, _ in loaded}
    if len(keys) > 1:
        raise ConfigError(
            "the runs were tested on different images (dataset, crop or seeded test subset "
            "differ); an ensemble needs one test set"
        )
    first = loaded[0][0]
    dataset = dataclasses.replace(
        first.dataset, train_size=first.dataset.train_size or 1, on_device=False
    )  # only the test split is used
    test = make_splits(dataset, first.seed, device).test
    total: torch.Tensor | None = None  # (N, K) summed scores
    wrong = torch.zeros(len(loaded), dtype=torch.int64)  # per member
    for member, (_, model) in enumerate(loaded):
        scores = torch.cat(
            [
                classify(model, batch.images, device)
                for batch in eval_batches(test, dataset, batch_size, device)
            ]
        ).float()  # (N, K)
        wrong[member] = int((~correct_predictions(scores, test.labels)).sum())
        total = scores if total is None else total + scores
    assert total is not None
    n = len(test)
    return EnsembleResult(
        dataset=first.dataset.name,
        images=n,
        error=float((~correct_predictions(total, test.labels)).float().mean()),
        member_errors=[int(w) / n for w in wrong],
        runs=[str(run) for run in run_dirs],
    )


def write_ensemble(result: EnsembleResult, folder: Path) -> Path:
    """`folder/ensemble.json` (atomically): what `capsroute report` shows as the ensemble row."""
    path = Path(folder) / ENSEMBLE_FILE
    write_json(path, {**dataclasses.asdict(result), "models": result.models})
    return path
