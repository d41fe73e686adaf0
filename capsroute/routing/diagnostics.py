"""Routing diagnostics that compare across networks: weighted by |u_i|, and scale-free.

The per-iteration means that the routing itself returns (`RoutingResult.entropy`, `max_c`,
`polarised`, `delta_b`) average over every lower capsule i alike. Two things make them hard to
compare across r:

- inactive lower capsules (|u_i| near 0; on MNIST at initialisation about a fifth of the
  primary capsules) carry almost no signal, and their couplings stay near uniform whatever
  the routing does, so they dilute every coupling statistic. The `*_w` versions here weight
  capsule i of each example by its length |u_i|, so a capsule counts as much as it contributes.
- mean |Δb| = mean |û_j|i · v_j| scales with |û|, which differs between networks trained at
  different r. `agreement` is scale-free instead: the cosine between û_j*|i and v_j* for the
  parent j* that capsule i couples to most in that iteration.

With zero initial logits the first iteration's couplings tie (c_ij = 1/J), so j* there is
simply the first parent and `agreement` of that iteration means nothing; the report omits it.

This pass re-runs the whole-batch reference routing (`reference.route`) on û in blocks of
examples, so it needs only û, |u_i| and the initial logits, and leaves the training step and
the CPU kernel untouched. It is meant for one evaluation split per epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsroute.routing.reference import POLARISED, route

# Rows of the (DIAGNOSTIC_SUMS, r) tensor `weighted_sums` returns; means are ratios of rows.
SUM_ROWS = (
    "weight",  # sum of |u_i|
    "entropy_w",  # sum of |u_i| H(c_i)
    "max_c_w",  # sum of |u_i| max_j c_ij
    "polarised_w",  # sum of |u_i| [max_j c_ij > POLARISED]
    "agreement_w",  # sum of |u_i| cos(û_j*|i, v_j*)
    "count",  # number of lower capsules
    "agreement",  # sum of cos(û_j*|i, v_j*)
)
# Each diagnostic as (numerator row, denominator row) of SUM_ROWS.
RATIOS = {
    "entropy_w": ("entropy_w", "weight"),
    "max_c_w": ("max_c_w", "weight"),
    "polarised_w": ("polarised_w", "weight"),
    "agreement": ("agreement", "count"),
    "agreement_w": ("agreement_w", "weight"),
}
BLOCK_EXAMPLES = 64  # examples routed at once: (64, 10, 1152, 16) fp32 û is ~47 MB
COSINE_EPS = 1e-12


@torch.no_grad()
def weighted_sums(
    u_hat: Tensor,
    u_length: Tensor,
    iterations: int,
    bias: Tensor | None = None,
    init_logits: Tensor | None = None,
) -> Tensor:
    """Sums over the examples and lower capsules of the weighted diagnostics, per iteration.

    u_hat: predictions û (B, N_in, N_out, D); u_length: |u_i| (B, N_in); init_logits:
    (B, N_in, N_out) or None (zeros, Procedure 1). Returns float64 (len(SUM_ROWS), r): sums,
    not means, so callers can add them over batches before dividing (`diagnostic_means`).
    """
    sums = torch.zeros(len(SUM_ROWS), iterations, dtype=torch.float64, device=u_hat.device)
    zero_bias = u_hat.new_zeros((), dtype=torch.float32)
    for start in range(0, u_hat.shape[0], BLOCK_EXAMPLES):
        part = slice(start, start + BLOCK_EXAMPLES)
        u_t = u_hat[part].float().transpose(1, 2).contiguous()  # (b, J, I, D)
        logits = None
        if init_logits is not None:
            logits = init_logits[part].float().transpose(1, 2).contiguous()  # (b, J, I)
        b = zero_bias if bias is None else bias.float()
        couplings, _, outputs, _ = route(u_t, b, iterations, False, logits)
        weight = u_length[part].double()  # (b, I)
        for k, (c, v) in enumerate(zip(couplings, outputs, strict=True)):
            sums[:, k] += _block_sums(u_t, c, v, weight)
    return sums


def _block_sums(u_t: Tensor, c: Tensor, v: Tensor, weight: Tensor) -> Tensor:
    """SUM_ROWS for one iteration of one block: u_t (b, J, I, D), c (b, J, I), v (b, J, D),
    weight (b, I)."""
    c64 = c.double()
    entropy = -(c64 * torch.log(c64.clamp_min(1e-30))).sum(dim=1)  # (b, I)
    strongest, parent = c64.max(dim=1)  # (b, I): max_j c_ij and j*
    polarised = (strongest > POLARISED).double()
    index = parent.unsqueeze(1).unsqueeze(-1).expand(-1, 1, -1, u_t.shape[-1])  # (b, 1, I, D)
    u_star = u_t.gather(1, index).squeeze(1).double()  # û_j*|i, (b, I, D)
    v_star = v.double().gather(1, parent.unsqueeze(-1).expand(-1, -1, v.shape[-1]))  # (b, I, D)
    cosine = (u_star * v_star).sum(-1) / (u_star.norm(dim=-1) * v_star.norm(dim=-1)).clamp_min(
        COSINE_EPS
    )  # (b, I)
    return torch.stack(
        [
            weight.sum(),
            (weight * entropy).sum(),
            (weight * strongest).sum(),
            (weight * polarised).sum(),
            (weight * cosine).sum(),
            torch.tensor(float(weight.numel()), dtype=torch.float64, device=weight.device),
            cosine.sum(),
        ]
    )


def diagnostic_means(sums: Tensor) -> list[dict[str, float]]:
    """Per iteration, the means of RATIOS from summed `weighted_sums` (NaN where nothing was
    weighted: every capsule of every example had length 0)."""
    rows = dict(zip(SUM_ROWS, sums.tolist(), strict=True))
    out = []
    for k in range(sums.shape[1]):
        means = {}
        for name, (num, den) in RATIOS.items():
            means[name] = rows[num][k] / rows[den][k] if rows[den][k] > 0 else float("nan")
        out.append(means)
    return out
