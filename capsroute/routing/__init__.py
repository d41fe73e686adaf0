"""Dynamic routing between capsules (Sabour et al. 2017, Procedure 1): the public API.

`dynamic_routing` and `squash` are what models and users call. The routing itself lives in
two places and this module picks one per call:

- `reference.py`: Procedure 1 on the whole batch, one autograd function with a closed-form
  backward pass (what CUDA and MPS run, and what the CPU paths are checked against);
- `cpu.py` (+ `kernel.c`): the CPU paths, a C kernel compiled on first use or the reference
  routing in cache-sized blocks of examples.

Dependencies point one way: this module -> cpu -> reference.
"""

from __future__ import annotations

from torch import Tensor

from capsroute.routing.cpu import route_on_cpu
from capsroute.routing.reference import (
    POLARISED,
    SQUASH_EPS,
    RoutingResult,
    WholeBatchRouting,
    accumulation_dtype,
    squash,
)

__all__ = ["POLARISED", "SQUASH_EPS", "RoutingResult", "dynamic_routing", "squash"]


def dynamic_routing(
    u_hat: Tensor,
    iterations: int,
    grad: str = "all",
    diagnostics: bool = True,
    bias: Tensor | None = None,
    init_logits: Tensor | None = None,
    *,
    leaky: bool = False,
) -> RoutingResult:
    """Route predictions û (B, N_in, N_out, D) to parents with r = `iterations` (Procedure 1).

    grad="all" back-propagates through all iterations (the official TensorFlow code);
    grad="last" treats the coupling coefficients of the last iteration as constants, which
    equals detaching û (and the bias) in the earlier iterations, as several public
    implementations do.
    Any strides are accepted; û already laid out as a transposed (B, N_out, N_in, D) tensor
    avoids a copy. `bias` (N_out, D), if given, is added to every s_j (the official code's
    digit-capsule bias; Procedure 1 has none).
    `init_logits` (B, N_in, N_out), if given, replaces the zeros b_ij starts from; it is a
    constant (no gradient flows into it). `routing.mode=random` passes random logits with
    r = 1.
    `leaky=True` is the official code's leaky routing: a constant logit 0 joins every softmax
    over parents and is dropped, c_ij = e^b_ij / (1 + sum_k e^b_ik); the result's `c` is then
    the non-leak part, whose rows sum to less than 1.
    On the CPU, float32 û is routed by a compiled kernel where one can be built, anything else
    in cache-sized blocks of examples (`capsroute.routing.cpu`).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    if bias is None:
        bias = u_hat.new_zeros((), dtype=accumulation_dtype(u_hat))
    init_t = None  # (B, N_out, N_in), the layout the routing runs in
    if init_logits is not None:
        init_t = init_logits.detach().transpose(1, 2).to(accumulation_dtype(u_hat)).contiguous()
    # the CPU paths build on this module's torch routing, so they are imported when used

    through_all = grad == "all"
    outputs = route_on_cpu(u_hat, bias, iterations, through_all, diagnostics, init_t, leaky)
    if outputs is None:  # CUDA, MPS: the whole batch at once
        u_t = u_hat.transpose(1, 2).contiguous()  # (B, N_out, N_in, D)
        outputs = WholeBatchRouting.apply(
            u_t, bias, iterations, through_all, diagnostics, init_t, leaky
        )
    v, c_t, delta_b, entropy, max_c, polarised, lengths = outputs
    return RoutingResult(
        v=v,
        c=c_t.transpose(1, 2),
        delta_b=delta_b if diagnostics else None,
        entropy=entropy if diagnostics else None,
        max_c=max_c if diagnostics else None,
        polarised=polarised if diagnostics else None,
        lengths=lengths if diagnostics else None,
    )
