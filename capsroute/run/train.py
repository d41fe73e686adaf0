"""The training loop: one run from config to a complete, resumable run directory.

`train_run(config, run_dir)` is the whole path: set up the device and seeds, load the data as
tensors, build the CapsNet, resume from `checkpoint.pt` if there is one, then per epoch train,
evaluate (train-eval subset, validation split if any, and test set, routing diagnostics on the
test set), and write `metrics.csv`, `routing.csv`, `checkpoint.pt` and `summary.json`, each
atomically. With a validation split, the best epoch (and early stopping, if asked for) is chosen
on it, never on the test set.
Shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run
repeats exactly the epochs an uninterrupted one would have run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from capsroute.config import Config, ModelConfig, config_to_dict
from capsroute.config_history import resume_conflicts
from capsroute.data.batches import (
    Batch,
    Splits,
    input_shape,
    make_splits,
    num_batches,
    train_batches,
)
from capsroute.data.epoch_loader import epoch_batches
from capsroute.device import (
    autocast,
    grad_scaler,
    keep_cpu_memory_mapped,
    resolve_device,
)
from capsroute.errors import CheckpointError, one_line
from capsroute.io import write_csv
from capsroute.nn import build_model
from capsroute.nn.capsnet import CapsNet, CapsNetOutput, correct_predictions, reseed_routing
from capsroute.nn.losses import LossParts
from capsroute.run import rundir
from capsroute.run.checkpoint import load_checkpoint, resume_from, save_checkpoint
from capsroute.run.evaluate import EvalResult, evaluate
from capsroute.run.graph_step import (
    GraphedTrainStep,
    capturable_adam,
    graphed_pass,
    portable_optimizer_state,
    uses_graph,
)
from capsroute.run.guard import check_existing_run
from capsroute.run.nonfinite import NonFiniteLossError, likely_cause
from capsroute.run.progress import epoch_line, epoch_progress
from capsroute.run.record import (
    TrainState,
    exit_note,
    finish_summary,
    keep_saved,
    new_summary,
    record_not_started,
    record_stop,
    stops_early,
    write_summary,
)
from capsroute.run.schedule import lr_multiplier
from capsroute.run.signals import InterruptedRunError, StopRequest, stop_requests
from capsroute.run.trackers import epoch_values, open_trackers

log = logging.getLogger("capsroute")

# Each epoch's shuffling and augmentation are seeded from (seed, epoch) alone, so a resumed run
# draws exactly what an uninterrupted one does. A prime stride keeps (seed, epoch) pairs apart;
# the random-routing control draws from a stream offset so it never shares the data's seed.
EPOCH_SEED_STRIDE = 1_000_003
ROUTING_SEED_OFFSET = 500_000


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s data order and augmentation."""
    return seed * EPOCH_SEED_STRIDE + epoch


@dataclass
class Trainer:
    """What one run trains with, held together so the epoch loop takes it as one argument."""

    model: CapsNet
    step_fn: torch.nn.Module | GraphedTrainStep  # the model, compiled, or its CUDA graph
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    splits: Splits
    device: torch.device


def train_run(config: Config, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume, or confirm complete) the run in `run_dir`; return its summary."""
    run_dir = Path(run_dir)
    rundir.ensure_writable(run_dir)
    with stop_requests() as stop, rundir.run_lock(run_dir):
        remove_partial_writes(run_dir)
        try:
            return _train_locked(config, run_dir, console or Console(stderr=True), stop)
        except KeyboardInterrupt as exc:  # only off the main thread, or from a test
            raise InterruptedRunError(
                f"interrupted; run the same command to resume ({rundir.SUMMARY_FILE} says where)"
            ) from exc


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of writes a SIGKILL cut short (`.checkpoint.pt.*.tmp`, up to
    the checkpoint's size); safe under the run's lock, where no one else writes."""
    for partial in run_dir.glob(".*.tmp"):
        partial.unlink(missing_ok=True)


