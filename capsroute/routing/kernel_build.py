"""Building and loading the CPU routing kernel (`kernel.c`) for `capsroute.routing.cpu`.

Route float32 û on the CPU with `_KERNEL_SOURCE`, compiled on first use by the system's C
compiler (`$CC`, else `cc`) and cached (see below).
Without a compiler, or with `CAPSROUTE_ROUTING_KERNEL=0`, the same routing runs as torch
operations in blocks (`CPU_BLOCK_BYTES`); tests check the two against each other.

Why: in torch ops every routing iteration is about four separate passes over û, each a batched
matrix-vector product of (1 x 1152) x (1152 x 16) or (1 x 16) x (16 x 1152) that MKL runs far
below the machine's speed, plus softmax, copies and per-op overhead; the cost per extra
iteration at batch 128 (~25-40 ms on the 2-core machine) kept a train step at r = 5 ~10-16%
slower than at r = 1. The kernel routes one example at a time: it copies the example's rows of
û once into a contiguous buffer that stays in the cache, and every iteration is one sweep over
it (forward: agreement, softmax and weighted sum together; backward: agreement, softmax
derivative and weighted sum together, then one sweep that writes the gradient of û straight
into û's own layout). Examples run side by side on the worker threads (`_run_blocks`).

The kernel is a shared library this process loads, so it is built into and loaded from a
directory this user owns with mode 0700 (checked before every load, and the library file must
be this user's and writable by nobody else): `$CAPSROUTE_KERNEL_CACHE`, else
`~/.cache/capsroute/kernels`, else `<tmp>/capsroute-<uid>`. If none qualifies (e.g. another
user created the temp folder first), no kernel is loaded and routing runs as torch operations,
with one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

_KERNEL_SOURCE = (resources.files("capsroute.routing") / "kernel.c").read_text()
_KERNEL_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-std=c99", "-shared", "-fPIC")
log = logging.getLogger("capsroute")


def build_kernel(n_out: int, dim: int) -> Any:
    """Compile (or find in the private cache) and load the kernel for N_out parents of
    dimension D; None (torch routing) without a compiler or a private cache directory."""
    compiler = os.environ.get("CC", "cc")
    cache = private_cache()
    if cache is None:
        log.warning(
            "no private directory for the routing kernel (mode 0700, owned by you): routing "
            "runs as torch operations, slower on the CPU; set CAPSROUTE_KERNEL_CACHE to one"
        )
        return None
    defines = (f"-DPARENTS={n_out}", f"-DDIM={dim}")
    # -march=native first (AVX2/FMA on the development machine); the cache key holds the CPU
    for arch in (("-march=native",), ()):
        flags = (*_KERNEL_FLAGS, *arch, *defines)
        key = hashlib.sha256(
            "\0".join((_KERNEL_SOURCE, compiler, *flags, platform.machine(), _cpu_flags())).encode()
        ).hexdigest()[:16]
        path = cache / f"routing-{key}.so"
        try:
            if not path.exists():
                _compile(compiler, flags, path)
            if not is_private(path, directory=False):
                log.warning("%s is not yours alone: routing runs as torch operations", path)
                return None
            library = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as error:
            log.debug("routing kernel with %s: %s", " ".join(flags), error)
            continue
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        library.routing_forward.argtypes = [pointer, *[size] * 7, ctypes.c_int, *[pointer] * 6]
        library.routing_backward.argtypes = [
            pointer, *[size] * 7, ctypes.c_int, *[pointer] * 5, size, size, pointer
        ]  # fmt: skip
        library.routing_forward.restype = library.routing_backward.restype = ctypes.c_int
        return library
    log.warning(
        "no C compiler could build the routing kernel (%s): routing runs as torch operations, "
        "slower on the CPU; set CC to a C compiler to fix",
        compiler,
    )
    return None


def _compile(compiler: str, flags: tuple[str, ...], path: Path) -> None:
    """Compile `_KERNEL_SOURCE` to `path` (written under a temporary name, then renamed, so
    that processes compiling at once never load a half-written file)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "routing.c"
        source.write_text(_KERNEL_SOURCE)
        built = Path(tmp) / "routing.so"
        subprocess.run(
            [compiler, *flags, "-o", str(built), str(source), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(built, partial)
        os.chmod(partial, 0o700)
        os.replace(partial, path)


def private_cache() -> Path | None:
    """The first kernel directory that is (or is now made) this user's with mode 0700."""
    user = os.environ.get("CAPSROUTE_KERNEL_CACHE")
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capsroute"
    candidates = (
        [Path(user)]
        if user
        else [home / "kernels", Path(tempfile.gettempdir()) / f"capsroute-{os.getuid()}"]
    )
    for folder in candidates:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            continue
        if is_private(folder, directory=True):
            return folder
    return None


def is_private(path: Path, directory: bool) -> bool:
    """`path` (not a symlink) belongs to this user and nobody else may write it; a directory
    must also be unreadable to others (mode 0700)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    others = 0o077 if directory else 0o022
    return kind_ok and info.st_uid == os.getuid() and not info.st_mode & others


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so that a cache shared between machines never hands
    one CPU a kernel built with instructions only another has."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return platform.processor()
