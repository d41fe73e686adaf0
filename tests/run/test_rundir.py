"""Run-directory files are written atomically and readable by the group like ordinary files."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from capsroute import io as capsroute_io
from capsroute.errors import OutputWriteError
from capsroute.run import rundir


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    capsroute_io.atomic_write_text(target, "old\n")
    capsroute_io.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_csv_keeps_full_float_precision_and_blanks_for_none(tmp_path: Path) -> None:
    target = tmp_path / "rows.csv"
    capsroute_io.write_csv(target, [{"a": 1 / 3, "b": None}], ["a", "b"])
    assert target.read_text() == f"a,b\n{1 / 3!r},\n"


def test_disk_full_keeps_the_previous_file_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "summary.json"
    capsroute_io.write_json(target, {"status": "running"})

    def disk_full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", disk_full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*summary.json \(disk full\)"):
        capsroute_io.write_json(target, {"status": "completed"})
    assert capsroute_io.read_json(target) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
