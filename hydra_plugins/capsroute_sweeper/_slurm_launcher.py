"""`capsroute sweep --launcher submitit_slurm`: Hydra's submitit SLURM launcher, with our wait.

`SlurmLauncher.launch` submits the array and then waits in `job.results()`, which turns any
failed run into a 70-line traceback that ends the whole sweep and leaves the jobs running on
Ctrl-C. `CapsrouteSlurmLauncher.launch` builds and submits exactly as the plugin does
(hydra-submitit-launcher 1.2's `BaseSubmititLauncher.launch`, the executor set-up copied
verbatim), prints the job ids, and waits through `capsroute.study.sweep.slurm_jobs`: one line
per failed run, and Ctrl-C cancels this command's jobs. What runs inside each job (`__call__`,
`checkpoint`: the time-out requeue) is the plugin's own.

The module name starts with `_` so that Hydra's plugin scan does not import it (it needs the
optional hydra-submitit-launcher); `capsroute.study.sweep.plan.register_sweeper` registers it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf
from submitit.core.utils import UncompletedJobError


class CapsrouteSlurmLauncher(SlurmLauncher):
    """The plugin's SLURM launcher with a wait that reports, cancels and never hangs."""

    def make_executor(self) -> Any:
        """The submitit executor, set up exactly as `BaseSubmititLauncher.launch` does."""
        import submitit

        params = self.params
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(
            **{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys}
        )
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {
            x if x in baseparams else f"{self._EXECUTOR}_{x}": y
            for x, y in params.items()
            if x not in init_keys
        }
        executor.update_parameters(**params)
        return executor

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from capsroute.study.sweep import slurm_jobs
        from capsroute.study.sweep.plan import run_dir_of, sweep_root

        assert self.config is not None and self.hydra_context is not None
        executor = self.make_executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        run_dirs, roots = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            run_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            run_dirs.append(run_dir_of(run_cfg))
            roots.append(sweep_root(run_cfg))
            state = Singleton.get_state()
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
        try:
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except UncompletedJobError as exc:  # sbatch refused, e.g. an unknown account or QOS
            slurm_jobs.say(f"sbatch refused the jobs, none was submitted: {one_line_text(exc)}")
            return [failed_return(overrides, None) for overrides in job_overrides]
        runs = [
            slurm_jobs.SubmittedRun(
                job=job,
                label=str(run_dir.relative_to(root)),
                log_dir=Path(str(job.paths.folder)),
                run_dir=run_dir,
            )
            for job, run_dir, root in zip(jobs, run_dirs, roots, strict=True)
        ]
        slurm_jobs.say(slurm_jobs.submitted_line(runs))
        ended = slurm_jobs.wait_for_jobs(runs)
        returns = []
        for run, overrides in zip(runs, job_overrides, strict=True):
            failure = ended.get(run.job_id)
            if failure is None:
                returns.append(run.job.results()[0])
            else:  # said in one line; the run's own files say the rest; the sweep goes on
                returns.append(failed_return(overrides, run.run_dir))
        return returns


def failed_return(overrides: Sequence[str], run_dir: Path | None) -> JobReturn:
    """What Hydra's sweeper gets for a run whose job failed: a completed job (so that the
    sweep goes on) whose value says failed; the sweep's table reads the run's own files."""
    return JobReturn(
        overrides=list(filter_overrides(overrides)),
        status=JobStatus.COMPLETED,
        _return_value={"run_dir": str(run_dir), "status": "failed"},
    )


def one_line_text(exc: BaseException) -> str:
    """sbatch's error lines, joined into one."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
