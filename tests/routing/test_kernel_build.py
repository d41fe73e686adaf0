"""The routing kernel is a shared library we load: only from a directory that is the user's
own with mode 0700, else routing runs as torch operations (issue 19)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsroute.routing import kernel_build


def test_a_shared_cache_directory_is_refused_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # another user could plant routing-*.so here
    monkeypatch.setenv("CAPSROUTE_KERNEL_CACHE", str(shared))
    with caplog.at_level("WARNING", logger="capsroute"):
        assert kernel_build.build_kernel(3, 8) is None
    assert "no private directory for the routing kernel" in caplog.text
    assert list(shared.iterdir()) == []  # nothing built, nothing loaded


def test_a_new_cache_directory_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPSROUTE_KERNEL_CACHE", str(tmp_path / "new"))
    folder = kernel_build.private_cache()
    assert folder == tmp_path / "new"
    assert os.stat(folder).st_mode & 0o777 == 0o700


def test_a_library_others_can_write_is_not_private(tmp_path: Path) -> None:
    library = tmp_path / "routing-x.so"
    library.write_bytes(b"\x7fELF")
    os.chmod(library, 0o666)
    assert not kernel_build.is_private(library, directory=False)
    os.chmod(library, 0o700)
    assert kernel_build.is_private(library, directory=False)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert not kernel_build.is_private(link, directory=True)  # a symlink is never trusted
