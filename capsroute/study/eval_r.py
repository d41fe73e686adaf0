"""`capsroute evaluate`: one trained network, measured at several evaluation r.

Training r and evaluation r are separate questions: a network trained with r = 3 can route
its test images with r = 1, 2, 5 or 7 (the number of iterations is an argument of the
forward pass, not a parameter). `evaluate_run` loads a run's checkpoint (`weights_only`) and
config, rebuilds its data splits from the seed, and evaluates the split at every requested r
with dynamic routing, plus, for a run trained with a control (`routing.mode=uniform|random`),
at the run's own mode. Each evaluation records accuracy, the loss parts and the routing
diagnostics of `capsroute.run.evaluate.evaluate`.

With `dataset` (`capsroute evaluate RUN_DIR --dataset affnist|affine_mnist|mnist40`) the run is
scored on that set's test images instead (Section 5.2's affNIST test of a network trained on
mnist40); the set must have the run's input shape. Those rows go to `RUN_DIR/eval_cross.csv`
with the run's recorded own-test accuracy beside them, never into eval_iters.csv.

Rows go to `RUN_DIR/eval_iters.csv` (one per split x mode x eval r) and the per-iteration
diagnostics to `RUN_DIR/eval_routing.csv`, both replaced atomically and merged with the rows
of earlier calls for the same checkpoint epoch (so `--split val` then `--split test` keeps
both). Evaluating at the run's own mode and r, on the same device, batch size and precision,
repeats the computation of the run's last epoch, so it reproduces the recorded accuracy
exactly; the `recorded_acc` column holds that recorded number for the comparison.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capsroute.config import VIEWPOINT_DATASETS, Config, effective_iterations
from capsroute.data.batches import Splits, input_shape, make_splits
from capsroute.data.files import DATASET_INFO, ImageTensors
from capsroute.data.viewpoint import evaluation_set
from capsroute.errors import CheckpointError, ConfigError
from capsroute.io import write_csv
from capsroute.nn.capsnet import CapsNet
from capsroute.run import rundir
from capsroute.run.checkpoint import load_run
from capsroute.run.evaluate import evaluate
from capsroute.run.rundir import (
    EVAL_COLUMNS,
    EVAL_CROSS_COLUMNS,
    EVAL_CROSS_FILE,
    EVAL_ITERS_FILE,
    EVAL_ROUTING_COLUMNS,
    EVAL_ROUTING_FILE,
)

SPLITS = ("test", "val", "train")
DEFAULT_ITERS = (1, 2, 3, 5, 7)
# The metrics.csv column that recorded each split's accuracy during training.
RECORDED_COLUMN = {"test": "test_acc", "val": "val_acc", "train": "train_eval_acc"}


@dataclass
class RunEvaluation:
    """What `evaluate_run` measured for one run directory.

    rows: the eval_iters.csv rows written by this call; routing_rows: their per-iteration
    diagnostics. `reference` is the row at the run's own mode and training r (None if that r
    was not asked for), whose `accuracy` must equal its `recorded_acc`.
    """

    run_dir: Path
    epoch: int
    train_r: int
    mode: str
    split: str
    rows: list[dict[str, Any]]
    routing_rows: list[dict[str, Any]]
    dataset: str | None = None  # another test set (eval_cross.csv), None: the run's own data

    @property
    def output_file(self) -> str:
        return EVAL_ITERS_FILE if self.dataset is None else EVAL_CROSS_FILE

    @property
    def reference(self) -> dict[str, Any] | None:
        own_r = effective_iterations(self.mode, self.train_r)
        return next(
            (row for row in self.rows if row["mode"] == self.mode and row["eval_r"] == own_r),
            None,
        )


def check_run_dir(run_dir: Path) -> Path:
    """The run directory's checkpoint path; `ConfigError` when the folder or file is missing."""
    if not run_dir.is_dir():
        raise ConfigError(f"no such run directory: {run_dir}")
    checkpoint = run_dir / rundir.CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise CheckpointError(
            f"{run_dir} holds no {rundir.CHECKPOINT_FILE}: not a run directory, or no epoch "
            "has finished yet"
        )
    return checkpoint


