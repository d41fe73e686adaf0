"""`sweep.json`: the sweep's manifest (command, grid, times, every run's status)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from capsroute.io import read_json, utc_now, write_json
from capsroute.run import rundir
from capsroute.study.sweep.options import SweepRequest
from capsroute.study.sweep.plan import (
    STATE_CONFLICT,
    STATE_DONE,
    STATE_LOCKED,
    STATE_NEW,
    STATE_RESUME,
    PlannedRun,
    SweepPlan,
)

MANIFEST_FILE = "sweep.json"


def new_manifest(plan: SweepPlan, request: SweepRequest) -> dict[str, Any]:
    previous = read_manifest(plan.root)
    first = previous.get("first_started_at") or previous.get("started_at") or utc_now()
    return {
        "name": plan.name,
        "root": str(plan.root),
        "command": request.command,
        "resume_command": resume_command(request, plan.name),
        "overrides": plan.overrides,
        "grid": plan.grid,
        "total_runs": len(plan.runs),
        "planned": {
            s: plan.count(s)
            for s in (STATE_DONE, STATE_RESUME, STATE_NEW, STATE_LOCKED, STATE_CONFLICT)
        },
        "status": "running",
        "first_started_at": first,
        "started_at": utc_now(),
        "finished_at": None,
        "invocations": int(previous.get("invocations") or 0) + 1,
        "runs": [result_row(plan, run, rundir.read_summary(run.run_dir)) for run in plan.runs],
    }


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        return read_json(root / MANIFEST_FILE)
    except (OSError, ValueError):
        return {}


def write_manifest(plan: SweepPlan, manifest: dict[str, Any]) -> None:
    write_json(plan.root / MANIFEST_FILE, manifest)


def resume_command(request: SweepRequest, name: str) -> str:
    """The command line that continues this sweep (the same one, with --name)."""
    if request.name:
        return request.command
    return f"{request.command} --name {shlex.quote(name)}"


def collect_results(plan: SweepPlan) -> list[dict[str, Any]]:
    return [result_row(plan, run, rundir.read_summary(run.run_dir)) for run in plan.runs]


def result_row(plan: SweepPlan, run: PlannedRun, summary: dict[str, Any]) -> dict[str, Any]:
    """One run's line in `sweep.json` and the final table."""
    status = summary.get("status") or "not started"
    error = summary.get("error")
    holder = rundir.lock_holder(run.run_dir)
    if holder is not None and status != rundir.STATUS_COMPLETED:
        status, error = STATE_LOCKED, rundir.in_use_by(holder)
    if run.state == STATE_CONFLICT:
        status, error = STATE_CONFLICT, run.note
    return {
        "run_dir": str(run.run_dir.relative_to(plan.root)),
        "overrides": run.overrides,
        "dataset": run.dataset,
        "iterations": run.iterations,
        "seed": run.seed,
        "planned": run.state,
        "status": status,
        "epochs_completed": summary.get("epochs_completed", 0),
        "epochs": run.epochs,
        "final_test_acc": summary.get("final_test_acc"),
        "error": error,
    }