def _train_locked(
    config: Config, run_dir: Path, console: Console, stop: StopRequest
) -> dict[str, Any]:
    existing = check_existing_run(config, run_dir, check_lock=False)
    if existing.done:  # the record stays exactly as training left it
        log.info(existing.message)
        return rundir.read_summary(run_dir)
    try:
        return _train(config, run_dir, console, stop)
    except InterruptedRunError as exc:  # before the loop's own record: note it here
        record_not_started(config, run_dir, rundir.STATUS_INTERRUPTED, str(exc))
        raise


def _train(config: Config, run_dir: Path, console: Console, stop: StopRequest) -> dict[str, Any]:
    device = setup_torch(config)
    checkpoint_path = run_dir / rundir.CHECKPOINT_FILE
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    if checkpoint is not None:
        check_resumable(checkpoint["config"], config_to_dict(config), checkpoint_path)
    splits = make_splits(config.dataset, config.seed, device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config.train))
    scaler = grad_scaler(device, config.train.precision)
    state = TrainState(epoch=0, step=0, metrics=[], routing=[], wall_seconds=0.0)
    if checkpoint is not None:
        resume_from(checkpoint, checkpoint_path, model, optimizer, schedule, scaler)
        state = TrainState(**checkpoint["state"])
        log.info("resuming %s after epoch %d of %d", run_dir, state.epoch, config.train.epochs)
    step_fn: torch.nn.Module | GraphedTrainStep
    step_fn = torch.compile(model) if config.train.compile else model
    summary = new_summary(config, run_dir, model, device, splits)
    patience = config.train.early_stopping_patience
    if state.epoch >= config.train.epochs or stops_early(state.metrics, patience):
        log.info("%s already completed %d epochs; nothing to train", run_dir, state.epoch)
        return finish_summary(summary, state, rundir.STATUS_COMPLETED, run_dir)
    stop.check()  # a signal during start-up: nothing trained yet
    write_summary(summary, state, rundir.STATUS_RUNNING, run_dir)
    if uses_graph(config, device):  # same steps, replayed from one CUDA graph
        optimizer = capturable_adam(optimizer, torch.zeros((), device=device))
        batch_shape = (config.train.batch_size, *input_shape(config.dataset))
        step_fn = GraphedTrainStep(model, optimizer, config, batch_shape, state.step).prepare()
    trainer = Trainer(model, step_fn, optimizer, schedule, scaler, splits, device)
    trackers = open_trackers(config, run_dir, state.metrics, state.routing)
    saved = state.epoch  # the epoch the checkpoint on disk holds
    try:
        try:
            # signals are acted on by `stop.check()` between steps, never inside a write
            for epoch in range(state.epoch + 1, config.train.epochs + 1):
                started = time.perf_counter()
                row, routing_rows = run_epoch(config, epoch, trainer, state, console, stop)
                state.epoch = epoch
                state.metrics.append(row)
                state.routing.extend(routing_rows)
                state.wall_seconds += time.perf_counter() - started
                save_epoch(run_dir, state, model, optimizer, schedule, scaler, config)
                saved = epoch
                write_summary(summary, state, rundir.STATUS_RUNNING, run_dir)
                trackers.log_epoch(epoch, epoch_values(row, routing_rows))
                log.info(epoch_line(row, config.train.epochs))
                stop.check()
                if stops_early(state.metrics, patience):
                    log.info("no better validation accuracy for %d epochs: stopping", patience)
                    break
        except BaseException:  # an exit between counting an epoch and saving it
            keep_saved(state, saved)
            raise
    except InterruptedRunError as exc:
        trackers.finish(record_stop(summary, state, rundir.STATUS_INTERRUPTED, run_dir, str(exc)))
        raise
    except SystemExit as exc:  # e.g. submitit exiting for a SLURM requeue after USR2
        note = exit_note(exc, state.epoch)
        trackers.finish(record_stop(summary, state, rundir.STATUS_INTERRUPTED, run_dir, note))
        raise
    except KeyboardInterrupt as exc:
        trackers.finish(
            record_stop(summary, state, rundir.STATUS_INTERRUPTED, run_dir, "interrupted")
        )
        raise InterruptedRunError(
            f"interrupted after epoch {state.epoch}; run the same command to resume"
        ) from exc
    except Exception as exc:
        trackers.finish(record_stop(summary, state, rundir.STATUS_FAILED, run_dir, one_line(exc)))
        raise
    return trackers.finish(finish_summary(summary, state, rundir.STATUS_COMPLETED, run_dir))


