"""What every dataset reader provides, and the one-line errors they share.

A `Reader` knows one on-disk format under a data root: the files it needs, how to read a split
into tensors, and how to fetch the files. `capsroute.data.files` holds the registry of datasets
(each one `DatasetInfo` naming its reader) and drives them; the readers (`mnist_idx`, `cifar`,
`svhn`, `smallnorb`) know nothing about one another.

Every failure a user can fix becomes a `DataError` with one line naming the dataset, the
absolute root, what is wrong and what to do (the download command among it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from capsroute.errors import DataError

# (root, train, verify) -> (images (N, C, H, W) uint8, labels (N,) int64)
ReadFn = Callable[[Path, bool, bool], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Reader:
    """One dataset's files under a root: which, how to read them, how to fetch them.

    `files` are relative to the root; the dataset counts as present when all exist. `read`
    raises `DataError` for files that exist but do not parse. `fetch` downloads what is missing
    (torchvision's `download=True` or the reader's own). `md5_failures`, for datasets with
    published checksums checked on load (`dataset.verify`), lists the files that fail them.
    """

    name: str
    layout: str  # the folder under the root that holds the files ("." for the root itself)
    files: tuple[str, ...]
    read: ReadFn
    fetch: Callable[[Path], None]
    md5_failures: Callable[[Path], list[str]] | None = None


def torchvision_datasets() -> Any:
    """`torchvision.datasets`, imported on first use.

    Importing torchvision costs over a second; code that never reads files (batching, shapes)
    and the readers that parse files themselves need not pay it.
    """
    import torchvision.datasets

    return torchvision.datasets


def one_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: message` squeezed onto one line and truncated, for embedding in a DataError."""
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def download_command(name: str) -> str:
    """The shell command that fetches `name` (quoted in every missing/damaged-file message)."""
    return f"`capsroute data download --dataset {name}`"


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")


def missing_files(reader: Reader, root: Path) -> list[str]:
    """Relative paths of the reader's required files that do not exist under `root`."""
    return [rel for rel in reader.files if not (root / rel).is_file()]


def missing_error(reader: Reader, root: Path, missing: list[str]) -> DataError:
    """No folder or some files: say which, where, and how to get them."""
    folder = "the data root" if reader.layout == "." else f"{reader.layout}/"
    if reader.layout != "." and not (root / reader.layout).is_dir():
        what = f"no {reader.layout}/ folder"
    else:
        what = f"missing {_shown(missing)}"
    return DataError(
        f"{reader.name} not found under {root}: {what}; run {download_command(reader.name)} "
        f"(or pass dataset.download=true), or set CAPSROUTE_DATA or dataset.root to the folder "
        f"that holds {folder}"
    )


def corrupt_error(name: str, root: Path, detail: str) -> DataError:
    """Files exist but do not parse: name the file (in `detail`) and the way out."""
    return DataError(
        f"{name} files under {root} are unreadable: {detail}; delete the bad files and run "
        f"{download_command(name)} (or pass dataset.download=true), or point CAPSROUTE_DATA or "
        f"dataset.root at a good copy"
    )


def md5_error(name: str, root: Path, failing: list[str]) -> DataError:
    """Files that parse may still fail the published checksums (re-packed or shortened copies)."""
    return DataError(
        f"{name} files under {root} fail torchvision's md5 check ({_shown(failing)}); if they "
        f"are re-packed copies that still parse, pass dataset.verify=false to load them without "
        f"the check, otherwise delete them and run {download_command(name)}"
    )


def is_download_failure(exc: BaseException) -> bool:
    """Whether an exception from a download path means the download itself failed.

    Network and file-system errors are `OSError`s (urllib's `URLError` included); torchvision's
    MNIST wraps its per-mirror failures in `RuntimeError("Error downloading ...")` and
    `download_url` raises `RuntimeError("File not found or corrupted.")` for a bad archive.
    """
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        text.startswith(("Error downloading", "File not found or corrupted"))
    )


def download_error(name: str, root: Path, exc: BaseException) -> DataError:
    """A download that failed: no network, or an unwritable root."""
    if isinstance(exc, PermissionError):
        return DataError(
            f"could not download {name} to {root} (permission denied): {one_line(exc)}; "
            f"choose a writable folder with --root or dataset.root"
        )
    return DataError(
        f"could not download {name} to {root} (no network?): {one_line(exc)}; download it on a "
        f"machine with network access with `capsroute data download --dataset {name} --root "
        f"DIR` and point CAPSROUTE_DATA or dataset.root at DIR"
    )
