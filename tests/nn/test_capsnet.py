"""The CapsNet has the paper's architecture: shapes and exact parameter counts."""

from __future__ import annotations

import pytest
import torch

from capsroute.config import ModelConfig, RoutingConfig
from capsroute.nn.capsnet import CapsNet, correct_predictions


def mnist_net(**model_overrides: object) -> CapsNet:
    return CapsNet((1, 28, 28), 10, ModelConfig(**model_overrides), RoutingConfig())  # type: ignore[arg-type]


def cifar_net(**model_overrides: object) -> CapsNet:
    cfg = ModelConfig(primary_types=64, none_of_the_above=True, **model_overrides)  # type: ignore[arg-type]
    return CapsNet((3, 24, 24), 10, cfg, RoutingConfig())


def test_mnist_parameter_counts_match_the_paper() -> None:
    assert mnist_net().parameter_counts() == {"total": 8_215_568, "without_decoder": 6_804_224}


def test_digit_bias_adds_160_parameters() -> None:
    assert mnist_net(digit_bias=True).parameter_counts()["total"] == 8_215_568 + 160


def test_no_decoder_without_reconstruction() -> None:
    net = mnist_net(reconstruction=False)
    assert net.decoder is None
    assert net.parameter_counts() == {"total": 6_804_224, "without_decoder": 6_804_224}


def test_cifar_parameter_counts() -> None:
    """3x24x24 crops: conv1 62,464; PrimaryCaps 64x8 channels 10,617,344; 1024 primary
    capsules x 11 parents (10 classes + none-of-the-above) x 8x16 = 1,441,792; decoder
    160-512-1024-1728 = 2,378,944."""
    net = cifar_net()
    assert net.digit.n_in == 1024 and net.digit.n_out == 11
    assert net.parameter_counts() == {"total": 14_500_544, "without_decoder": 12_121_600}


def test_mnist_forward_shapes() -> None:
    torch.manual_seed(0)
    net = mnist_net()
    images = torch.rand(2, 1, 28, 28)
    out = net(images, torch.tensor([3, 7]), diagnostics=True)
    assert out.lengths.shape == (2, 10)
    assert out.capsules.shape == (2, 10, 16)
    assert out.reconstruction is not None and out.reconstruction.shape == (2, 784)
    assert ((out.reconstruction >= 0) & (out.reconstruction <= 1)).all()
    assert (out.lengths < 1).all()
    assert out.routing.c.shape == (2, 1152, 10)
    assert out.routing.delta_b is not None and out.routing.delta_b.shape == (3,)


def test_none_of_the_above_capsule_is_routed_but_not_a_class() -> None:
    torch.manual_seed(0)
    out = cifar_net()(torch.rand(2, 3, 24, 24))
    assert out.routing.v.shape == (2, 11, 16)
    assert out.lengths.shape == (2, 10)
    assert out.reconstruction is not None and out.reconstruction.shape == (2, 3 * 24 * 24)


def test_decoder_sees_only_the_masked_capsule() -> None:
    """The reconstruction depends on the chosen class's capsule and on no other."""
    torch.manual_seed(0)
    net = mnist_net()
    capsules = torch.randn(1, 10, 16)
    classes = torch.tensor([4])
    assert net.decoder is not None
    base = net.decoder(capsules, classes)
    changed = capsules.clone()
    changed[0, 5] += 1.0
    torch.testing.assert_close(net.decoder(changed, classes), base)
    changed[0, 4] += 1.0
    assert not torch.allclose(net.decoder(changed, classes), base)


def test_decoder_uses_predicted_class_without_labels() -> None:
    torch.manual_seed(0)
    net = mnist_net()
    images = torch.rand(3, 1, 28, 28)
    out = net(images)
    predicted = net(images, out.lengths.argmax(dim=1))
    assert out.reconstruction is not None and predicted.reconstruction is not None
    torch.testing.assert_close(out.reconstruction, predicted.reconstruction)


def test_iterations_can_be_overridden_per_call() -> None:
    torch.manual_seed(0)
    net = mnist_net()
    images = torch.rand(2, 1, 28, 28)
    one = net(images, iterations=1, diagnostics=True)
    assert one.routing.delta_b is not None and one.routing.delta_b.shape == (1,)
    torch.testing.assert_close(one.routing.c, torch.full((2, 1152, 10), 0.1))


def test_rejects_inputs_too_small_for_the_convolutions() -> None:
    with pytest.raises(ValueError, match="too small"):
        CapsNet((1, 12, 12), 10, ModelConfig(), RoutingConfig())


def test_multimnist_net_has_3200_primary_capsules_and_decodes_each_digit() -> None:
    """36x36 overlays: conv1 28x28, PrimaryCaps 10x10 x 32 types = 3,200 capsules; each of
    the two digits is reconstructed on its own (B, 2, 1296), from its label's capsule or,
    without labels, from the two longest capsules (best first)."""
    torch.manual_seed(0)
    net = CapsNet((1, 36, 36), 10, ModelConfig(), RoutingConfig(), targets=2)
    assert net.digit.n_in == 3200
    assert net.parameter_counts()["total"] == 11_361_808  # the paper's "11.36M parameters"
    images = torch.rand(3, 1, 36, 36)
    labels = torch.tensor([[1, 7], [0, 2], [9, 4]])
    out = net(images, labels)
    assert out.reconstruction is not None and out.reconstruction.shape == (3, 2, 1296)
    assert net.decoder is not None
    torch.testing.assert_close(out.reconstruction[:, 1], net.decoder(out.capsules, labels[:, 1]))
    unlabelled = net(images)
    top2 = out.lengths.topk(2, dim=1).indices
    assert unlabelled.reconstruction is not None
    torch.testing.assert_close(unlabelled.reconstruction, net.decoder(out.capsules, top2))


def test_correct_predictions_one_label_is_the_argmax_two_labels_the_top_two() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.1, 0.9, 0.2]])
    assert correct_predictions(scores, torch.tensor([0, 2, 1])).tolist() == [True, False, True]
    pairs = torch.tensor([[1, 0], [0, 1], [1, 2]])  # order within a pair does not matter
    assert correct_predictions(scores, pairs).tolist() == [True, False, True]
