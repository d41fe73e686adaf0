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


def check_model_fits(config: Config) -> None:
    """Refuse (`ConfigError`) convolution sizes the input images cannot hold, before any work.

    With `model.padding=valid` (the paper's) Conv1 then PrimaryCaps must leave at least a 1x1
    grid; 'same' padding (and the baseline CNN's) fits any kernel. Also checks `dataset.crop`.
    """
    from capsroute.errors import ConfigError
    from capsroute.nn.official import output_size

    _, height, width = input_shape(config.dataset)  # raises for a crop larger than the images
    model = config.model
    if model.kind != "capsnet":
        return
    side = min(height, width)
    after_conv1 = output_size(side, model.conv1_kernel, 1, model.padding)
    grid = output_size(after_conv1, model.primary_kernel, model.primary_stride, model.padding)
    if grid < 1:
        raise ConfigError(
            f"model.conv1_kernel={model.conv1_kernel} and model.primary_kernel="
            f"{model.primary_kernel} do not fit the {height}x{width} {config.dataset.name} "
            f"input: their sum minus 1 must be <= {side}"
        )
