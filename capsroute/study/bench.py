"""`capsroute bench`: time the real training step and inference of the real CapsNet.

Each configuration (mode x routing iterations x batch size x precision) builds the configured
model, feeds it synthetic images of the dataset's shape (no dataset files are needed), runs
`warmup` untimed steps and reports the median of `steps` timed ones:

* `train`: `capsroute.run.train.train_step`, the function the training loop calls (forward under
  autocast, margin + reconstruction loss, backward, Adam step).
* `eval`: `capsroute.run.evaluate.classify` (no gradients, no decoder).

Train rows come in two variants (`--variants`): `eager`, the step above, and `graph`, the same
step captured as one CUDA graph (`capsroute.run.graph_step`, what `train.cuda_graph=true`
trains with; CUDA, fp32/bf16 only).

FLOPs per image are counted analytically from the layer shapes (`flop_counts`); a training
step counts 3x the forward pass. The ceiling is measured in the same run: the model's own
PrimaryCaps convolution (its dominant cost), forward + backward alone at the same batch size and
precision. `ceiling_fraction` = achieved GFLOP/s / ceiling GFLOP/s.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on the
CPU the process's peak resident set (VmHWM), reset before each configuration by writing "5" to
`/proc/self/clear_refs` after `malloc_trim` has returned the previous configuration's free heap,
so each row's peak is that configuration's (plus what the process holds anyway: torch itself,
~0.5 GiB). Where /proc cannot be reset the lifetime peak (`ru_maxrss`) is reported instead.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from capsroute.config import Config, ModelConfig
from capsroute.data.batches import Batch, input_shape, train_batches
from capsroute.data.files import DATASET_INFO, ImageTensors
from capsroute.device import (
    autocast,
    cpu_has_fast_bf16,
    device_description,
    grad_scaler,
    release_cpu_memory,
    synchronize,
)
from capsroute.errors import ConfigError
from capsroute.io import atomic_write_text
from capsroute.nn import build_model
from capsroute.nn.capsnet import CapsNet
from capsroute.nn.official import output_size, pad_for
from capsroute.run.evaluate import classify
from capsroute.run.graph_step import bench_replay, graph_unsupported
from capsroute.run.train import setup_torch, train_step

MODES = ("train", "eval")
VARIANTS = ("eager", "graph")
log = logging.getLogger("capsroute")
_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """Forward-pass FLOPs per image of each part (a multiply-add counts 2)."""

    conv1: float
    primary: float
    predictions: float  # û_j|i = W_ij u_i
    routing: float  # weighted sums and agreements of all iterations
    decoder: float

    def forward(self, decoder: bool) -> float:
        """FLOPs of one forward pass per image, with or without the decoder."""
        body = self.conv1 + self.primary + self.predictions + self.routing
        return body + (self.decoder if decoder else 0.0)

    def per_image(self, mode: str) -> float:
        """`train`: 3x the forward pass with decoder (forward + backward); `eval`: forward
        without the decoder."""
        return 3.0 * self.forward(decoder=True) if mode == "train" else self.forward(False)


def flop_counts(
    model: ModelConfig, shape: tuple[int, int, int], num_classes: int, iterations: int
) -> FlopCount:
    """Count the CapsNet's forward FLOPs per image from the layer sizes.

    Routing iteration k reads û twice (weighted sum, then agreement; the last has no
    agreement): 2 * N_in * N_out * D FLOPs each. Softmax, squash and biases are ignored (they
    are O(N_in * N_out), below 1% of the total).
    """
    channels, height, width = shape
    pad, kernel, stride = model.padding, model.primary_kernel, model.primary_stride
    h1, w1 = (output_size(s, model.conv1_kernel, 1, pad) for s in (height, width))
    h2, w2 = (output_size(s, kernel, stride, pad) for s in (h1, w1))
    primary_channels = model.primary_types * model.primary_dim
    n_in = model.primary_types * h2 * w2
    n_out = num_classes + int(model.none_of_the_above)
    conv1 = 2.0 * channels * model.conv1_kernel**2 * model.conv1_channels * h1 * w1
    primary = 2.0 * model.conv1_channels * model.primary_kernel**2 * primary_channels * h2 * w2
    predictions = 2.0 * n_in * n_out * model.primary_dim * model.digit_dim
    routing = 2.0 * n_in * n_out * model.digit_dim * (2 * iterations - 1)
    widths = [num_classes * model.digit_dim, *model.decoder_hidden, channels * height * width]
    decoder = sum(2.0 * a * b for a, b in itertools.pairwise(widths))
    if not model.reconstruction:
        decoder = 0.0
    return FlopCount(conv1, primary, predictions, routing, decoder)


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def time_steps(
    step: Callable[[], object], device: torch.device, warmup: int, steps: int
) -> list[float]:
    """Seconds of each of `steps` calls of `step` after `warmup` untimed ones (device synced)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


