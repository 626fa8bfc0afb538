"""Search spaces: the seed notebook's space for both models, with bounds taken from the spec.

Plain data, no Ray: the runner turns each Dimension into Ray's domain, which HyperOptSearch converts
to hyperopt's `hp.*` and the random searcher samples directly, so both search the same space.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.spec import ExperimentSpec
from trainables.config import DEFAULT_HIDDEN_UNITS


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # "quniform" | "loguniform" | "uniform"
    low: float
    high: float
    step: float | None = None


def build_space(spec: ExperimentSpec) -> list[Dimension]:
    """hidden_units quniform(min, max, step), lr loguniform(min, max), momentum uniform(min, max)."""
    return [
        Dimension("hidden_units", "quniform", spec.hidden_units_min, spec.hidden_units_max, spec.hidden_units_step),
        Dimension("lr", "loguniform", spec.lr_min, spec.lr_max),
        Dimension("momentum", "uniform", spec.momentum_min, spec.momentum_max),
    ]


HYPERPARAMETERS = tuple(d.name for d in build_space(ExperimentSpec(name="defaults")))


def seed_point(spec: ExperimentSpec) -> dict[str, float]:
    """The seed's hand-picked configuration (mlp: 10 hidden, cnn: 128; lr 0.1, momentum 0), clipped into the space.

    Clipping keeps the point inside the bounds TPE models (the default space starts at 50 hidden units).
    """
    clip = {d.name: (d.low, d.high) for d in build_space(spec)}
    point = {"hidden_units": float(DEFAULT_HIDDEN_UNITS[spec.model]), "lr": 0.1, "momentum": 0.0}
    return {k: float(min(max(v, clip[k][0]), clip[k][1])) for k, v in point.items()}
