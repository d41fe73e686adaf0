"""Hydra sweeper plugin for `capsroute sweep`: Hydra's basic grid sweep, minus finished runs.

Hydra has no resume: its basic sweeper launches every point of the grid again, and Hydra then
rewrites `.hydra/` and appends to the log in each run directory before the task even starts.
`ResumableSweeper` expands the grid exactly as `BasicSweeper` does and drops the runs that
`capsroute.study.sweep.plan.pending_jobs` says are complete (or locked by another process)
before any launcher sees them, so a completed run's files stay untouched and a SLURM re-run
submits only the work that is left. Everything else (batching, `multirun.yaml`, launchers) is
Hydra's own.

It lives in the `hydra_plugins` namespace because Hydra only instantiates plugins from there;
`capsroute.study.sweep.plan.register_sweeper` registers it explicitly, which also covers
editable installs where Hydra's namespace scan does not see it. This is the one import circle
in the package, and Hydra's plugin discovery forces it: the plugin must live outside
`capsroute`, yet it needs the sweep planner, so it imports `capsroute.study.sweep.plan` lazily
inside the method (the planner imports the plugin only when registering it).
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


class ResumableSweeper(BasicSweeper):
    """`BasicSweeper` that launches only the runs of the grid that still need work."""

    def split_arguments(  # type: ignore[override]  # instance method: needs the config loader
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        from capsroute.study.sweep.plan import pending_jobs

        jobs = BasicSweeper.split_arguments(overrides, None)[0]
        assert self.hydra_context is not None and self.config is not None
        loader, master = self.hydra_context.config_loader, self.config

        def compose(job: list[str]) -> Any:
            return loader.load_sweep_config(master, list(job))

        todo = pending_jobs(jobs, compose)
        if not todo:
            return []
        size = max_batch_size or len(todo)
        return [todo[start : start + size] for start in range(0, len(todo), size)]
