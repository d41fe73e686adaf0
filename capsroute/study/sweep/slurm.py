"""SLURM checks before `capsroute sweep --launcher submitit_slurm` submits anything.

A request the cluster can never meet (a GPU on a GPU-less cluster, more CPUs or memory than a
node has, a time limit over the partition's) either fails inside sbatch with a long traceback
or, on clusters without `EnforcePartLimits`, sits PENDING forever. And submitit learns the
state of a job that died without a result only through `sacct`: without accounting the sweep
would wait forever. So before submitting, `preflight` checks the launcher's request against
`sinfo` and that `sacct` answers, and refuses in one line that names the override to change.

The SLURM commands run through `slurm_command`, whose failures are one line (`SlurmError`).
Waiting for the submitted jobs is in `slurm_jobs.py`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capsroute.errors import CapsrouteError, ConfigError

# sinfo: partition (with `*` on the default one), CPUs per node, memory per node (MB), GRES,
# time limit. One line per partition and node state; `%c`/`%m` get a `+` when nodes differ.
SINFO_FORMAT = "%P|%c|%m|%G|%l"
LAUNCHER_KEY = "hydra.launcher"
COMMAND_TIMEOUT_S = 60
MB_PER_GB = 1024  # sbatch --mem=<n>GB counts 1024 MB per GB
MIN_SIGNAL_MARGIN_S = 30  # the time-out signal must leave the job at least this long to run


class SlurmError(CapsrouteError):
    """A SLURM command failed or is missing (not a login node, daemons down): exit status 1."""


@dataclass(frozen=True)
class Partition:
    """What one partition's largest node offers (from `sinfo`)."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    time_limit_min: int | None  # None: no limit
    default: bool = False

    def describe(self) -> str:
        limit = "no time limit" if self.time_limit_min is None else f"{self.time_limit_min} min"
        gpus = f"{self.gpus} GPUs" if self.gpus else "no GPUs"
        return f"{self.cpus} CPUs, {self.mem_mb} MB, {gpus} per node, {limit}"