class PeakMemory:
    """Peak memory of one configuration, in MiB (see the module docstring for the method)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM"

    def reset(self) -> None:
        """Forget earlier peaks: free what can be freed, then restart the high-water mark."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        release_cpu_memory()
        try:
            _PROC_CLEAR_REFS.write_text("5")
        except OSError:
            self.method = "ru_maxrss (process lifetime)"

    def peak_mb(self) -> float:
        """The peak since `reset`, MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.method == "VmHWM":
            for line in _PROC_STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One measured configuration (the `--json` rows)."""

    mode: str
    variant: str  # eager, or graph (the train step replayed from a CUDA graph)
    iters: int
    batch_size: int
    precision: str
    device: str
    ms_per_step: float
    img_per_s: float
    peak_mem_mb: float
    gflops_per_image: float
    gflops_per_s: float
    ceiling_gflops_per_s: float
    ceiling_fraction: float
    loader_ms_per_batch: float | None  # train only: cutting + augmenting one batch
    loader_fraction: float | None  # loader / (loader + step)
    steps: int
    compile: bool
    device_name: str
    peak_mem_method: str


def synthetic_batch(
    shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    device: torch.device,
    seed: int,
    targets: int = 1,
) -> Batch:
    """Random images (B, C, H, W) in [0, 1] and labels (B,) on `device`; with `targets` = 2
    (MultiMNIST) two different labels (B, 2) and two random digits alone (B, 2, C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *shape, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    if targets == 1:
        return Batch(images.to(device), labels.to(device))
    second = (labels + torch.randint(1, num_classes, (batch,), generator=generator)) % num_classes
    parts = torch.rand(batch, 2, *shape, generator=generator)
    return Batch(
        parts.amax(dim=1).to(device), torch.stack([labels, second], 1).to(device), parts.to(device)
    )


def measure_ceiling(
    model: CapsNet, batch: int, precision: str, device: torch.device, warmup: int, steps: int
) -> float:
    """GFLOP/s of the model's PrimaryCaps convolution alone, forward + backward (3x forward
    FLOPs), at this batch size and precision: what the hardware gives the dominant layer."""
    conv = model.primary.conv
    _, height, width = model.input_shape
    kernel, stride, padding = conv.kernel_size[0], conv.stride[0], model.padding
    side = [output_size(s, model.conv1.kernel_size[0], 1, padding) for s in (height, width)]
    left, right, top, bottom = pad_for(side[0], side[1], kernel, stride, padding)
    padded = (side[0] + top + bottom, side[1] + left + right)  # what convolve() is given
    features = torch.rand(batch, conv.in_channels, *padded, device=device, requires_grad=True)
    out_side = [output_size(s, kernel, stride, padding) for s in side]
    flops = 3.0 * 2 * conv.in_channels * conv.kernel_size[0] ** 2 * conv.out_channels
    flops *= out_side[0] * out_side[1] * batch

    def step() -> None:
        with autocast(device, precision):
            out = model.primary.convolve(features)  # (B, types * dim, H', W')
        out.backward(torch.ones_like(out))

    seconds = statistics.median(time_steps(step, device, warmup, steps))
    model.zero_grad(set_to_none=True)
    return flops / seconds / 1e9


def loader_seconds(config: Config, batch: int, device: torch.device, steps: int) -> float:
    """Median seconds `train_batches` takes to cut and augment one batch from on-device data."""
    info = DATASET_INFO[config.dataset.name]
    count = batch * (steps + 1)
    generator = torch.Generator().manual_seed(config.seed)
    side = input_shape(config.dataset)[-1] if info.targets > 1 else info.size  # before a crop
    size = (count, info.targets, info.channels, side, side)
    parts = torch.randint(0, 256, size, generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, info.num_classes, (count, info.targets), generator=generator)
    if info.targets == 1:
        data = ImageTensors(parts[:, 0], labels[:, 0]).to(device)
    else:  # MultiMNIST: overlays, two labels and each digit alone
        data = ImageTensors(parts.amax(dim=1), labels, parts).to(device)
    batches = iter(train_batches(data, config.dataset, batch, generator, device))
    return statistics.median(time_steps(lambda: next(batches), device, 1, steps))


def bench_config(
    config: Config,
    mode: str,
    batch: int,
    precision: str,
    device: torch.device,
    ceiling: float,
    warmup: int,
    steps: int,
) -> BenchRow:
    """Build the model for `config` and time `steps` train or eval steps on one batch."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    shape = input_shape(config.dataset)
    num_classes = model.num_classes
    targets = DATASET_INFO[config.dataset.name].targets
    data = synthetic_batch(shape, num_classes, batch, device, config.seed, targets)
    r = config.routing.iterations
    step_fn = torch.compile(model) if config.train.compile else model
    memory = PeakMemory(device)
    graphed = mode == "train" and config.train.cuda_graph
    if graphed:
        step = bench_replay(replace(config, train=replace(config.train, precision=precision)),
                            model, data)  # fmt: skip
    elif mode == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        scaler = grad_scaler(device, precision)

        def step() -> object:
            return train_step(step_fn, optimizer, scaler, data, config.model, device, precision)
    else:
        model.eval()

        def step() -> object:
            return classify(step_fn, data.images, device, precision, iterations=r)

    memory.reset()
    seconds = statistics.median(time_steps(step, device, warmup, steps))
    peak = memory.peak_mb()
    loader = loader_seconds(config, batch, device, steps) if mode == "train" else None
    per_image = flop_counts(config.model, shape, num_classes, r).per_image(mode) / 1e9
    achieved = per_image * batch / seconds
    return BenchRow(
        mode=mode,
        variant="graph" if graphed else "eager",
        iters=r,
        batch_size=batch,
        precision=precision,
        device=str(device),
        ms_per_step=1e3 * seconds,
        img_per_s=batch / seconds,
        peak_mem_mb=peak,
        gflops_per_image=per_image,
        gflops_per_s=achieved,
        ceiling_gflops_per_s=ceiling,
        ceiling_fraction=achieved / ceiling,
        loader_ms_per_batch=None if loader is None else 1e3 * loader,
        loader_fraction=None if loader is None else loader / (loader + seconds),
        steps=steps,
        compile=config.train.compile,
        device_name=device_description(device),
        peak_mem_method=memory.method,
    )


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


