"""`capsroute sweep`: a resumable routing-iteration grid run as a real Hydra multirun.

The grid (dataset x r x seed, plus any axis the user adds with Hydra's sweep syntax such as
`train.lr=0.001,0.0005`) becomes ordinary Hydra overrides, so Hydra's sweeper expands it and a
Hydra launcher plugin (basic, joblib, submitit local/SLURM) runs it. Each run writes a normal
run directory `<sweep>/<dataset>/r<r>/s<seed>[/<extra axes>]`; the sweep root holds Hydra's
`multirun.yaml` and our `sweep.json` manifest.

Modules: `options.py` (the request and its Hydra overrides), `plan.py` (every run, its
directory and its state, before anything runs), `manifest.py` (`sweep.json`), `task.py` (the
Hydra task inside a launcher); this module runs the whole command.

Flow: `plan_sweep` expands the grid with Hydra's own `BasicSweeper.split_arguments`, composes and
validates every run's config (bad input fails before anything is written) and classifies each
run directory as done / resume / new / locked; `run_sweep` writes `sweep.json`, runs the
multirun (the `resumable` sweeper skips done and locked runs, so their files stay untouched),
then reads every run's `summary.json` back into the manifest and the final table.
`sweep_task` is the Hydra task: it never raises for a failed run (that would stop the basic
launcher's loop); it records the failure in the run's `summary.json` and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from capsroute import hydra_app
from capsroute.errors import CapsrouteError
from capsroute.io import check_output_dir, utc_now
from capsroute.run import rundir
from capsroute.study.sweep import slurm
from capsroute.study.sweep.gpu_share import mps_daemon
from capsroute.study.sweep.manifest import (
    MANIFEST_FILE,
    collect_results,
    new_manifest,
    resume_command,
    write_manifest,
)
from capsroute.study.sweep.options import SweepRequest
from capsroute.study.sweep.plan import (
    STATE_CONFLICT,
    STATE_DONE,
    STATE_LOCKED,
    STATE_NEW,
    STATE_RESUME,
    SweepPlan,
    plan_sweep,
    register_sweeper,
)
from capsroute.study.sweep.signals import stop_workers_on_sigterm
from capsroute.study.sweep.task import sweep_task

log = logging.getLogger("capsroute")


def run_sweep(plan: SweepPlan, request: SweepRequest, console: Console) -> list[dict[str, Any]]:
    """Run the planned sweep to the end; returns one result row per run (also in sweep.json)."""
    manifest = new_manifest(plan, request)
    write_manifest(plan, manifest)
    status = "completed"
    try:
        if plan.count(STATE_NEW) + plan.count(STATE_RESUME):
            run_multirun(plan, request)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SystemExit:  # Hydra reports launcher failures itself, then exits
        status = "failed"
        raise
    finally:
        results = collect_results(plan)
        if status == "completed" and any(r["status"] != rundir.STATUS_COMPLETED for r in results):
            status = "failed"
        manifest.update(status=status, finished_at=utc_now(), runs=results)
        write_manifest(plan, manifest)
        print_results(plan, results, console)
    return results


def run_multirun(plan: SweepPlan, request: SweepRequest) -> None:
    register_sweeper()
    packed = (request.jobs_per_gpu or 1) > 1 and request.mps
    with mps_daemon(plan.root, packed):
        hydra_app.run_hydra(sweep_task, plan.overrides, request.config_dir)


def print_plan(plan: SweepPlan, console: Console) -> None:
    """The planned grid: every run and what will happen to it, with the totals."""
    table = Table(title=f"sweep {plan.name}: {plan.root}")
    for column in ("run", "dataset", "r", "seed", "plan", "note"):
        table.add_column(
            column, justify="right" if column in ("r", "seed") else "left", no_wrap=column == "run"
        )
    for run in plan.runs:
        table.add_row(
            str(run.run_dir.relative_to(plan.root)),
            run.dataset,
            str(run.iterations),
            str(run.seed),
            run.state,
            run.note,
        )
    console.print(table)
    locked, conflict = plan.count(STATE_LOCKED), plan.count(STATE_CONFLICT)
    console.print(
        f"total {len(plan.runs)}: done {plan.count(STATE_DONE)}, "
        f"will resume {plan.count(STATE_RESUME)}, new {plan.count(STATE_NEW)}"
        + (f", locked by another process {locked}" if locked else "")
        + (f", completed with another config {conflict}" if conflict else ""),
        highlight=False,
    )


def print_results(plan: SweepPlan, results: Sequence[dict[str, Any]], console: Console) -> None:
    """Every run's final status and test accuracy."""
    table = Table(title=f"sweep {plan.name}: results")
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    table.add_column("epochs", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("error", max_width=60, overflow="ellipsis")
    for row in results:
        acc = row["final_test_acc"]
        table.add_row(
            row["run_dir"],
            row["status"],
            f"{row['epochs_completed']}/{row['epochs']}",
            "-" if acc is None else f"{100 * acc:.2f}%",
            row["error"] or "",
        )
    console.print(table)
    console.print(f"manifest: {plan.root / MANIFEST_FILE}", highlight=False)


def failed_runs(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in results if row["status"] != rundir.STATUS_COMPLETED]


def sweep(request: SweepRequest, console: Console | None = None) -> SweepPlan:
    """The whole command: plan, print, (unless dry-run) run and report.

    Raises `ConfigError` for bad input (before any file is written) and `CapsrouteError`
    (exit status 1) when any run did not complete.
    """
    console = console or Console()
    plan = plan_sweep(request)
    print_plan(plan, console)
    if request.dry_run:
        return plan
    check_output_dir(plan.root, "out_root=DIR or --name")  # before any run starts
    if (plan.count(STATE_NEW) + plan.count(STATE_RESUME)) and slurm.is_slurm_launcher(
        plan.launcher
    ):
        slurm.preflight(plan.launcher)  # before anything is submitted or written
    console.print(
        f"resume with: {resume_command(request, plan.name)}", highlight=False, soft_wrap=True
    )
    with stop_workers_on_sigterm():
        results = run_sweep(plan, request, console)
    bad = failed_runs(results)
    if bad:
        raise CapsrouteError(
            f"{len(bad)} of {len(results)} runs did not complete (see the table above); "
            f"fix the cause and re-run with --name {plan.name} to continue"
        )
    return plan
