"""`affine_mnist`: an APPROXIMATION of affNIST, generated from the MNIST test digits.

affNIST (Tieleman; https://www.cs.toronto.edu/~tijmen/affNIST/) takes MNIST digits and applies
"various reasonable affine transformations", giving 40x40 images "with significant
translations". The real files are not on every machine, so this module draws one affine
transformation per MNIST test digit from a fixed seed and renders it on a 40x40 canvas.

The ranges below are affNIST's as RECALLED, NOT VERIFIED against its page (the page text
beyond its introduction could not be read when this was written): rotation within +-20 deg,
shear within +-0.2, horizontal and vertical scale each in [0.8, 1.2], and a translation that
keeps the transformed digit inside the 40x40 canvas. Numbers measured on this set are
therefore called "affNIST approximation" everywhere, never affNIST.

Transformation of example k (coordinates (x, y) = (column, row) relative to the canvas centre):
`p_out = R(rotation) @ Shear(shear) @ Scale(sx, sy) @ p_in + t`, with Shear = [[1, s], [0, 1]].
`t` is uniform over the translations that keep the transformed box of the digit's non-zero
pixels inside the canvas. Rendering samples the centred digit bilinearly at `p_in` (zero
outside) and rounds to uint8. Generation is cached on disk like MultiMNIST's
(`cache_dir/affine_mnist-<key>.pt`, keyed by the ranges, seed and a fingerprint of the source).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from capsroute.data import canvas
from capsroute.data.multimnist import fingerprint
from capsroute.errors import DataError, OutputWriteError
from capsroute.io import atomic_write_bytes

CACHE_VERSION = 1
# affNIST's transformation ranges as recalled (UNVERIFIED, see the module docstring).
ROTATION_DEG = 20.0  # rotation uniform in [-20, 20] degrees
SHEAR = 0.2  # horizontal shear factor uniform in [-0.2, 0.2]
SCALE_MIN, SCALE_MAX = 0.8, 1.2  # x and y scale, each uniform in [0.8, 1.2]
# The generated test set is the same for every run and every machine.
TEST_SEED = 2017
# Columns of `AffineMNIST.params`.
PARAM_NAMES = ("rotation_deg", "shear", "scale_x", "scale_y", "tx", "ty")
_HALF = (canvas.CANVAS - 1) / 2  # 19.5: pixel centres lie in [-19.5, 19.5] about the centre


@dataclass(frozen=True)
class AffineSpec:
    """What to generate: the ranges and seed (all part of the cache key)."""

    seed: int = TEST_SEED
    rotation_deg: float = ROTATION_DEG
    shear: float = SHEAR
    scale_min: float = SCALE_MIN
    scale_max: float = SCALE_MAX


@dataclass
class AffineMNIST:
    """images (N, 1, 40, 40) uint8, labels (N,) int64 (the source's, same order), params (N, 6)
    float64 in `PARAM_NAMES` order."""

    images: Tensor
    labels: Tensor
    params: Tensor


def linear_parts(params: Tensor) -> Tensor:
    """(N, 6) params -> (N, 2, 2) float64 matrices R @ Shear @ Scale acting on (x, y)."""
    angle = torch.deg2rad(params[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    ones, zeros = torch.ones_like(angle), torch.zeros_like(angle)
    shear = torch.stack([torch.stack([ones, params[:, 1]], -1), torch.stack([zeros, ones], -1)], -2)
    scale = torch.diag_embed(params[:, 2:4])
    return rotation @ shear @ scale  # (N, 2, 2)


def _digit_corners(images: Tensor) -> Tensor:
    """(N, 4, 2) float64 (x, y) corners of each centred digit's non-zero box about the centre."""
    ink = images[:, 0] > 0  # (N, 40, 40)
    any_row, any_col = ink.any(dim=2), ink.any(dim=1)  # (N, 40) each
    index = torch.arange(canvas.CANVAS, dtype=torch.float64)
    big = float(canvas.CANVAS)
    top = torch.where(any_row, index, big).amin(1)
    bottom = torch.where(any_row, index, -big).amax(1)
    left = torch.where(any_col, index, big).amin(1)
    right = torch.where(any_col, index, -big).amax(1)
    empty = ~any_row.any(1)  # a blank image: treat its box as the centre pixel
    top, bottom = torch.where(empty, _HALF, top), torch.where(empty, _HALF, bottom)
    left, right = torch.where(empty, _HALF, left), torch.where(empty, _HALF, right)
    xs = torch.stack([left, right, right, left], 1) - _HALF
    ys = torch.stack([top, top, bottom, bottom], 1) - _HALF
    return torch.stack([xs, ys], -1)


def draw_params(centred: Tensor, spec: AffineSpec) -> Tensor:
    """(N, 6) float64 parameters for the centred digits (N, 1, 40, 40), drawn from `spec.seed`.

    The translation is uniform over the range that keeps the transformed digit box inside the
    canvas (0 on an axis where the box does not fit, which the ranges above never produce).
    """
    n = centred.shape[0]
    generator = torch.Generator().manual_seed(spec.seed)
    unit = torch.rand(n, 6, generator=generator, dtype=torch.float64)  # (N, 6) in [0, 1)
    params = torch.empty(n, 6, dtype=torch.float64)
    params[:, 0] = (2 * unit[:, 0] - 1) * spec.rotation_deg
    params[:, 1] = (2 * unit[:, 1] - 1) * spec.shear
    params[:, 2:4] = spec.scale_min + unit[:, 2:4] * (spec.scale_max - spec.scale_min)
    moved = _digit_corners(centred) @ linear_parts(params).transpose(1, 2)  # (N, 4, 2)
    low = (-_HALF - moved.amin(1)).clamp(max=0)  # (N, 2): most negative allowed t
    high = (_HALF - moved.amax(1)).clamp(min=0)  # (N, 2)
    fits = low <= high
    params[:, 4:6] = torch.where(fits, low + unit[:, 4:6] * (high - low), 0.0)
    return params


def render(centred: Tensor, params: Tensor, chunk: int = 2048) -> Tensor:
    """(N, 1, 40, 40) uint8 images: each centred digit under its transformation, bilinear."""
    out = torch.empty_like(centred)
    for start in range(0, centred.shape[0], chunk):
        stop = start + chunk
        inverse = torch.linalg.inv(linear_parts(params[start:stop]))  # (B, 2, 2)
        shift = params[start:stop, 4:6, None] / (_HALF + 0.5)  # (B, 2, 1) normalised t
        theta = torch.cat([inverse, -inverse @ shift], 2)  # (B, 2, 3) output -> input
        source = centred[start:stop].float()  # (B, 1, 40, 40)
        grid = torch.nn.functional.affine_grid(theta.float(), list(source.shape), False)
        sampled = torch.nn.functional.grid_sample(
            source, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        out[start:stop] = sampled.round().clamp(0, 255).to(torch.uint8)
    return out


def generate(digits: Tensor, spec: AffineSpec) -> tuple[Tensor, Tensor]:
    """(images (N, 1, 40, 40) uint8, params (N, 6)) for MNIST digits (N, 1, 28, 28) uint8."""
    centred = canvas.centre(digits.cpu())
    params = draw_params(centred, spec)
    return render(centred, params), params


def cache_path(cache_dir: Path, spec: AffineSpec, source_fingerprint: str) -> Path:
    payload = json.dumps(
        {**asdict(spec), "source": source_fingerprint, "version": CACHE_VERSION}, sort_keys=True
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"affine_mnist-{key}.pt"


def load_or_generate(
    digits: Tensor, labels: Tensor, cache_dir: Path, spec: AffineSpec | None = None
) -> AffineMNIST:
    """The approximation for these MNIST digits (N, 1, 28, 28): from the cache when generated
    before, else generated and cached atomically. `DataError` when the cache is unwritable."""
    spec = spec or AffineSpec()
    path = cache_path(cache_dir, spec, fingerprint(digits, labels))
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return AffineMNIST(saved["images"], labels.cpu(), saved["params"])
    images, params = generate(digits, spec)
    buffer = io.BytesIO()
    torch.save({"images": images, "params": params, "spec": asdict(spec)}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, OutputWriteError) as exc:
        raise DataError(
            f"cannot write the affine_mnist cache in {path.parent}: point dataset.cache_dir at "
            "a writable folder (the data root may be read-only)"
        ) from exc
    return AffineMNIST(images, labels.cpu(), params)


def describe(spec: AffineSpec | None = None) -> str:
    """One line naming the set and its (unverified) ranges, for reports and pictures."""
    spec = spec or AffineSpec()
    return (
        f"affNIST approximation (rotation +-{spec.rotation_deg:g} deg, shear +-{spec.shear:g}, "
        f"scale {spec.scale_min:g}-{spec.scale_max:g}, translation inside 40x40; ranges as "
        f"recalled, unverified; seed {spec.seed})"
    )
