"""Weights & Biases (the `wandb` extra): one W&B run per run directory, grouped by sweep.

Offline (files in `<run_dir>/wandb/`, uploaded later with `wandb sync`) unless the user has
logged in (an API key in the environment or in netrc) or sets `logger.wandb.mode`/`WANDB_MODE`.
Whether one is logged in is decided from the environment and netrc alone: no network, no
private W&B API.

Resume: the run id lives in `trackers.json` and `wandb.init(id=..., resume="allow")` reopens
it. Offline, that makes a new segment folder (W&B does not append), and a segment of a killed
process holds nothing (wandb-core is killed without flushing), so the epochs to re-log are
those after the last `_step` found in the earlier segments. `wandb.teardown()` after `finish`
makes sure the last rows reach the file before the process goes on or exits.
"""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from capsroute.run import rundir
from capsroute.run.trackers.base import Tracker, numeric_summary
from capsroute.run.trackers.wandb_reader import last_step, read_segment, segment_dirs

# wandb 0.31's default API host, and the one older logins (netrc entries) name
WANDB_HOSTS = ("api.forge.coreweave.com", "api.wandb.ai")
INIT_TIMEOUT_S = 30  # online: give up on an unreachable server after this (W&B's default: 90)
WANDB_DATA = "wandb-data"  # under out_root: W&B's artefact staging and cache, not the home dir


def logged_in() -> bool:
    """An API key in the environment, or a netrc password for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base = os.environ.get("WANDB_BASE_URL")
    hosts = [urlparse(base).netloc] if base else list(WANDB_HOSTS)
    explicit = os.environ.get("NETRC")
    files = [Path(explicit)] if explicit else [Path("~/.netrc"), Path("~/_netrc")]
    for path in (p.expanduser() for p in files):
        if path.is_file():
            try:
                entries = netrc.netrc(str(path))
            except (netrc.NetrcParseError, OSError):
                return False
            return any((auth := entries.authenticators(h)) and auth[2] for h in hosts)
    return False


def wandb_mode(configured: str | None) -> str:
    """`logger.wandb.mode`, else `WANDB_MODE`, else online when logged in, else offline."""
    return configured or os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


class WandbTracker(Tracker):
    name = "wandb"

    def start(self, saved: dict[str, Any]) -> dict[str, Any]:
        import wandb

        data = str((self.context.out_root / WANDB_DATA).resolve())
        os.environ.setdefault("WANDB_DATA_DIR", data)
        os.environ.setdefault("WANDB_CACHE_DIR", data)
        self.mode = wandb_mode(self.settings.mode)
        self.run_id = saved.get("id") or uuid.uuid4().hex[:8]
        self.wandb_dir = self.context.run_dir / rundir.WANDB_DIR
        earlier = segment_dirs(self.wandb_dir, self.run_id)
        self.run = wandb.init(
            mode=self.mode,
            dir=str(self.context.run_dir),
            project=self.settings.project,
            entity=self.settings.entity,
            group=self.context.group,
            name=self.context.name,
            id=self.run_id,
            resume="allow",
            config=self.context.config,
            settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, init_timeout=INIT_TIMEOUT_S
            ),
        )
        self.earlier = earlier
        self.last = 0  # the last epoch this segment logged
        return {"id": self.run_id, "mode": self.mode, "project": self.settings.project}

    def logged_through(self) -> int:
        if self.mode == "offline":
            return last_step([read_segment(folder) for folder in self.earlier])
        return max(0, int(getattr(self.run, "step", 0) or 0) - 1)  # online: the server knows

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log(values, step=epoch)
        self.last = epoch

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        import wandb

        self.run.summary.update(numeric_summary(summary))
        images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        if images:  # copied into the run's media folder now (the PNGs may be temporary)
            self.run.log(images, step=self.last)  # the last row: resume reads steps as epochs
        for path in files:
            if path.suffix != ".png":
                self.run.save(str(path), base_path=str(path.parent), policy="now")
        self.run.finish(exit_code=0 if summary.get("status") == rundir.STATUS_COMPLETED else 1)
        wandb.teardown()

    def abort(self) -> None:
        try:
            import wandb

            wandb.teardown()
        except Exception:
            pass