def evaluate_run(
    run_dir: Path,
    iters: Sequence[int] = DEFAULT_ITERS,
    split: str = "test",
    device: str | None = None,
    data_root: Path | None = None,
    dataset: str | None = None,
) -> RunEvaluation:
    """Evaluate the checkpoint in `run_dir` at every r of `iters` on `split` (or on the test
    set of `dataset`, see the module docstring); write the CSVs.

    `device` and `data_root` override the run's own settings (its config's `device`, e.g.
    `auto`, and `dataset.root`); exact reproduction of recorded numbers needs the device type
    the run was trained on. Holds the run directory's lock, so a run being trained is refused.
    """
    from capsroute.run.train import setup_torch  # train imports rich/torch pieces

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    with rundir.run_lock(run_dir):
        trained = load_run(run_dir)
        config = trained.config
        if device is not None:
            config = dataclasses.replace(config, device=device)
        if data_root is not None:
            config.dataset = dataclasses.replace(config.dataset, root=str(data_root))
        if config.model.kind != "capsnet" and dataset is None:
            raise ConfigError(
                f"{run_dir} trained a {config.model.kind}, which has no routing to evaluate "
                "at other r; evaluate CapsNet runs only, or score it on another test set "
                "with --dataset"
            )
        if split == "val" and config.dataset.val_size is None:
            raise ConfigError(
                f"{run_dir} has no validation split (trained without dataset.val_size); "
                "use --split test or --split train"
            )
        if dataset is not None:
            check_same_shape(run_dir, config, dataset)
        state = trained.state
        epoch = int(state.get("epoch", 0))
        recorded = _recorded_accuracy(state, "test" if dataset else split)
        torch_device = setup_torch(config)
        model = trained.model.to(torch_device)
        if dataset is None:
            data = _split_data(make_splits(config.dataset, config.seed, torch_device), split)
        else:
            data = evaluation_set(config.dataset, dataset, config.seed)
        result = RunEvaluation(
            run_dir=run_dir,
            epoch=epoch,
            train_r=config.routing.iterations,
            mode=config.routing.mode,
            split=split,
            rows=[],
            routing_rows=[],
            dataset=dataset,
        )
        plan = [("dynamic", r) for r in iters]
        if config.routing.mode != "dynamic":
            plan.append((config.routing.mode, 1))  # the control the run was trained with
        own_r = config.routing.effective_iterations
        if not isinstance(model, CapsNet):  # the baseline CNN: no routing, one evaluation
            plan = [(config.routing.mode, own_r)]
        for mode, r in plan:
            row, routing_rows = _evaluate_once(model, data, config, torch_device, mode, r)
            row.update(epoch=epoch, split=split, train_r=result.train_r)
            own = mode == result.mode and r == own_r
            row["recorded_acc"] = recorded if own else None
            if dataset is not None:
                row.update(dataset=dataset, own_test_acc=row.pop("recorded_acc"))
            result.rows.append(row)
            result.routing_rows += [
                {"epoch": epoch, "split": split, **per_iteration} for per_iteration in routing_rows
            ]
        write_results(run_dir, result)
    return result


def check_same_shape(run_dir: Path, config: Config, dataset: str) -> None:
    """`ConfigError` (one line) unless `dataset`'s images have the shape the run was trained on."""
    info = DATASET_INFO[dataset]
    other = (info.channels, info.size, info.size)
    own = input_shape(config.dataset)
    if other != own:
        same = [
            name
            for name in VIEWPOINT_DATASETS
            if (DATASET_INFO[name].channels, DATASET_INFO[name].size, DATASET_INFO[name].size)
            == own
        ]
        hint = f"choose one of {', '.join(same)}" if same else "train on dataset=mnist40 first"
        raise ConfigError(
            f"{run_dir} was trained on {config.dataset.name} images of shape "
            f"{'x'.join(map(str, own))}, but {dataset} images are {'x'.join(map(str, other))}: "
            f"{hint}"
        )


def _recorded_accuracy(state: dict[str, Any], split: str) -> float | None:
    """The accuracy the run recorded on `split` at its last epoch, if it recorded one."""
    metrics = state.get("metrics") or []
    if not metrics:
        return None
    value = metrics[-1].get(RECORDED_COLUMN[split])
    return float(value) if value is not None else None


def _split_data(splits: Splits, split: str) -> ImageTensors:
    if split == "test":
        return splits.test
    if split == "train":
        return splits.train_eval
    assert splits.val is not None
    return splits.val


@contextmanager
def routing_mode(model: CapsNet, mode: str) -> Iterator[None]:
    """Route with `mode` inside the block (a control needs r = 1), then restore the model's own."""
    if not isinstance(model, CapsNet):  # nothing to route
        yield
        return
    saved = model.digit.routing
    iterations = effective_iterations(mode, saved.iterations)
    model.digit.routing = dataclasses.replace(saved, mode=mode, iterations=iterations)
    try:
        yield
    finally:
        model.digit.routing = saved


