"""Run-directory files are written atomically and readable by the group like ordinary files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from capsroute import rundir


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    rundir.atomic_write_text(target, "old\n")
    rundir.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_csv_keeps_full_float_precision_and_blanks_for_none(tmp_path: Path) -> None:
    target = tmp_path / "rows.csv"
    rundir.write_csv(target, [{"a": 1 / 3, "b": None}], ["a", "b"])
    assert target.read_text() == f"a,b\n{1 / 3!r},\n"
