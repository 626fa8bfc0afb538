"""One trial's configuration and the names every layer shares. No torch import, so the CLI starts fast.

Metric names and trial outcomes are defined here once; Tune reports, Parquet columns and the CLI use them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from trainables.errors import ConfigError

MODELS = ("mlp", "cnn")
DEFAULT_HIDDEN_UNITS = {"mlp": 10, "cnn": 128}  # the seed's hand-picked widths
METRIC = "val_acc"
MODE = "max"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_s")
COMPLETED, DIVERGED = "completed", "diverged"
DEVICES = ("cpu", "cuda", "auto")
CHECKPOINT_FILE = "state.pt"  # a trial checkpoint: the Trainer state, read with weights_only=True
CHECKPOINT_METRICS = "metrics.json"  # its epoch and val_acc, so checkpoints can be pruned without loading them
REPLAYED = "replayed"  # marks a result re-sent after a restart for an epoch trained before it


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainConfig:
    """One trial's configuration. Defaults are the seed notebook's MLP (784-10-10, lr 0.1, batch 32)."""

    model: str = "mlp"
    hidden_units: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    batch_size: int = 32
    epochs: int = 10
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        checks = [  # type first, so a YAML string is a ConfigError rather than a TypeError
            ("hidden_units", _is_int(self.hidden_units) and self.hidden_units >= 1, "an integer >= 1"),
            ("lr", _is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", _is_real(self.momentum) and 0 <= self.momentum <= 1, "a number in [0, 1]"),
            ("batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("epochs", _is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("seed", _is_int(self.seed), "an integer"),
            ("num_threads", self.num_threads is None or _is_int(self.num_threads) and self.num_threads >= 1,
             "None or an integer >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
