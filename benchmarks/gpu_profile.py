"""What bounds the CUDA train step: a kernel-level profile of the eager and the graphed step.

    python benchmarks/gpu_profile.py --iters 1,3,5 --precision bf16 --steps 10 [key=value ...]

For each variant and r it runs `--steps` steps under torch.profiler (CUDA activity) after a
warm-up and prints, per step: wall ms (device synced), the number of GPU kernels, their summed
GPU time (what a launch-free step could at best shrink to, kernels running back to back), the
gap (wall - kernel time: launch and host overhead), and the five costliest kernels. A graphed
step whose wall time is close to its summed kernel time is bound by the kernels themselves.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from capsroute.device import synchronize
from capsroute.hydra_app import load_config
from capsroute.nn import build_model
from capsroute.run.graph_step import GraphedTrainStep, capturable_adam
from capsroute.run.train import setup_torch, train_step
from capsroute.study.bench import synthetic_batch

TOP_KERNELS = 5


def make_step(config, variant: str, batch: int, device: torch.device):
    """A zero-argument callable running one train step of `variant` (eager or graph)."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    data = synthetic_batch(model.input_shape, model.num_classes, batch, device, config.seed)
    adam = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    if variant == "graph":
        optimizer = capturable_adam(adam, torch.zeros((), device=device))
        graphed = GraphedTrainStep(model, optimizer, config, tuple(data.images.shape)).prepare()
        return lambda: graphed.step(data.images, data.labels)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    precision = config.train.precision
    model.train()
    return lambda: train_step(model, adam, scaler, data, config.model, device, precision)


def profile_step(step, steps: int, device: torch.device) -> dict[str, object]:
    """Wall ms per step (synced), kernels per step, summed kernel ms per step, top kernels."""
    for _ in range(5):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    wall = (time.perf_counter() - started) / steps * 1e3
    activities = [ProfilerActivity.CPU]  # CUDA kernels are recorded on CUDA only
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    per_name: dict[str, float] = defaultdict(float)
    count = 0
    total_us = 0.0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in event.name:
            count += 1
            total_us += event.device_time
            per_name[event.name] += event.device_time
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
    return {
        "wall_ms": wall,
        "kernels": count / steps,
        "kernel_ms": total_us / steps / 1e3,
        "top": [(name[:70], us / steps / 1e3) for name, us in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", default="1,3,5")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--variants", default="eager,graph")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = load_config(
        [f"device={args.device}", f"train.precision={args.precision}", *args.overrides]
    )
    device = setup_torch(base)
    for variant in args.variants.split(","):
        for r in (int(x) for x in args.iters.split(",")):
            config = replace(base, routing=replace(base.routing, iterations=r))
            result = profile_step(
                make_step(config, variant, args.batch, device), args.steps, device
            )
            gap = result["wall_ms"] - result["kernel_ms"]
            print(
                f"{variant:5s} r={r} {args.precision} B={args.batch}: wall {result['wall_ms']:.2f}"
                f" ms/step, {result['kernels']:.0f} kernels, kernel time {result['kernel_ms']:.2f}"
                f" ms, gap {gap:.2f} ms",
                flush=True,
            )
            for name, ms in result["top"]:
                print(f"    {ms:7.3f} ms  {name}")


if __name__ == "__main__":
    main()
