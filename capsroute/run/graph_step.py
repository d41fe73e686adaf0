"""The whole training step as one CUDA graph (`train.cuda_graph=true`).

On a GPU the eager step (`train.train_step`) is bound by launching hundreds of small routing,
loss and Adam kernels, not by arithmetic. `GraphedTrainStep` records forward, loss, backward
and the Adam update once and replays them per batch:

* static inputs: `images` (B, C, H, W) float32 and `labels` (B,) int64; each batch is copied in;
* Adam is `fused` and `capturable` with the lr as a device tensor; the decayed lr
  `lr * rate ** (step / decay_steps)` (LambdaLR's value) is computed in the graph;
* the epoch's loss sums, correct count and first non-finite step stay on the device (one read
  per epoch); `train.nonfinite=skip` skips on the device through fused Adam's `found_inf`;
* warm-up steps run on a side stream first (cuDNN autotuning, lazy Adam state) and every value
  they changed is restored, so a fresh run starts from its init and a resumed one from its
  checkpoint;
* a batch of another shape (the last partial batch) runs the same body eagerly, the captured
  grad tensors zeroed in place; off CUDA every batch runs that eager body (tests use it).

Checkpoints stay portable: `portable_optimizer_state` writes a float lr and the default flags,
so an eager run resumes a graphed one and vice versa. Supported: CUDA, fp32/bf16, routing
dynamic/uniform, one label per image; elsewhere (`graph_unsupported`) the eager step runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from capsroute.config import Config
from capsroute.data.batches import Batch
from capsroute.data.files import DATASET_INFO
from capsroute.errors import ConfigError
from capsroute.nn.capsnet import correct_predictions
from capsroute.run.record import TrainState

log = logging.getLogger("capsroute")

WARMUP_STEPS = 3  # side-stream steps before capture: cuDNN autotuning, Adam state creation
_TOTALS = 5  # loss*n, margin*n, recon*n, correct, n


def graph_unsupported(config: Config, device: torch.device) -> str | None:
    """Why `train.cuda_graph` cannot graph this run (None: it can)."""
    if device.type != "cuda":
        return "not a CUDA device"
    if config.train.precision not in ("fp32", "bf16"):
        return f"precision {config.train.precision} needs a GradScaler"
    if config.routing.mode == "random":
        return "routing.mode=random draws its logits on the host per step"
    if DATASET_INFO[config.dataset.name].targets != 1:
        return "MultiMNIST reconstructs each digit alone (per-batch parts)"
    return None


def uses_graph(config: Config, device: torch.device) -> bool:
    """`train.cuda_graph` on (the default) and a CUDA device that can graph this run. Off
    CUDA the key is ignored; on CUDA an unsupported run logs why and trains eagerly."""
    if not config.train.cuda_graph or device.type != "cuda":
        return False
    reason = graph_unsupported(config, device)
    if reason is not None:
        log.info("train.cuda_graph: %s; the eager step runs", reason)
    return reason is None


def capturable_adam(optimizer: torch.optim.Adam, lr: Tensor) -> torch.optim.Adam:
    """A fused, capturable Adam over the same parameters with `optimizer`'s state (a resumed
    checkpoint's moments and step counts) and `lr` (a device scalar) as its learning rate."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    fused = torch.optim.Adam(params, lr=lr, fused=True, capturable=params[0].is_cuda)
    state = copy.deepcopy(optimizer.state_dict())
    for group in state["param_groups"]:
        group.update(lr=lr, fused=True, capturable=params[0].is_cuda, foreach=None)
    fused.load_state_dict(state)
    for group in fused.param_groups:
        group["lr"] = lr  # load_state_dict deep-copies values: point back at the shared tensor
    for param, param_state in fused.state.items():
        if "step" in param_state:  # fused/capturable Adam keeps the count on the param's device
            param_state["step"] = param_state["step"].to(param.device, torch.float32)
    return fused


