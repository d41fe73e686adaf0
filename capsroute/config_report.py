"""The typed `report.*` config section (`capsroute report`); it never changes what a run
trains, so a saved run without it resumes (`REPORT_KEYS` are resumable in `capsroute.config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from capsroute.errors import ConfigError

# `report` is the whole section as a config saved before it existed lacks it.
REPORT_KEYS = ("report", "report.reference_r")


@dataclass
class ReportConfig:
    """`capsroute report` settings."""

    # Without a validation split, every r is compared with this r (pre-declared, paired by
    # seed); None: r = 3 when the runs have it, else their smallest r.
    reference_r: int | None = None

    def __post_init__(self) -> None:
        if self.reference_r is not None and self.reference_r < 1:
            raise ConfigError(f"report.reference_r must be > 0, got {self.reference_r}")
