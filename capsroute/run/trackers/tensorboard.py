"""TensorBoard through `torch.utils.tensorboard.SummaryWriter` (needs the `tensorboard` extra).

Event files go to `<run_dir>/tensorboard/`: a sweep folder is then a TensorBoard log directory
with one run per run directory. The config is written once at step 0, as text and as hparams
in the same run (`add_hparams` would make a sub-run). A resume reopens the folder with
`purge_step` = the first epoch after the last one recorded in `trackers.json`, so any point
logged after that (e.g. by a run killed before it could record it) is dropped and re-logged:
one continuous history without duplicates.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from capsroute.run import rundir
from capsroute.run.trackers.base import Tracker


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, saved: dict[str, Any]) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        self.last = int(saved.get("last_epoch", 0))
        logdir = self.context.run_dir / rundir.TENSORBOARD_DIR
        self.writer = SummaryWriter(str(logdir), purge_step=self.last + 1 if saved else None)
        if not saved:
            self._write_config()
        return {"logdir": str(logdir), "last_epoch": self.last}

    def _write_config(self) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        params = self.context.params
        text = "\n".join(f"    {key}: {value}" for key, value in params.items())  # code block
        self.writer.add_text("config", text, 0)
        pb = hparams_pb(params, trial_id=self.context.name)
        self.writer.file_writer.add_summary(pb, global_step=0)
        self.writer.flush()

    def logged_through(self) -> int:
        return self.last

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # the default flushes every 120 s: a kill would lose epochs
        self.last = epoch

    def state(self) -> dict[str, Any]:
        """What trackers.json keeps after each epoch (the purge point of the next resume)."""
        return {"last_epoch": self.last}

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        import matplotlib.image

        step = self.last
        text = json.dumps(summary, indent=2, default=str)
        self.writer.add_text(
            "summary", "\n".join(f"    {line}" for line in text.splitlines()), step
        )
        for path in files:
            if path.suffix == ".png":
                image = matplotlib.image.imread(path)  # (H, W, 3 or 4), floats in [0, 1]
                self.writer.add_image(f"figures/{path.stem}", image, step, dataformats="HWC")
        self.writer.close()

    def abort(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
