"""The seed notebook's two networks, built by name. Both take uint8-derived float images of shape (N, 28, 28)."""

from __future__ import annotations

from torch import nn

from trainables.config import MODELS
from trainables.errors import ConfigError


class MLP(nn.Sequential):
    """784 -> hidden_units -> ReLU -> 10: the seed's section 4."""

    def __init__(self, hidden_units: int):
        super().__init__(nn.Flatten(), nn.Linear(784, hidden_units), nn.ReLU(), nn.Linear(hidden_units, 10))


class CNN(nn.Sequential):
    """conv32-pool-conv64-pool-fc(hidden_units)-dropout0.5-fc10: the seed's section 6."""

    def __init__(self, hidden_units: int):
        super().__init__(
            nn.Unflatten(1, (1, 28)),  # (N, 28, 28) -> (N, 1, 28, 28)
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 5 * 5, hidden_units),  # no activation here: the seed has none
            nn.Dropout(0.5),
            nn.Linear(hidden_units, 10),
        )


def build_model(name: str, hidden_units: int) -> nn.Module:
    """A fresh `mlp` or `cnn`; unknown names and non-positive widths are user errors."""
    if name not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    if isinstance(hidden_units, bool) or not isinstance(hidden_units, int) or hidden_units < 1:
        raise ConfigError(f"hidden_units must be an integer >= 1, got {hidden_units!r}")
    return (MLP if name == "mlp" else CNN)(hidden_units)
