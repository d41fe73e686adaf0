"""|u_i|-weighted and scale-free routing diagnostics against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from capsroute.routing.diagnostics import SUM_ROWS, diagnostic_means, weighted_sums

# û (B=1, N_in=2, N_out=2, D=2): capsule 0 predicts (1, 0) for parent 0 and (0, 2) for 1,
# capsule 1 predicts (3, 0) for parent 0 and (0, 1) for parent 1.
U_HAT = [[[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 1.0]]]]
LENGTHS = [[0.2, 0.8]]  # |u_0| = 0.2 (nearly inactive), |u_1| = 0.8


def squash(s: list[float]) -> list[float]:
    n2 = sum(x * x for x in s)
    return [n2 / (1 + n2) / math.sqrt(n2) * x for x in s]


def by_hand(iterations: int, w: list[float] = LENGTHS[0]) -> list[dict[str, float]]:
    """Procedure 1 in plain Python on U_HAT, and the diagnostics of every iteration, each
    capsule i weighted by w[i]."""
    u = U_HAT[0]
    b = [[0.0, 0.0], [0.0, 0.0]]  # b[i][j]
    rows = []
    for _ in range(iterations):
        c = [[math.exp(x) / sum(math.exp(y) for y in bi) for x in bi] for bi in b]
        s = [[sum(c[i][j] * u[i][j][d] for i in range(2)) for d in range(2)] for j in range(2)]
        v = [squash(sj) for sj in s]
        entropy = [-sum(cij * math.log(cij) for cij in ci) for ci in c]
        top = [max(range(2), key=lambda j, i=i: c[i][j]) for i in range(2)]
        cosine = []
        for i in range(2):
            j = top[i]
            dot = sum(a * b_ for a, b_ in zip(u[i][j], v[j], strict=True))
            cosine.append(dot / (math.hypot(*u[i][j]) * math.hypot(*v[j])))
        total = sum(w)
        rows.append(
            {
                "entropy_w": sum(w[i] * entropy[i] for i in range(2)) / total,
                "max_c_w": sum(w[i] * max(c[i]) for i in range(2)) / total,
                "polarised_w": sum(w[i] * (max(c[i]) > 0.9) for i in range(2)) / total,
                "agreement": sum(cosine) / 2,
                "agreement_w": sum(w[i] * cosine[i] for i in range(2)) / total,
            }
        )
        for i in range(2):
            for j in range(2):
                b[i][j] += sum(u[i][j][d] * v[j][d] for d in range(2))
    return rows


@pytest.mark.parametrize("iterations", [1, 3])
def test_weighted_diagnostics_match_a_hand_computation(iterations: int) -> None:
    u_hat = torch.tensor(U_HAT, dtype=torch.float64)
    sums = weighted_sums(u_hat, torch.tensor(LENGTHS), iterations)
    assert sums.shape == (len(SUM_ROWS), iterations)
    got = diagnostic_means(sums)
    for mine, hand in zip(got, by_hand(iterations), strict=True):
        assert mine == pytest.approx(hand, abs=1e-6)
    # the first iteration couples uniformly: entropy ln 2 however the capsules are weighted
    assert got[0]["entropy_w"] == pytest.approx(math.log(2))


def test_weighting_removes_the_dilution_by_inactive_capsules() -> None:
    """With capsule 0 at length 0, the weighted numbers are capsule 1's alone, unlike the
    unweighted mean over both capsules."""
    u_hat = torch.tensor(U_HAT, dtype=torch.float64)
    alone = diagnostic_means(weighted_sums(u_hat, torch.tensor([[0.0, 0.8]]), 3))[-1]
    assert alone == pytest.approx(by_hand(3, [0.0, 1.0])[-1], abs=1e-6)
    unweighted = by_hand(3, [1.0, 1.0])[-1]
    assert alone["entropy_w"] != pytest.approx(unweighted["entropy_w"], abs=1e-3)
    zero = diagnostic_means(weighted_sums(u_hat, torch.zeros(1, 2), 2))
    assert math.isnan(zero[0]["entropy_w"])  # nothing to weight: not a number, not 0
