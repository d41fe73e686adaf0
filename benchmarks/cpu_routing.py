"""The CPU routing paths of `capsroute.routing.cpu`, measured in the same process.

    .venv/bin/python benchmarks/cpu_routing.py [--batch 128] [--steps 9] [--contend]

Times (a) the routing alone, forward + backward, from û laid out as DigitCaps makes it, for
r = 1, 3, 5, and (b) the whole training step (`capsroute.run.train.train_step`) of the MNIST
CapsNet at r = 1 and r = 5, with each CPU path: `kernel` (the compiled kernel, the default),
`blocks` (torch operations in cache-sized blocks on worker threads: the fallback without a C
compiler) and `whole` (torch operations on the whole batch at once, as on CUDA and as before
issue 5's last change). Calls alternate round by round, so machine load hits all alike;
prints the median and the minimum (the least disturbed call) of each, and step(r=5) /
step(r=1). `--contend` runs a competing process (2-thread matrix products) throughout, as when
another developer's tests share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from capsroute import routing
from capsroute.config import Config
from capsroute.data.batches import Batch
from capsroute.device import grad_scaler
from capsroute.nn import build_model
from capsroute.routing import cpu as routing_cpu
from capsroute.run.train import setup_torch, train_step

HOG = "import torch\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"
# name: (routing_cpu.CPU_KERNEL, routing_cpu.CPU_BLOCK_BYTES)
VARIANTS = {
    "kernel": (True, routing_cpu.CPU_BLOCK_BYTES),
    "blocks": (False, routing_cpu.CPU_BLOCK_BYTES),
    "whole": (False, None),
}


def alternate(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, list[float]]:
    """Seconds of each call, calls interleaved round by round after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def with_path(path: tuple[bool, int | None], fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        routing_cpu.CPU_KERNEL, routing_cpu.CPU_BLOCK_BYTES = path
        return fn()

    return run


def report(label: str, times: list[float]) -> tuple[float, float]:
    median, least = 1e3 * statistics.median(times), 1e3 * min(times)
    print(f"{label:28s} median {median:8.1f} ms   min {least:8.1f} ms", flush=True)
    return median, least


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--contend", action="store_true")
    args = parser.parse_args()
    config = Config()
    device = setup_torch(config)  # threads, deterministic mode, CPU allocator as in training
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if args.contend else None
    try:
        run(config, device, args.batch, args.steps)
    finally:
        if hog is not None:
            hog.kill()


def run(config: Config, device: torch.device, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    products = (torch.randn(1152, batch, 160) * 0.05).requires_grad_(True)  # DigitCaps' bmm
    kernel = routing_cpu._cpu_kernel(products.view(1152, batch, 10, 16), torch.zeros(()))
    print(
        f"batch {batch}, {torch.get_num_threads()} threads, {steps} rounds, blocks of "
        f"{routing_cpu.CPU_BLOCK_BYTES} bytes of û, "
        f"kernel {kernel or 'unavailable: kernel = blocks'}"
    )
    bias = torch.zeros(10, 16, requires_grad=True)
    grad_v = torch.randn(batch, 10, 16)

    def routing_pass(r: int) -> Callable[[], object]:
        def fn() -> object:
            u_hat = products.view(1152, batch, 10, 16).permute(1, 0, 2, 3)
            v = routing.dynamic_routing(u_hat, r, diagnostics=False, bias=bias).v
            return torch.autograd.grad(v, (products, bias), grad_v)

        return fn

    for r in (1, 3, 5):
        times = alternate(
            {name: with_path(path, routing_pass(r)) for name, path in VARIANTS.items()}, steps
        )
        for name, values in times.items():
            report(f"r={r} routing fwd+bwd {name}", values)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    def train(r: int) -> Callable[[], object]:
        torch.manual_seed(0)
        model = build_model(config).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        scaler = grad_scaler(device, "fp32")
        return lambda: train_step(
            lambda x, y: model(x, y, iterations=r),
            optimizer, scaler, Batch(images, labels), config.model, device, "fp32",
        )  # fmt: skip

    steps_by = {
        f"r={r} step {name}": with_path(path, train(r))
        for name, path in VARIANTS.items()
        for r in (1, 5)
    }
    times = alternate(steps_by, steps)
    results = {label: report(label, values) for label, values in times.items()}
    for name in VARIANTS:
        (m1, n1), (m5, n5) = results[f"r=1 step {name}"], results[f"r=5 step {name}"]
        print(f"step r=5 / r=1 {name:7s}      median {m5 / m1:.3f}      min {n5 / n1:.3f}")


if __name__ == "__main__":
    main()