def run_bench(
    config: Config,
    iterations: Iterable[int],
    batch_sizes: Iterable[int],
    precisions: Iterable[str],
    steps: int = 5,
    warmup: int = 2,
    modes: Sequence[str] = MODES,
    progress: Callable[[BenchRow], None] | None = None,
    variants: Iterable[str] = ("eager",),
) -> list[BenchRow]:
    """Measure every (batch size, precision, mode, variant, r) on `config`'s device; one row
    each (eval rows only for the eager variant: the graph is a train-step variant).

    The ceiling is measured once per (batch size, precision), just before its rows.
    `progress`, if given, is called with each row as soon as it is measured.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    device = setup_torch(config)
    precisions, variants = list(precisions), list(variants)
    if "graph" in variants and "train" in modes:  # refuse before measuring anything
        for precision in precisions:
            at_precision = replace(config, train=replace(config.train, precision=precision))
            if (reason := graph_unsupported(at_precision, device)) is not None:
                raise ConfigError(f"--variants graph: {reason}")
    if device.type == "cpu" and "bf16" in precisions and not cpu_has_fast_bf16():
        log.warning("this CPU has no native bf16 (oneDNN emulates it): bf16 will be slow")
    rows: list[BenchRow] = []
    for batch in batch_sizes:
        for precision in precisions:
            torch.manual_seed(config.seed)
            ceiling = measure_ceiling(
                build_model(config).to(device), batch, precision, device, warmup, steps
            )
            for mode, variant, r in itertools.product(modes, variants, iterations):
                if mode == "eval" and variant != "eager":
                    continue
                cfg = replace(
                    config,
                    routing=replace(config.routing, iterations=r),
                    train=replace(config.train, cuda_graph=variant == "graph"),
                )
                row = bench_config(cfg, mode, batch, precision, device, ceiling, warmup, steps)
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def write_json(rows: list[BenchRow], path: Path) -> None:
    """The rows as a JSON list of flat objects (NaN-free: missing values are null)."""
    payload = [asdict(row) for row in rows]
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def results_table(rows: list[BenchRow]) -> Table:
    """A rich table of the rows, with the step time relative to r = 1 of the same setting."""
    table = Table(title=f"capsroute bench ({rows[0].device_name})" if rows else "capsroute bench")
    columns: list[tuple[str, Any]] = [
        ("mode", lambda r, _: r.mode),
        ("variant", lambda r, _: r.variant),
        ("r", lambda r, _: str(r.iters)),
        ("batch", lambda r, _: str(r.batch_size)),
        ("prec", lambda r, _: r.precision),
        ("ms/step", lambda r, _: _fmt(r.ms_per_step)),
        ("img/s", lambda r, _: _fmt(r.img_per_s)),
        ("x r=1", lambda _, base: _fmt(base, 3)),
        ("peak MiB", lambda r, _: _fmt(r.peak_mem_mb, 0)),
        ("GFLOP/img", lambda r, _: _fmt(r.gflops_per_image, 3)),
        ("GFLOP/s", lambda r, _: _fmt(r.gflops_per_s)),
        ("ceiling GFLOP/s", lambda r, _: _fmt(r.ceiling_gflops_per_s)),
        ("of ceiling", lambda r, _: f"{100 * r.ceiling_fraction:.0f}%"),
        ("loader", lambda r, _: "-" if r.loader_fraction is None else _pct(r.loader_fraction)),
    ]
    for name, _ in columns:
        table.add_column(name, justify="left" if name in ("mode", "variant", "prec") else "right")
    for row in rows:
        base = _relative_to_r1(row, rows)
        table.add_row(*(render(row, base) for _, render in columns))
    return table


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _relative_to_r1(row: BenchRow, rows: list[BenchRow]) -> float | None:
    """This row's step time over that of r = 1 with the same mode, variant, batch and
    precision."""
    for other in rows:
        same = (other.mode, other.variant, other.batch_size, other.precision) == (
            row.mode,
            row.variant,
            row.batch_size,
            row.precision,
        )
        if same and other.iters == 1:
            return row.ms_per_step / other.ms_per_step
    return None
