"""Fused routing vs a straightforward einsum/autograd Procedure 1, measured in the same process.

    .venv/bin/python benchmarks/compare_routing.py [--batch 128] [--steps 5] [--iters 1,3,5]

For each r, times (a) routing alone, forward + backward from the real DigitCaps predictions,
and (b) the whole training step (`capsroute.run.train.train_step`) of the MNIST CapsNet, once with
capsroute's `dynamic_routing` and once with the einsum version swapped into DigitCaps. The two
implementations alternate step by step, so machine load hits both alike; medians are printed,
with step(r) / step(r=1) per implementation. Synthetic data; CPU allocator tuned as in training.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from cpu_routing import alternate  # run as a script: benchmarks/ is on sys.path
from torch import Tensor

from capsroute.config import Config
from capsroute.data.batches import Batch
from capsroute.device import grad_scaler, keep_cpu_memory_mapped
from capsroute.nn import build_model
from capsroute.nn.capsnet import CapsNet, DigitCaps
from capsroute.routing import RoutingResult, dynamic_routing, squash
from capsroute.run.train import train_step


def einsum_routing(u_hat: Tensor, iterations: int, bias: Tensor | None = None) -> RoutingResult:
    """Procedure 1 with einsums and plain autograd on û (B, I, J, D): the usual PyTorch code."""
    batch, n_in, n_out, _ = u_hat.shape
    logits = u_hat.new_zeros(batch, n_in, n_out)  # b_ij
    for k in range(iterations):
        c = torch.softmax(logits, dim=2)  # (B, I, J)
        s = torch.einsum("bij,bijd->bjd", c, u_hat)  # (B, J, D)
        if bias is not None:
            s = s + bias
        v = squash(s)
        if k < iterations - 1:
            logits = logits + torch.einsum("bijd,bjd->bij", u_hat, v)
    return RoutingResult(v=v, c=c)


def use_einsum_routing(model: CapsNet) -> None:
    """Swap the einsum routing into this model's DigitCaps (same weights, same predictions)."""
    digit: DigitCaps = model.digit

    def forward(u: Tensor, iterations: int | None = None, diagnostics: bool = False):
        r = digit.routing.iterations if iterations is None else iterations
        return einsum_routing(digit.predictions(u), r, digit.bias)

    digit.forward = forward  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--iters", default="1,3,5")
    args = parser.parse_args()
    keep_cpu_memory_mapped()
    device = torch.device("cpu")
    config = Config()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch,))
    models = {"capsroute": build_model(config), "einsum": build_model(config)}
    models["einsum"].load_state_dict(models["capsroute"].state_dict())
    use_einsum_routing(models["einsum"])
    primary = models["capsroute"].primary(torch.relu(models["capsroute"].conv1(images))).detach()
    u_hat = models["capsroute"].digit.predictions(primary).detach().requires_grad_(True)
    grad_v = torch.randn(args.batch, 10, 16)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    scaler = grad_scaler(device, "fp32")
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.steps}")
    base: dict[str, float] = {}
    for r in (int(text) for text in args.iters.split(",")):

        def routing(fn: Callable[..., RoutingResult], r: int = r) -> Callable[[], object]:
            return lambda: torch.autograd.grad(fn(u_hat, r).v, u_hat, grad_v)

        def step(name: str, r: int = r) -> Callable[[], object]:
            model, optimizer = models[name], optimizers[name]

            def run() -> object:
                return train_step(
                    lambda x, y: model(x, y, iterations=r),
                    optimizer, scaler, Batch(images, labels), config.model, device, "fp32",
                )  # fmt: skip

            return run

        times = alternate(
            {
                "routing capsroute": routing(lambda u, k: dynamic_routing(u, k, diagnostics=False)),
                "routing einsum": routing(einsum_routing),
                "step capsroute": step("capsroute"),
                "step einsum": step("einsum"),
            },
            args.steps,
        )
        for name, seconds in ((n, statistics.median(t)) for n, t in times.items()):
            base.setdefault(name, seconds)
            print(
                f"r={r}  {name:18s} {1e3 * seconds:8.1f} ms  "
                f"{args.batch / seconds:7.1f} img/s  x r=1: {seconds / base[name]:.3f}"
            )


if __name__ == "__main__":
    main()
