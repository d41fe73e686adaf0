"""A training loss that is NaN or infinite: the error, and advice that names the likely key."""

from __future__ import annotations

from capsroute.config import Config
from capsroute.errors import CapsrouteError


class NonFiniteLossError(CapsrouteError):
    """The training loss became NaN or infinite."""


# Values beyond which a non-finite loss is most likely the key's doing (paper: lr 1e-3,
# recon_weight 0.0005, temperature 1).
LARGE_LR, LARGE_RECON_WEIGHT, SMALL_TEMPERATURE = 0.01, 1.0, 0.01


def likely_cause(config: Config) -> str:
    """The config key most likely behind a NaN/Inf loss, as advice (the first that applies)."""
    if config.train.lr > LARGE_LR:
        return f"train.lr={config.train.lr:g} is large, lower it (the paper uses 0.001)"
    if config.model.recon_weight > LARGE_RECON_WEIGHT:
        return f"model.recon_weight={config.model.recon_weight:g} is large, lower it"
    if config.routing.mode == "random" and config.routing.temperature < SMALL_TEMPERATURE:
        return f"routing.temperature={config.routing.temperature:g} is tiny, raise it"
    if config.train.precision != "fp32":
        return f"train.precision={config.train.precision} may overflow, use fp32"
    return "lower train.lr or use train.precision=fp32"
