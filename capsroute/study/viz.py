"""`capsroute viz RUN_DIR`: the paper's pictures from a trained run's checkpoint.

- `reconstructions.png`: test inputs above their reconstructions, correctly and wrongly
  classified ones (the decoder sees the predicted class's capsule, as for the paper's Fig. 3).
- `perturbation.png`: the paper's Fig. 4: each of the 16 dimensions of the predicted digit
  capsule of one test image shifted by -0.25 ... 0.25 in steps of 0.05, then decoded.
- `coupling.png`: the coupling coefficients c_ij of one test image after each routing
  iteration k = 1..r (rows: parent capsules, columns: primary capsules), i.e. which primary
  capsules route to which digit as routing proceeds.

With `dataset` (`capsroute viz RUN --dataset affine_mnist`) the pictures use another test set
of the run's input shape instead (Section 5.2: transformed digits and what a network trained on
translated MNIST reconstructs from them), written to RUN_DIR/viz/<dataset>/.

The run is rebuilt from its checkpoint: the config saved with the weights, the same network,
and the run's own test subset (same seed), evaluated without augmentation. matplotlib's Agg
backend: no display needed. Figures are written atomically.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from capsroute.config import Config
from capsroute.data.batches import eval_batches, make_splits
from capsroute.data.viewpoint import evaluation_set
from capsroute.errors import ConfigError
from capsroute.io import atomic_write_bytes, check_output_dir
from capsroute.nn.capsnet import CapsNet, correct_predictions, predicted_classes
from capsroute.run import checkpoint
from capsroute.study.eval_r import check_same_shape

DPI = 110
PERTURBATIONS = tuple(round(-0.25 + 0.05 * k, 2) for k in range(11))  # -0.25, -0.20, ..., 0.25


@dataclass
class LoadedRun:
    """A trained run ready to draw from: its config, the network (eval mode) and test data.

    images: (N, C, H, W) float in [0, 1] as the network sees them (centre-cropped for
    CIFAR-10); labels: (N,) int64, (N, 2) for MultiMNIST; both on the CPU.
    """

    config: Config
    model: CapsNet
    images: Tensor
    labels: Tensor

    @cached_property
    def output(self) -> Any:
        """The network's output on `images` (computed once): lengths (N, K), capsules
        (N, K, D) and the reconstruction (N, C*H*W) from the predicted class's capsule
        ((N, 2, H*W) from the two predicted digits' capsules for MultiMNIST)."""
        return predict(self.model, self.images)


def load_run(
    run_dir: Path,
    data_root: Path | None = None,
    max_images: int = 2000,
    other: str | None = None,
) -> LoadedRun:
    """Rebuild the run's network from `checkpoint.pt` and take up to `max_images` of its test set
    (or of test set `other`, which must have the run's input shape).

    `data_root` replaces the saved `dataset.root` (runs move between machines).
    """
    trained = checkpoint.load_run(Path(run_dir), data_root)
    config, model = trained.config, trained.model
    if not isinstance(model, CapsNet):
        raise ConfigError(f"{run_dir} is not a CapsNet run: viz draws capsules and routing")
    dataset = dataclasses.replace(
        config.dataset, train_size=config.dataset.train_size or 1, on_device=False
    )  # only the test split is used: take a 1-image training subset
    if other is not None:
        check_same_shape(Path(run_dir), config, other)
        test = evaluation_set(dataset, other, config.seed)
    else:
        test = make_splits(dataset, config.seed, torch.device("cpu")).test
    batch = next(iter(eval_batches(test, dataset, min(max_images, len(test)), torch.device("cpu"))))
    return LoadedRun(config, model, batch.images, batch.labels)


@torch.no_grad()
def predict(model: CapsNet, images: Tensor, iterations: int | None = None) -> Any:
    """The network's output for images (B, C, H, W), decoded from the predicted class."""
    return model(images, labels=None, iterations=iterations)


RGB = 3  # channels drawn as one colour image


def _pixels(flat: Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """(C*H*W,) or (C, H, W) in [0, 1] -> an (H, W) or (H, W, 3) array imshow draws as is.

    One channel is grey, three are RGB; any other count (smallNORB's 2 stereo views) is drawn
    as grey channels side by side, (H, C*W)."""
    image = flat.reshape(shape).clamp(0, 1).cpu().numpy()
    if shape[0] == 1:
        return image[0]
    if shape[0] == RGB:
        return image.transpose(1, 2, 0)
    return np.concatenate(list(image), axis=1)


def _montage(images: Tensor, gap: int = 1) -> np.ndarray:
    """(R, S, C, H, W) in [0, 1] -> one (R*(H+gap), S*(W+gap)[, 3]) array, tiles on white."""
    rows, cols, channels, height, width = images.shape
    canvas = torch.ones(channels, rows * (height + gap), cols * (width + gap))
    for row in range(rows):
        for col in range(cols):
            top, left = row * (height + gap), col * (width + gap)
            canvas[:, top : top + height, left : left + width] = images[row, col].clamp(0, 1)
    return _pixels(canvas, tuple(canvas.shape))


def _reconstruction_pixels(flat: Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """One image's reconstruction as `_pixels` draws it: (C*H*W,) as is; one grey
    reconstruction per digit (T, H*W), MultiMNIST, as the paper's Fig. 5 colours them: red
    for the first, green for the second (an (H, W, 3) array)."""
    if flat.dim() == 1:
        return _pixels(flat, shape)
    digits = flat.reshape(flat.shape[0], *shape[1:])  # (T, H, W)
    rgb = torch.zeros(3, *shape[1:])
    rgb[: min(2, digits.shape[0])] = digits[:2]
    return _pixels(rgb, (3, *shape[1:]))


def _classes_text(classes: Tensor) -> str:
    """A label or prediction as text: '3', or '3+7' for two digits."""
    return "+".join(str(c) for c in classes.reshape(-1).tolist())


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def reconstructions(run: LoadedRun, path: Path, per_kind: int = 8) -> Path:
    """Inputs and reconstructions of up to `per_kind` correct and `per_kind` wrong test images."""
    model = run.model
    if model.decoder is None:
        raise ConfigError("this run has no decoder (model.reconstruction=false)")
    out = run.output
    predicted = predicted_classes(out.lengths, model.targets)  # (N,) or (N, 2)
    right = correct_predictions(out.lengths, run.labels)  # (N,)
    correct = torch.nonzero(right).squeeze(1)[:per_kind]
    wrong = torch.nonzero(~right).squeeze(1)[:per_kind]
    columns = max(len(correct), len(wrong), 1)
    fig, axes = plt.subplots(4, columns, figsize=(1.3 * columns, 6.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rows = (("correct", correct, 0), ("wrong", wrong, 2))
    for kind, index, row in rows:
        axes[row, 0].set_title(f"{kind}: input", loc="left", fontsize=8)
        if len(index) == 0:
            axes[row, 0].text(0, 0.5, f"no {kind} predictions", fontsize=8)
        for col, i in enumerate(index.tolist()):
            axes[row, col].imshow(_pixels(run.images[i], model.input_shape), cmap="gray")
            axes[row + 1, col].imshow(
                _reconstruction_pixels(out.reconstruction[i], model.input_shape), cmap="gray"
            )
            label, guess = _classes_text(run.labels[i]), _classes_text(predicted[i])
            axes[row + 1, col].set_title(f"(l:{label}, p:{guess})", fontsize=7)
    title = "test inputs above their reconstructions (l: label, p: prediction)"
    if model.targets > 1:
        title += "; red: first, green: second predicted digit"
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def perturbation(run: LoadedRun, path: Path, index: int | None = None) -> Path:
    """Fig. 4: every dimension of the predicted capsule of one image tweaked, then decoded.

    The image is the first correctly classified test image (or `index`). Row d changes
    dimension d of the predicted class's 16-D capsule by each of `PERTURBATIONS`.
    """
    model = run.model
    if model.decoder is None:
        raise ConfigError("this run has no decoder (model.reconstruction=false)")
    out = run.output
    predicted = out.lengths.argmax(dim=1)  # (N,) the longest capsule (MultiMNIST: one digit)
    if index is None:
        hits = torch.nonzero(correct_predictions(out.lengths, run.labels)).squeeze(1)
        index = int(hits[0]) if len(hits) else 0
    capsules = out.capsules[index]  # (K, D)
    dims, steps = capsules.shape[1], len(PERTURBATIONS)
    deltas = torch.tensor(PERTURBATIONS, dtype=capsules.dtype)  # (S,)
    tweaked = capsules.expand(dims, steps, *capsules.shape).clone()  # (D, S, K, D)
    cls = int(predicted[index])
    for d in range(dims):
        tweaked[d, :, cls, d] += deltas
    classes = torch.full((dims * steps,), cls, dtype=torch.int64)
    decoded = model.decoder(tweaked.reshape(dims * steps, *capsules.shape), classes)
    decoded = decoded.reshape(dims, steps, *model.input_shape)  # (D, S, C, H, W)
    montage = _montage(decoded)  # one picture: rows = dimensions, columns = tweaks
    height, width = model.input_shape[1:]
    fig, ax = plt.subplots(figsize=(0.55 * steps + 1, 0.55 * dims + 0.8))
    ax.imshow(montage, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([(width + 1) * s + width / 2 for s in range(steps)])
    ax.set_xticklabels([f"{p:+.2f}" for p in PERTURBATIONS], fontsize=6)
    ax.set_yticks([(height + 1) * d + height / 2 for d in range(dims)])
    ax.set_yticklabels([f"dim {d}" for d in range(dims)], fontsize=6)
    ax.tick_params(length=0)
    fig.suptitle(
        f"capsule {cls} of test image {index} (label {_classes_text(run.labels[index])}): "
        "one dimension tweaked per row",
        fontsize=8,
    )
    return _save(fig, path)


@torch.no_grad()
def coupling_coefficients(model: CapsNet, image: Tensor, iterations: int) -> list[Tensor]:
    """c_ij after routing iteration k = 1..`iterations` for one image (1, C, H, W).

    The coefficients that produce v after k iterations are those of a routing run with r = k,
    so each is read from the network's own forward pass. Each tensor is (N_in, N_out),
    parents including the none-of-the-above capsule when the model has one.
    """
    return [
        model(image, iterations=k, reconstruct=False).routing.c[0]  # (N_in, N_out)
        for k in range(1, iterations + 1)
    ]


def coupling(run: LoadedRun, path: Path, index: int = 0) -> Path:
    """One heat map per routing iteration: rows parent capsules, columns primary capsules."""
    model = run.model
    r = run.config.routing.iterations
    maps = coupling_coefficients(model, run.images[index : index + 1], r)
    parents = maps[0].shape[1]
    top = max(float(c.max()) for c in maps)  # one colour scale for every iteration
    names = [str(j) for j in range(model.num_classes)] + ["none"] * (parents - model.num_classes)
    fig, axes = plt.subplots(r, 1, figsize=(10, 1.0 + 0.28 * parents * r), squeeze=False)
    image = None
    for k, (ax, c) in enumerate(zip(axes[:, 0], maps, strict=True), start=1):
        image = ax.imshow(c.T.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=top)
        ax.set_yticks(range(parents), names, fontsize=6)
        ax.set_ylabel(f"iteration {k}", fontsize=7)
    axes[-1, 0].set_xlabel("primary capsule i (type-major: type x position)", fontsize=7)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="$c_{ij}$")
    scores = run.output.lengths[index : index + 1]  # (1, K)
    predicted = _classes_text(predicted_classes(scores, model.targets))
    fig.suptitle(
        f"coupling coefficients of test image {index} "
        f"(label {_classes_text(run.labels[index])}, predicted {predicted}), r = {r}",
        fontsize=8,
    )
    return _save(fig, path)


def make_figures(
    run_dir: Path,
    out_dir: Path | None = None,
    data_root: Path | None = None,
    examples: int = 8,
    dataset: str | None = None,
) -> list[Path]:
    """Every figure of a run into `out_dir` (default RUN_DIR/viz, or RUN_DIR/viz/<dataset> for
    another test set); returns the paths. Runs without a decoder get the coupling figure only.
    """
    run = load_run(Path(run_dir), data_root, other=dataset)
    default = Path(run_dir) / "viz" / (dataset or "")
    folder = check_output_dir(Path(out_dir) if out_dir is not None else default, "--out")
    written = [coupling(run, folder / "coupling.png")]
    if run.model.decoder is not None:
        written.insert(0, reconstructions(run, folder / "reconstructions.png", examples))
        written.insert(1, perturbation(run, folder / "perturbation.png"))
    return written
