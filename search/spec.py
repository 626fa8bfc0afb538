"""ExperimentSpec: every option of a search, its default, its help and its rule, in one frozen dataclass.

The dataclass is the single source of the CLI flags (`--max-epochs`), the YAML keys (`max_epochs`),
the Tune config and the Parquet columns, so a concept has one name everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search.errors import SpecError
from trainables.config import MODELS

SCHEDULERS = ("asha", "fifo")
SEARCH_ALGS = ("hyperopt", "random")
SPEC_FILE = "spec.json"


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class ExperimentSpec:
    """One validated, immutable description of a search."""

    model: str = _opt("mlp", "network to tune", choices=MODELS)
    num_samples: int = _opt(20, "number of trials to run")
    max_epochs: int = _opt(5, "epochs per trial (ASHA's max_t)")
    grace_period: int = _opt(1, "epochs every trial gets before ASHA may stop it")
    reduction_factor: float = _opt(3.0, "ASHA keeps about 1/reduction_factor of the trials at each rung")
    scheduler: str = _opt("asha", "trial scheduler: asha stops weak trials early, fifo never does", choices=SCHEDULERS)
    search_alg: str = _opt("hyperopt", "hyperopt = TPE after n_initial_points random trials", choices=SEARCH_ALGS)
    n_initial_points: int | None = _opt(
        None,
        "random trials before TPE takes over; default min(10, max(3, num_samples // 3)): hyperopt's 20 "
        "would make any search of <= 20 trials a pure random search, and 3 hyperparameters need few points",
    )
    seed_point: bool = _opt(False, "evaluate the seed notebook's hand-picked configuration first")
    batch_size: int = _opt(32, "SGD mini-batch size (the seed's 32)")
    hidden_units_min: int = _opt(50, "smallest hidden width (MLP hidden layer, CNN fully connected layer)")
    hidden_units_max: int = _opt(200, "largest hidden width")
    hidden_units_step: int = _opt(10, "hidden width step (quniform)")
    lr_min: float = _opt(math.exp(-5), "smallest learning rate (log-uniform)")
    lr_max: float = _opt(math.exp(-1), "largest learning rate")
    momentum_min: float = _opt(0.0, "smallest SGD momentum (uniform)")
    momentum_max: float = _opt(1.0, "largest SGD momentum")
    cpus_per_trial: float = _opt(1.0, "CPUs reserved per trial; torch threads follow it")
    gpus_per_trial: float = _opt(0.0, "GPU share per trial (fractions allowed, e.g. 0.25); > 0 trains on cuda")
    max_concurrent: int | None = _opt(None, "most trials at once (default: as many as the resources allow)")
    max_failures: int = _opt(1, "retries of a failed trial, each from its last checkpoint")
    time_budget_s: float | None = _opt(None, "stop starting trials after this many seconds of wall time")
    subset: int | None = _opt(None, "train on the first N training images only (smoke runs)")
    seed: int = _opt(0, "seed of the searcher and of every trial's model and shuffling")
    name: str | None = _opt(None, "experiment name (default: <model>-<date>-<time>)")
    results_dir: str = _opt("results", "folder that holds one sub-folder per experiment")
    storage_path: str | None = _opt(
        None, "where Ray keeps experiment state (default: results_dir); a multi-node run needs s3:// or NFS"
    )
    address: str | None = _opt(None, "Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: a local Ray)")
    data_dir: str | None = _opt(None, "MNIST folder or file (default: $HPSEARCH_DATA_DIR, else the bundled copy)")

    def __post_init__(self):
        validate(self)

    @property
    def experiment_dir(self) -> Path:
        """Where this experiment's tables, spec and best model live."""
        return Path(self.results_dir).expanduser().resolve() / self.name

    @property
    def ray_storage_path(self) -> str:
        """Ray's storage_path: shared storage when given, else the results folder (so Ray's dir is ours)."""
        return self.storage_path or str(Path(self.results_dir).expanduser().resolve())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{SPEC_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(directory / SPEC_FILE)


FIELDS = {f.name: f for f in dataclasses.fields(ExperimentSpec)}
SMOKE = {"num_samples": 4, "max_epochs": 2, "subset": 2000}


def _rule(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def validate(s: ExperimentSpec) -> None:
    """Every rule a user can break, each with the rule and the value received."""
    for name, f in FIELDS.items():
        value = getattr(s, name)
        expected = _python_type(f)
        if value is None:
            _rule("None" in str(f.type), f"{name} is required, got null")
            continue
        accepted = (int, float) if expected is float else expected
        ok = isinstance(value, accepted) and not (isinstance(value, bool) and expected is not bool)
        _rule(ok, f"{name} must be {expected.__name__}, got {value!r}")
        if "choices" in f.metadata:
            _rule(value in f.metadata["choices"], f"{name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    lower_bounds = {
        "num_samples": 1, "max_epochs": 1, "grace_period": 1, "batch_size": 1, "hidden_units_min": 1,
        "hidden_units_step": 1, "max_failures": 0, "max_concurrent": 1, "subset": 1, "n_initial_points": 1,
        "gpus_per_trial": 0,
    }
    for name, low in lower_bounds.items():
        value = getattr(s, name)
        _rule(value is None or value >= low, f"{name} must be >= {low}, got {value}")
    strictly_above = {"reduction_factor": 1, "lr_min": 0, "lr_max": 0, "cpus_per_trial": 0, "time_budget_s": 0}
    for name, low in strictly_above.items():
        value = getattr(s, name)
        _rule(value is None or value > low, f"{name} must be > {low}, got {value}")
    for name in ("momentum_min", "momentum_max"):
        _rule(0 <= getattr(s, name) <= 1, f"{name} must be in [0, 1], got {getattr(s, name)}")
    for low, high, op in (("grace_period", "max_epochs", "<="), ("hidden_units_min", "hidden_units_max", "<="),
                          ("lr_min", "lr_max", "<"), ("momentum_min", "momentum_max", "<=")):
        a, b = getattr(s, low), getattr(s, high)
        ok = a <= b if op == "<=" else a < b
        _rule(ok, f"{low} must be {op} {high}, got {a} {'>' if op == '<=' else '>='} {b}")
    _rule(
        s.gpus_per_trial <= 1 or s.gpus_per_trial == int(s.gpus_per_trial),
        f"gpus_per_trial above 1 must be a whole number, got {s.gpus_per_trial}",
    )
    _rule(s.name is not None, "name is required")
    _rule(
        bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", s.name)) and ".." not in s.name,
        f"name must be letters, digits and . _ = + - (no path separator, no '..'), got {s.name!r}",
    )


def _python_type(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split("|")[0].strip()]


def _coerce(name: str, value: Any) -> Any:
    """YAML and JSON write 1 for 1.0; accept ints where floats are expected, nothing looser."""
    f = FIELDS[name]
    if _python_type(f) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML mapping; unknown keys and unreadable files are user errors."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SpecError(f"config file {path} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SpecError(f"config file {path} must hold a mapping of options, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - set(FIELDS))
    if unknown:
        raise SpecError(f"config file {path} has unknown key {unknown[0]!r}; known keys: {', '.join(FIELDS)}")
    return loaded


def build_spec(options: dict[str, Any], config: str | Path | None = None, smoke: bool = False) -> ExperimentSpec:
    """Defaults < --smoke preset < YAML file < flags; then resolve the derived defaults and validate."""
    merged: dict[str, Any] = dict(SMOKE) if smoke else {}
    if config is not None:
        merged.update(read_yaml(config))
    merged.update({k: v for k, v in options.items() if v is not None})
    merged = {k: _coerce(k, v) for k, v in merged.items()}
    model = merged.get("model", FIELDS["model"].default)
    num_samples = merged.get("num_samples", FIELDS["num_samples"].default)
    merged.setdefault("name", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if isinstance(num_samples, int):
        merged.setdefault("n_initial_points", min(10, max(3, num_samples // 3)))
    return ExperimentSpec(**merged)


def load_spec(experiment_dir: Path) -> ExperimentSpec:
    """The spec saved with an experiment (plain JSON: nothing executable)."""
    path = experiment_dir / SPEC_FILE
    try:
        return ExperimentSpec(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise SpecError(f"{experiment_dir} holds no {SPEC_FILE}; is it an hpsearch experiment?") from None