def setup_torch(config: Config) -> torch.device:
    """Threads, determinism and the device, before any tensor is made."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # determinism does not need new tensors pre-filled with NaN (~10% of a CPU step)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_cpu_memory_mapped()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.train.deterministic
        torch.backends.cuda.matmul.allow_tf32 = config.train.tf32
        torch.backends.cudnn.allow_tf32 = config.train.tf32
    return device


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint trained with a different config (a silent mix is worse)."""
    changed = resume_conflicts(saved, current)
    if changed:
        raise CheckpointError(
            f"{path} was trained with a different config ({'; '.join(changed[:3])}); "
            "use another run_name=... for the new config, or move the old run away"
        )


def train_step(
    step_fn: Callable[..., CapsNetOutput],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: Batch,
    model_cfg: ModelConfig,
    device: torch.device,
    precision: str,
    skip_nonfinite: bool = False,
) -> tuple[CapsNetOutput, LossParts]:
    """One optimisation step: forward (autocast), margin + reconstruction loss, backward, Adam.

    `batch` (images float in [0, 1], labels) is on `device`. The same code runs in
    `run_epoch` and in `capsroute bench`, so the benchmark times exactly what training does.
    Nothing here reads a value back to the host: on CUDA the step never waits for the GPU,
    except with `skip_nonfinite`, which must look at the loss before updating the weights.
    """
    with autocast(device, precision):
        out = step_fn(batch.images, batch.labels)
        parts = out.loss(batch.recon_target, batch.labels, model_cfg)
    optimizer.zero_grad(set_to_none=True)
    if skip_nonfinite and not bool(torch.isfinite(parts.total)):
        return out, parts
    scaler.scale(parts.total).backward()
    scaler.step(optimizer)
    scaler.update()
    return out, parts


