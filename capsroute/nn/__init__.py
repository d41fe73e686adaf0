"""The networks: the CapsNet (`capsnet.py`), the paper's baseline CNN (`baseline.py`) and the
losses (`losses.py`). `build_model` is the one place that picks a network for a config."""

from __future__ import annotations

from capsroute.config import Config
from capsroute.data.batches import input_shape
from capsroute.data.files import DATASET_INFO
from capsroute.nn.baseline import BaselineCNN
from capsroute.nn.capsnet import CapsNet


def build_model(config: Config) -> CapsNet | BaselineCNN:
    """The configured network (`model.kind`) for the dataset (input shape and class count come
    from the data): the CapsNet, or the paper's baseline CNN. The only place that picks one;
    both outputs carry `scores` and `loss`, so the rest of training is the same for both."""
    info = DATASET_INFO[config.dataset.name]
    shape, model = input_shape(config.dataset), config.model
    if model.kind == "baseline_cnn":
        return BaselineCNN(
            shape, info.num_classes, model.cnn_channels, model.cnn_kernel, model.cnn_hidden,
            model.cnn_dropout, model.standardize,
        )  # fmt: skip
    return CapsNet(shape, info.num_classes, model, config.routing, targets=info.targets)
