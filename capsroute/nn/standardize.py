"""Per-image standardisation of a network's input (`model.standardize`).

The authors' smallNORB code standardises every image before the network
(`tf.image.per_image_standardization`: zero mean and unit variance over all its pixels and
channels, the deviation floored at 1/sqrt(pixels) so a flat image does not blow up). Here it is
the networks' first step, so training, evaluation and pictures all see it, while the decoder
still reconstructs the [0, 1] pixels (the sigmoid decoder cannot produce standardised values).
"""

from __future__ import annotations

from capsroute.data.distort import standardise as standardize_images  # one implementation

__all__ = ["standardize_images"]
