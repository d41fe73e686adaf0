"""The paper's baseline CNN: exact parameter count, output and objective."""

from __future__ import annotations

import torch

from capsroute.baseline import BaselineCNN, paper_parameter_count


def test_mnist_parameter_count_is_the_papers_35_4_million() -> None:
    """conv 1->256, 256->256, 256->128 (5x5, 'same'): 6,656 + 1,638,656 + 819,328;
    FC 100,352 (28 x 28 x 128) -> 328: 32,915,784; 328 -> 192: 63,168; 192 -> 10: 1,930."""
    net = BaselineCNN((1, 28, 28), 10)
    assert net.parameter_counts() == {"total": 35_445_522, "without_decoder": 35_445_522}
    assert paper_parameter_count((1, 28, 28)) == 35_445_522
    assert round(35_445_522 / 1e6, 1) == 35.4  # the paper's "35.4M"


def test_cifar10_crops_give_a_smaller_first_fc_layer() -> None:
    """24x24x3 crops: 24 x 24 x 128 = 73,728 inputs to the 328-unit layer."""
    net = BaselineCNN((3, 24, 24), 10)
    assert net.parameter_counts()["total"] == paper_parameter_count((3, 24, 24)) == 26_725_650


def test_scores_loss_and_dropout() -> None:
    torch.manual_seed(0)
    net = BaselineCNN((1, 12, 12), 10, channels=(4, 4, 2), hidden=(8, 6))
    images, labels = torch.rand(5, 1, 12, 12), torch.tensor([0, 1, 2, 3, 4])
    out = net(images, labels, iterations=3, diagnostics=True)  # routing arguments are ignored
    assert out.scores.shape == (5, 10) and out.reconstruction is None and out.routing is None
    parts = out.loss(images, labels)
    expected = torch.nn.functional.cross_entropy(out.scores, labels)
    assert torch.equal(parts.total, expected) and parts.reconstruction is None
    parts.total.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()  # dropout off: the same input gives the same logits
    assert torch.equal(net(images).scores, net(images).scores)