def slurm_command(args: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a SLURM client command; its stdout, or `SlurmError` with its last error line."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise SlurmError(
            f"{args[0]} not found: --launcher submitit_slurm must run where the SLURM "
            "commands are (a login node)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{' '.join(args[:2])} did not answer in {timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise SlurmError(f"{args[0]} failed: {reason}")
    return done.stdout


def parse_count(field: str) -> int:
    """`2`, `2+` (nodes differ: at least 2), `N/A` -> 0."""
    match = re.match(r"\d+", field.strip())
    return int(match.group()) if match else 0


def parse_time_limit(field: str) -> int | None:
    """SLURM time (`infinite`, `MM`, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`) in whole minutes."""
    text = field.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # MM or MM:SS
        hours, (minutes, seconds) = 0, [*parts, 0][:2]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


def gres_gpus(gres: str) -> int:
    """GPUs in a GRES field: `gpu:4`, `gpu:a100:4(S:0-1)`, `gpu`, `(null)` -> 0."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> dict[str, Partition]:
    """`sinfo -h -o SINFO_FORMAT` lines -> partitions (the largest node of each)."""
    found: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, cpus, mem, gres, limit = fields
        part = Partition(
            name=name.rstrip("*"),
            cpus=parse_count(cpus),
            mem_mb=parse_count(mem),
            gpus=gres_gpus(gres),
            time_limit_min=parse_time_limit(limit),
            default=name.endswith("*"),
        )
        old = found.get(part.name)
        if old is not None:
            part = Partition(
                part.name,
                max(old.cpus, part.cpus),
                max(old.mem_mb, part.mem_mb),
                max(old.gpus, part.gpus),
                old.time_limit_min,
                old.default or part.default,
            )
        found[part.name] = part
    return found


def parse_mem_mb(text: str) -> int:
    """A SLURM memory size (`4000`, `512M`, `4G`, `1T`; plain numbers are MB) in MB."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"{LAUNCHER_KEY}.mem_per_cpu={text}: not a memory size like 4G")
    number, unit = int(match.group(1)), match.group(2).upper()
    return {"K": number // 1024, "": number, "M": number, "G": number * 1024}.get(
        unit, number * 1024 * 1024
    )


@dataclass(frozen=True)
class Request:
    """What one job of the sweep asks SLURM for (per node)."""

    cpus: int
    mem_mb: int | None
    gpus: int
    timeout_min: int
    signal_delay_s: int


def job_request(launcher: Mapping[str, Any]) -> Request:
    """The per-node request the submitit launcher config makes."""
    tasks = int(launcher.get("tasks_per_node") or 1)
    cpus = int(launcher.get("cpus_per_task") or 1) * tasks
    mem_mb = None
    if launcher.get("mem_gb"):
        mem_mb = int(launcher["mem_gb"]) * MB_PER_GB
    elif launcher.get("mem_per_cpu"):
        mem_mb = parse_mem_mb(launcher["mem_per_cpu"]) * cpus
    gpus = int(launcher.get("gpus_per_node") or 0)
    gpus = max(gpus, int(launcher.get("gpus_per_task") or 0) * tasks)
    gpus = max(gpus, gres_gpus(str(launcher.get("gres") or "")))
    return Request(
        cpus=cpus,
        mem_mb=mem_mb,
        gpus=gpus,
        timeout_min=int(launcher.get("timeout_min") or 0),
        signal_delay_s=int(launcher.get("signal_delay_s") or 0),
    )


def pick_partition(launcher: Mapping[str, Any], partitions: Mapping[str, Partition]) -> Partition:
    """The partition the jobs go to: `hydra.launcher.partition`, else the cluster's default."""
    names = ", ".join(sorted(partitions)) or "(none)"
    wanted = launcher.get("partition")
    if wanted:
        if str(wanted) not in partitions:
            raise ConfigError(
                f"{LAUNCHER_KEY}.partition={wanted}: no such partition; sinfo lists: {names}"
            )
        return partitions[str(wanted)]
    defaults = [part for part in partitions.values() if part.default]
    if not defaults:
        raise ConfigError(
            f"the cluster has no default partition: set {LAUNCHER_KEY}.partition= one of {names}"
        )
    return defaults[0]


def request_problems(request: Request, part: Partition) -> list[str]:
    """Why `request` can never run on `part`, each naming the override that fixes it."""
    key = LAUNCHER_KEY
    problems = []
    if request.gpus > part.gpus:
        fix = "=0 for CPU-only runs" if part.gpus == 0 else f"={part.gpus} or less"
        problems.append(
            f"{request.gpus} GPU(s) asked, {part.name} has {part.gpus or 'none'} "
            f"(set {key}.gpus_per_node{fix})"
        )
    if request.cpus > part.cpus:
        problems.append(
            f"{request.cpus} CPUs asked, {part.name} nodes have {part.cpus} "
            f"(set {key}.cpus_per_task={part.cpus} or less)"
        )
    if request.mem_mb is not None and request.mem_mb > part.mem_mb:
        problems.append(
            f"{request.mem_mb} MB asked, {part.name} nodes have {part.mem_mb} MB "
            f"(set {key}.mem_gb={part.mem_mb // MB_PER_GB} or less)"
        )
    limit = part.time_limit_min
    if limit is not None and request.timeout_min > limit:
        problems.append(
            f"{key}.timeout_min={request.timeout_min} is over {part.name}'s limit of "
            f"{limit} min (set {key}.timeout_min={limit} or less)"
        )
    if request.signal_delay_s > request.timeout_min * 60 - MIN_SIGNAL_MARGIN_S:
        problems.append(
            f"{key}.signal_delay_s={request.signal_delay_s} leaves less than "
            f"{MIN_SIGNAL_MARGIN_S} s of a {request.timeout_min}-min job before its time-out "
            f"signal (set {key}.signal_delay_s={max(0, request.timeout_min * 60 // 2)} "
            f"or raise {key}.timeout_min)"
        )
    return problems


def check_request(launcher: Mapping[str, Any], partitions: Mapping[str, Partition]) -> Partition:
    """The partition the request fits, or `ConfigError`: one line with every misfit."""
    part = pick_partition(launcher, partitions)
    problems = request_problems(job_request(launcher), part)
    if problems:
        raise ConfigError(
            f"the SLURM request does not fit partition {part.name} ({part.describe()}): "
            + "; ".join(problems)
        )
    return part


def check_accounting() -> None:
    """`sacct` must answer: submitit reads job states through it (see the module doc)."""
    try:
        slurm_command(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now"])
    except SlurmError as exc:
        raise SlurmError(
            f"SLURM accounting is not available ({exc}); capsroute needs sacct to follow its "
            "jobs, so nothing was submitted: start slurmdbd or ask the cluster admin"
        ) from exc


def preflight(launcher: Mapping[str, Any]) -> Partition:
    """Refuse (one line) a sweep SLURM cannot run: a request no node meets, or no accounting."""
    partitions = parse_sinfo(slurm_command(["sinfo", "-h", "-o", SINFO_FORMAT]))
    if not partitions:
        raise SlurmError("sinfo lists no partitions: is this a SLURM login node?")
    part = check_request(launcher, partitions)
    check_accounting()
    return part


def is_slurm_launcher(launcher: Mapping[str, Any]) -> bool:
    return str(launcher.get("_target_") or "").endswith("SlurmLauncher")