def run_epoch(
    config: Config,
    epoch: int,
    trainer: Trainer,
    state: TrainState,
    console: Console,
    stop: StopRequest | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One pass over the training set, then evaluation; returns the metrics and routing rows."""
    model, step_fn, optimizer, schedule = (
        trainer.model, trainer.step_fn, trainer.optimizer, trainer.schedule,
    )  # fmt: skip
    scaler, splits, device = trainer.scaler, trainer.splits, trainer.device
    train, dataset = config.train, config.dataset
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    reseed_routing(
        model, epoch_seed(config.seed, epoch) + ROUTING_SEED_OFFSET
    )  # routing.mode=random
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, margin, recon, correct
    batches = num_batches(len(splits.train), train.batch_size)
    lr = optimizer.param_groups[0]["lr"]
    skip = train.nonfinite == "skip"
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)  # stays on the device
    model.train()
    seen = 0
    started = time.perf_counter()
    loader = epoch_batches if device.type == "cuda" else train_batches  # same batches, no syncs
    epoch_data = loader(splits.train, dataset, train.batch_size, generator, device)
    with epoch_progress(console, epoch, config.train.epochs, batches, train.progress) as advance:
        if isinstance(step_fn, GraphedTrainStep):
            lr = schedule.get_last_lr()[0]
            means, bad_step = graphed_pass(step_fn, epoch_data, schedule, state, advance)
            loss, margin, recon, correct = means
            first_bad_step = torch.tensor(bad_step)
        for batch in () if isinstance(step_fn, GraphedTrainStep) else epoch_data:
            if stop is not None:
                stop.check()
            out, parts = train_step(
                step_fn,
                optimizer,
                scaler,
                batch,
                config.model,
                device,
                train.precision,
                skip_nonfinite=skip,
            )
            schedule.step()
            state.step += 1
            if skip and not bool(torch.isfinite(parts.total)):
                state.skipped_steps += 1
                log.warning("non-finite loss at step %d skipped (train.nonfinite=skip)", state.step)
                continue
            bad = ~torch.isfinite(parts.total) & (first_bad_step < 0)
            first_bad_step = torch.where(bad, state.step, first_bad_step)
            n = batch.labels.shape[0]
            recon = parts.reconstruction if parts.reconstruction is not None else parts.margin * 0
            totals += torch.stack(
                [
                    parts.total.detach().double() * n,
                    parts.margin.detach().double() * n,
                    recon.detach().double() * n,
                    correct_predictions(out.scores, batch.labels).sum().double(),
                ]
            )
            seen += n
            advance(totals[0] / seen, state.step)
    train_seconds = time.perf_counter() - started
    if not isinstance(step_fn, GraphedTrainStep):
        loss, margin, recon, correct = (totals / max(seen, 1)).tolist()
        if seen == 0 and batches:
            raise NonFiniteLossError(
                f"every training step of epoch {epoch} had a non-finite loss (all skipped by "
                f"train.nonfinite=skip); the last good checkpoint is kept: {likely_cause(config)}"
            )
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} in epoch {epoch} at step {int(first_bad_step)}; the "
            f"last good checkpoint is kept: {likely_cause(config)}, or skip such steps with "
            "train.nonfinite=skip"
        )
    if stop is not None:
        stop.check()
    eval_started = time.perf_counter()
    eval_args = (config.dataset, config.model, train.eval_batch_size, device, train.precision)
    train_eval = evaluate(model, splits.train_eval, *eval_args)
    # routing diagnostics on the validation split when there is one: nothing chosen or read
    # from them then touches the test set
    has_val = splits.val is not None
    val = evaluate(model, splits.val, *eval_args, diagnostics=True) if has_val else None
    test = evaluate(model, splits.test, *eval_args, diagnostics=not has_val)
    eval_seconds = time.perf_counter() - eval_started
    row = metrics_row(epoch, loss, margin, recon, correct, train_eval, test, lr, config, val)
    row.update(
        epoch_seconds=train_seconds,
        images_per_s=len(splits.train) / train_seconds,
        eval_seconds=eval_seconds,
    )
    diagnosed = val if val is not None else test
    split = "val" if val is not None else "test"
    routing_rows = [{"epoch": epoch, "split": split, **r} for r in diagnosed.routing]
    return row, routing_rows


def metrics_row(
    epoch: int,
    loss: float,
    margin: float,
    recon: float,
    correct: float,
    train_eval: EvalResult,
    test: EvalResult,
    lr: float,
    config: Config,
    val: EvalResult | None = None,
) -> dict[str, Any]:
    """One `metrics.csv` row; the reconstruction columns are empty without a decoder, the
    validation columns without a validation split."""
    has_decoder = config.model.reconstruction
    return {
        "epoch": epoch,
        "train_loss": loss,
        "train_margin_loss": margin,
        "train_recon_loss": recon if has_decoder else None,
        "train_acc": correct,
        "train_eval_acc": train_eval.accuracy,
        "train_eval_loss": train_eval.loss,
        "test_acc": test.accuracy,
        "test_loss": test.loss,
        "test_margin_loss": test.margin_loss,
        "test_recon_loss": test.recon_loss,
        "val_acc": val.accuracy if val is not None else None,
        "val_loss": val.loss if val is not None else None,
        "val_margin_loss": val.margin_loss if val is not None else None,
        "lr": lr,
    }


def save_epoch(
    run_dir: Path,
    state: TrainState,
    model: CapsNet,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: Config,
) -> None:
    """Write the result files, then the checkpoint that makes them the resume point."""
    write_csv(run_dir / rundir.METRICS_FILE, state.metrics, rundir.METRICS_COLUMNS)
    write_csv(run_dir / rundir.ROUTING_FILE, state.routing, rundir.ROUTING_COLUMNS)
    save_checkpoint(
        run_dir / rundir.CHECKPOINT_FILE,
        {
            "config": config_to_dict(config),
            "model": model.state_dict(),
            "optimizer": portable_optimizer_state(optimizer, schedule.get_last_lr()),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "state": vars(state),
        },
    )