def portable_optimizer_state(
    optimizer: torch.optim.Optimizer, next_lrs: list[float]
) -> dict[str, Any]:
    """`optimizer.state_dict()` that a plain (eager, float-lr) Adam loads: a tensor lr becomes
    the schedule's lr of the next step (`next_lrs`, one per group, what an eager Adam holds
    between steps) and the fused/capturable flags their defaults. Unchanged when eager."""
    state = optimizer.state_dict()
    if not any(isinstance(group["lr"], Tensor) for group in state["param_groups"]):
        return state
    for group, lr in zip(state["param_groups"], next_lrs, strict=True):
        group.update(lr=lr, capturable=False, fused=None, foreach=None)
    # per-param dicts are the live ones: copy; an eager Adam counts steps on the CPU
    state["state"] = {
        key: {**values, "step": values["step"].cpu()} if "step" in values else dict(values)
        for key, values in state["state"].items()
    }
    return state


class GraphedTrainStep:
    """Forward, loss, backward and fused Adam of one batch, captured once and replayed.

    `optimizer` must come from `capturable_adam`; `start_step` is the number of optimizer
    steps already taken (a resumed run's). Call `prepare()` once, then `step(images, labels)`
    per batch; `epoch_totals()` is the one host read per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Adam,
        config: Config,
        batch_shape: tuple[int, ...],
        start_step: int = 0,
    ) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.device = next(model.parameters()).device
        self.use_graph = self.device.type == "cuda"
        dev = self.device
        self.images = torch.zeros(batch_shape, device=dev)  # (B, C, H, W) static input
        self.labels = torch.zeros(batch_shape[0], dtype=torch.int64, device=dev)  # (B,)
        self.lr_t = optimizer.param_groups[0]["lr"]  # () float32, read by fused Adam
        self.step_t = torch.full((), start_step, dtype=torch.int64, device=dev)  # () steps
        self.totals = torch.zeros(_TOTALS, dtype=torch.float64, device=dev)  # (5,)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=dev)
        self.skipped = torch.zeros((), dtype=torch.int64, device=dev)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=dev)
        self.skip = config.train.nonfinite == "skip"
        if self.skip:  # fused Adam leaves params and moments alone when found_inf is 1
            self.optimizer.found_inf = self.found_inf  # type: ignore[attr-defined]
        self.graph: torch.cuda.CUDAGraph | None = None
        self._grad_ptrs: list[int] = []

    # -- the body: written once, captured or run eagerly --------------------------------------
    def _write_lr(self) -> None:
        train = self.config.train  # LambdaLR's lr of step n: lr * rate ** (n / steps), in fp64
        factor = torch.pow(train.lr_decay_rate, self.step_t.double() / train.lr_decay_steps)
        self.lr_t.copy_(factor * train.lr)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.train.precision == "fp32":
            return contextlib.nullcontext()
        # no cast-weight cache: nothing cast may outlive the captured region
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _body(self, images: Tensor, labels: Tensor) -> None:
        with self._autocast():
            out = self.model(images, labels)
            parts = out.loss(images, labels, self.config.model)
        total = parts.total
        finite = torch.isfinite(total)  # () bool
        if self.skip:
            self.found_inf.copy_((~finite).float())
        total.backward()
        self._write_lr()
        self.optimizer.step()
        self.step_t += 1
        n = labels.shape[0]
        recon = parts.reconstruction if parts.reconstruction is not None else parts.margin * 0
        values = torch.stack(
            [
                total.detach().double() * n,
                parts.margin.detach().double() * n,
                recon.detach().double() * n,
                correct_predictions(out.scores, labels).sum().double(),
                torch.full((), float(n), dtype=torch.float64, device=self.device),
            ]
        )  # (5,)
        if self.skip:  # a skipped step counts nowhere, as in the eager loop
            self.totals += torch.where(finite, values, torch.zeros_like(values))
            self.skipped += (~finite).long()
        else:
            self.totals += values
            bad = ~finite & (self.first_bad_step < 0)
            self.first_bad_step.copy_(torch.where(bad, self.step_t, self.first_bad_step))

    # -- warm-up and capture ------------------------------------------------------------------
    def _counters(self) -> list[Tensor]:
        return [self.step_t, self.lr_t, self.totals, self.first_bad_step, self.skipped]

    def _warm_up(self) -> None:
        """Real steps on the static buffers, then every value they changed put back."""
        params = [p.detach().clone() for p in self.model.parameters()]
        buffers = [b.clone() for b in self.model.buffers()]
        counters = [t.clone() for t in self._counters()]
        saved = {p: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.state.items()}
        for _ in range(WARMUP_STEPS):
            self.optimizer.zero_grad(set_to_none=True)
            self._body(self.images, self.labels)
        with torch.no_grad():
            for tensor, value in zip(
                [*self.model.parameters(), *self.model.buffers(), *self._counters()],
                [*params, *buffers, *counters],
                strict=True,
            ):
                tensor.copy_(value)
            for param, state in self.optimizer.state.items():
                for key, value in state.items():  # a fresh Adam's state is zeros
                    value.copy_(saved[param][key] if param in saved else torch.zeros_like(value))
        self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the grads

    def prepare(self) -> GraphedTrainStep:
        """Warm up on a side stream and capture the step (CUDA); elsewhere nothing to do."""
        self.model.train()
        self._write_lr()
        if not self.use_graph:
            return self
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._warm_up()
        main.wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(self.images, self.labels)
        # recorded, not run: the state is the restored one; grads now live in the graph's pool
        self._grad_ptrs = [p.grad.data_ptr() for p in self.model.parameters() if p.grad is not None]
        return self

    # -- per batch ----------------------------------------------------------------------------
    def step(self, images: Tensor, labels: Tensor) -> None:
        """One optimizer step on (images (B, C, H, W) float, labels (B,)), already on device."""
        if self.graph is not None and images.shape == self.images.shape:
            self.images.copy_(images, non_blocking=True)
            self.labels.copy_(labels, non_blocking=True)
            self.graph.replay()
            return
        if self.graph is not None:  # the captured Adam reads these grad tensors: keep them
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self._body(images, labels)
        if self.graph is not None:
            ptrs = [p.grad.data_ptr() for p in self.model.parameters() if p.grad is not None]
            if ptrs != self._grad_ptrs:
                raise RuntimeError("an eager step moved a gradient the CUDA graph reads")

    # -- epoch boundaries (the only host reads) -----------------------------------------------
    def epoch_totals(self) -> tuple[list[float], int, int]:
        """(means [loss, margin, recon, correct], images counted, first bad step or -1), then
        the sums restart for the next epoch."""
        *sums, seen = self.totals.tolist()
        self.totals.zero_()
        return [s / max(seen, 1.0) for s in sums], int(seen), int(self.first_bad_step)

    def skipped_steps(self) -> int:
        """Steps skipped so far for a non-finite loss (`train.nonfinite=skip`)."""
        return int(self.skipped)


def graphed_pass(
    step: GraphedTrainStep,
    epoch_data: Iterator[Batch],
    schedule: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    advance: Callable[[torch.Tensor, int], None],
) -> tuple[list[float], int]:
    """One epoch through the CUDA-graphed step; returns the epoch's mean (loss, margin, recon,
    accuracy) and the first non-finite step (-1: none). The host reads the device once, at
    the end; the LambdaLR `schedule` is then set to where the eager loop would have left it."""
    skipped_before = step.skipped_steps()
    for batch in epoch_data:
        step.step(batch.images, batch.labels)
        state.step += 1
        advance(step.totals[0] / step.totals[4].clamp(min=1), state.step)
    means, _, bad_step = step.epoch_totals()
    skipped = step.skipped_steps() - skipped_before
    if skipped:
        state.skipped_steps += skipped
        log.warning("%d non-finite steps skipped this epoch (train.nonfinite=skip)", skipped)
    schedule.last_epoch = state.step
    schedule._last_lr = [  # type: ignore[attr-defined]
        base * factor(state.step)
        for factor, base in zip(schedule.lr_lambdas, schedule.base_lrs, strict=True)  # type: ignore[attr-defined]
    ]
    return means, bad_step


def bench_replay(config: Config, model: nn.Module, batch: Batch) -> Callable[[], None]:
    """One graphed train step on `batch`, warmed up and captured, for `capsroute bench`
    (a ConfigError where it cannot run: not CUDA, fp16, random routing, MultiMNIST)."""
    device = next(model.parameters()).device
    reason = graph_unsupported(config, device)
    if reason is not None:
        raise ConfigError(f"--variants graph: {reason}")
    adam = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    optimizer = capturable_adam(adam, torch.zeros((), device=device))
    step = GraphedTrainStep(model, optimizer, config, tuple(batch.images.shape)).prepare()
    return lambda: step.step(batch.images, batch.labels)