def _evaluate_once(
    model: CapsNet, data: ImageTensors, config: Config, device: torch.device, mode: str, r: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One evaluation at (mode, r): the eval_iters.csv row and its per-iteration rows."""
    started = time.perf_counter()
    with routing_mode(model, mode):
        result = evaluate(
            model,
            data,
            config.dataset,
            config.model,
            config.train.eval_batch_size,
            device,
            config.train.precision,
            iterations=r,
            diagnostics=True,
        )
    none: dict[str, float] = {}  # a network without routing has no diagnostics
    final, first = (result.routing[-1], result.routing[0]) if result.routing else (none, none)
    row = {
        "mode": mode,
        "eval_r": r,
        "images": result.images,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "margin_loss": result.margin_loss,
        "recon_loss": result.recon_loss,
        "entropy": final.get("entropy"),
        "max_c": final.get("max_c"),
        "polarised": final.get("polarised"),
        "flip_first": first.get("flip"),
        "seconds": time.perf_counter() - started,
    }
    routing_rows = [
        {"mode": mode, "eval_r": r, **{k: v for k, v in it.items() if k in EVAL_ROUTING_COLUMNS}}
        for it in result.routing
    ]
    return row, routing_rows


def write_results(run_dir: Path, result: RunEvaluation) -> None:
    """Merge this call's rows into eval_iters.csv / eval_routing.csv (or, for another dataset,
    eval_cross.csv) and write them atomically.

    Rows of the same checkpoint epoch measured earlier are kept unless this call measured the
    same (split or dataset, mode, eval r) again; rows of another epoch are dropped (the weights
    changed).
    """
    where = "split" if result.dataset is None else "dataset"
    fresh = {(row[where], row["mode"], row["eval_r"]) for row in result.rows}
    outputs = [(EVAL_ITERS_FILE, result.rows, EVAL_COLUMNS)]
    if result.dataset is None:
        outputs.append((EVAL_ROUTING_FILE, result.routing_rows, EVAL_ROUTING_COLUMNS))
    else:
        outputs = [(EVAL_CROSS_FILE, result.rows, EVAL_CROSS_COLUMNS)]
    for name, rows, columns in outputs:
        kept = [
            row
            for row in read_rows(run_dir / name)
            if str(row.get("epoch")) == str(result.epoch)
            and (row.get(where), row.get("mode"), _int(row.get("eval_r"))) not in fresh
        ]
        merged = sorted(
            [*kept, *rows],
            key=lambda row: (
                str(row[where]) if result.dataset else "",
                SPLITS.index(row[where]) if row[where] in SPLITS else len(SPLITS),
                str(row["mode"]) != "dynamic",
                str(row["mode"]),
                _int(row["eval_r"]),
                _int(row.get("iteration", 0)),
            ),
        )
        write_csv(run_dir / name, merged, columns)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A CSV file's rows as dicts of text ([] when the file is missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def evaluate_runs(
    run_dirs: Sequence[Path],
    iters: Sequence[int] = DEFAULT_ITERS,
    split: str = "test",
    device: str | None = None,
    data_root: Path | None = None,
    dataset: str | None = None,
) -> Iterator[RunEvaluation]:
    """`evaluate_run` for each directory, after checking every one first (bad input: no work)."""
    if not run_dirs:
        raise ConfigError("give at least one RUN_DIR (a run directory holding checkpoint.pt)")
    for run_dir in run_dirs:
        check_run_dir(Path(run_dir))
    for run_dir in run_dirs:
        yield evaluate_run(Path(run_dir), iters, split, device, data_root, dataset)


def results_table(result: RunEvaluation) -> Any:
    """A rich Table of one run's rows: accuracy, loss and routing diagnostics per (mode, r)."""
    from rich.table import Table

    what = f"{result.split} set" if result.dataset is None else f"{result.dataset} test set"
    table = Table(title=f"{result.run_dir} (epoch {result.epoch}, {what})")
    headers = (
        "routing",
        "eval r",
        "accuracy %",
        "loss",
        "entropy",
        "max c",
        ">0.9",
        "flip 1→r",
        "s",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "routing" else "right")
    for row in result.rows:
        own = " (training)" if row.get("recorded_acc", row.get("own_test_acc")) is not None else ""
        table.add_row(
            f"{row['mode']}{own}",
            str(row["eval_r"]),
            f"{100 * row['accuracy']:.2f}",
            f"{row['loss']:.4f}",
            _fraction(row["entropy"]),
            _fraction(row["max_c"]),
            _fraction(row["polarised"]),
            _fraction(row["flip_first"]),
            f"{row['seconds']:.1f}",
        )
    return table


def reproduction_line(result: RunEvaluation) -> str | None:
    """Whether the evaluation at the run's own routing repeats the accuracy it recorded."""
    row = result.reference
    if row is None:
        return None
    if result.dataset is not None:
        own = row["own_test_acc"]
        if own is None:
            return None
        return (
            f"{result.run_dir}: {row['mode']} r={row['eval_r']}: {100 * row['accuracy']:.2f}% on "
            f"{result.dataset}, {100 * own:.2f}% on its own {result.split} set "
            f"(drop {100 * (own - row['accuracy']):.2f} points)"
        )
    if row["recorded_acc"] is None:
        return None
    same = row["accuracy"] == row["recorded_acc"]
    verdict = "reproduced exactly" if same else "DIFFERS (another device or precision?)"
    return (
        f"{result.run_dir}: {row['mode']} r={row['eval_r']} gives {100 * row['accuracy']:.4f}%, "
        f"the run recorded {100 * row['recorded_acc']:.4f}% on the {result.split} set: {verdict}"
    )


def _fraction(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"
