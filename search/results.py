"""Parquet tables of every experiment: one schema per table, atomic writes, and the queries the CLI runs.

Layout: `<results_dir>/<name>/{experiment,trials,epochs}.parquet`, so pyarrow, DuckDB or pandas can
read one experiment or, with a `*/trials.parquet` glob, all of them at once. The schemas are explicit
so that every file agrees on types even when a column is all null (a running search has no best yet).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from search.errors import ExperimentNotFound, QueryError
from search.query import compile_where, unknown_column

TABLES = ("experiments", "trials", "epochs")
FILE_NAMES = {"experiments": "experiment.parquet", "trials": "trials.parquet", "epochs": "epochs.parquet"}
EXPERIMENT_STATUSES = ("running", "finished", "interrupted", "failed")
TRIAL_STATUSES = ("completed", "stopped_early", "diverged", "error", "running", "pending")

_UTC = pa.timestamp("us", tz="UTC")

EXPERIMENT_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("started_at", _UTC, nullable=False),
        pa.field("ended_at", _UTC),
        pa.field("wall_s", pa.float64(), nullable=False),
        # the ExperimentSpec, one column per field
        pa.field("num_samples", pa.int32(), nullable=False),
        pa.field("max_epochs", pa.int32(), nullable=False),
        pa.field("grace_period", pa.int32(), nullable=False),
        pa.field("reduction_factor", pa.float64(), nullable=False),
        pa.field("scheduler", pa.string(), nullable=False),
        pa.field("search_alg", pa.string(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("cpus_per_trial", pa.float64(), nullable=False),
        pa.field("gpus_per_trial", pa.float64(), nullable=False),
        pa.field("max_concurrent", pa.int32()),
        pa.field("max_failures", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("subset", pa.int64()),
        pa.field("time_budget_s", pa.float64()),
        pa.field("n_initial_points", pa.int32()),  # null: the spec's default rule chose it
        pa.field("address", pa.string()),
        pa.field("storage_path", pa.string()),
        pa.field("data_dir", pa.string()),
        pa.field("results_dir", pa.string(), nullable=False),
        pa.field("hidden_units_min", pa.int32()),
        pa.field("hidden_units_max", pa.int32()),
        pa.field("hidden_units_step", pa.int32()),
        pa.field("lr_min", pa.float64()),
        pa.field("lr_max", pa.float64()),
        pa.field("momentum_min", pa.float64()),
        pa.field("momentum_max", pa.float64()),
        # the outcome, null while the search runs
        pa.field("best_trial_id", pa.string()),
        pa.field("best_hidden_units", pa.int32()),
        pa.field("best_lr", pa.float64()),
        pa.field("best_momentum", pa.float64()),
        pa.field("best_val_acc", pa.float64()),
        pa.field("test_acc", pa.float64()),
        pa.field("test_loss", pa.float64()),
        pa.field("trials", pa.int32()),
        # provenance
        pa.field("python_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("ray_version", pa.string()),
        pa.field("hyperopt_version", pa.string()),
        pa.field("git_commit", pa.string()),
    ]
)

TRIAL_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("hidden_units", pa.int32()),
        pa.field("lr", pa.float64()),
        pa.field("momentum", pa.float64()),
        pa.field("batch_size", pa.int32()),
        pa.field("status", pa.string()),
        pa.field("epochs_run", pa.int32()),
        pa.field("best_val_acc", pa.float64()),
        pa.field("best_epoch", pa.int32()),
        pa.field("last_val_acc", pa.float64()),
        pa.field("train_s", pa.float64()),
        pa.field("node", pa.string()),  # ip address
        pa.field("node_id", pa.string()),  # Ray node id
        pa.field("cpus", pa.float64()),
        pa.field("gpus", pa.float64()),
        pa.field("checkpoint_path", pa.string()),
        pa.field("error", pa.string()),
        pa.field("asha_rung", pa.int32()),  # the epoch milestone where ASHA stopped the trial
        pa.field("asha_cutoff", pa.float64()),  # the val_acc it had to reach there
        pa.field("asha_value", pa.float64()),  # the val_acc it had there
    ]
)

EPOCH_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("train_loss", pa.float64()),
        pa.field("train_acc", pa.float64()),
        pa.field("val_loss", pa.float64()),
        pa.field("val_acc", pa.float64()),
        pa.field("epoch_s", pa.float64()),
        pa.field("elapsed_s", pa.float64()),  # seconds since the experiment started, at the end of the epoch
    ]
)

SCHEMAS = {"experiments": EXPERIMENT_SCHEMA, "trials": TRIAL_SCHEMA, "epochs": EPOCH_SCHEMA}
_STATUSES = {EXPERIMENT_SCHEMA: EXPERIMENT_STATUSES, TRIAL_SCHEMA: TRIAL_STATUSES}


def _to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows come from our own code, so a key or null the schema does not allow is a bug: ValueError."""
    for i, row in enumerate(rows):
        extra = row.keys() - set(schema.names)
        if extra:
            raise ValueError(f"row {i} has keys not in the schema: {', '.join(sorted(extra))}")
    table = pa.Table.from_pylist(rows, schema=schema)
    for field in schema:
        if not field.nullable and table[field.name].null_count:
            raise ValueError(f"column '{field.name}' must not be null, got {table[field.name].null_count} nulls")
    allowed = _STATUSES.get(schema)
    if allowed:
        bad = set(table["status"].to_pylist()) - set(allowed) - {None}
        if bad:
            raise ValueError(f"status must be one of {', '.join(allowed)}, got {', '.join(sorted(bad))}")
    return table


def write_table(path: str | os.PathLike, rows: list[dict], schema: pa.Schema) -> Path:
    """Write rows atomically: readers see the old file or the new one, never a partial one.

    The temp file sits in the same directory (so os.replace is a rename, not a copy) and is named
    `.<name>.tmpXXXX` so no `*.parquet` glob ever picks it up, even when a crash leaves it behind.
    """
    path = Path(path)
    table = _to_table(rows, schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_experiment(exp_dir: str | os.PathLike, row: dict) -> Path:
    return write_table(Path(exp_dir) / FILE_NAMES["experiments"], [row], EXPERIMENT_SCHEMA)


def write_trials(exp_dir: str | os.PathLike, rows: list[dict]) -> Path:
    return write_table(Path(exp_dir) / FILE_NAMES["trials"], rows, TRIAL_SCHEMA)


def write_epochs(exp_dir: str | os.PathLike, rows: list[dict]) -> Path:
    return write_table(Path(exp_dir) / FILE_NAMES["epochs"], rows, EPOCH_SCHEMA)


def list_experiments(results_dir: str | os.PathLike) -> list[str]:
    """Names of the folders under results_dir that hold an experiment.parquet, sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{FILE_NAMES['experiments']}"))


def read_table(results_dir: str | os.PathLike, table: str, names: list[str] | None = None) -> pa.Table:
    """One table across the named experiments (all when names is None), read with its explicit schema."""
    if table not in TABLES:
        raise QueryError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    known = list_experiments(results_dir)
    for name in names or []:
        if name not in known:
            raise ExperimentNotFound(
                f"experiment '{name}' not found in {results_dir}; known: {', '.join(known) or 'none'}"
            )
    chosen = known if names is None else dict.fromkeys(names)
    files = [Path(results_dir) / name / FILE_NAMES[table] for name in chosen]
    files = [str(f) for f in files if f.is_file()]  # a search that just started has no trials yet
    return ds.dataset(files, schema=SCHEMAS[table], format="parquet").to_table()


def _sort_keys(sort: str, columns: list[str]) -> list[tuple[str, str]]:
    keys = []
    for key in sort.split(","):
        key = key.strip()
        name = key.removeprefix("-")
        if not name:
            raise QueryError(f"--sort takes COL or -COL, comma-separated, got {sort!r}")
        if name not in columns:
            raise unknown_column(name, columns, "--sort")
        keys.append((name, "descending" if key.startswith("-") else "ascending"))
    return keys


def query(
    table: pa.Table,
    where: str | None = None,
    sort: str | None = None,
    top: int | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Filter, sort ("COL" ascending, "-COL" descending, "a,-b" for several), keep the top rows, pick columns.

    Nulls and NaNs sort last either way, so a trial that never reported never outranks one that did.
    """
    if top is not None and top < 1:
        raise QueryError(f"--top must be >= 1, got {top}")
    for name in columns or []:
        if name not in table.column_names:
            raise unknown_column(name, table.column_names, "--columns")
    if where is not None:
        table = table.filter(compile_where(where, table.schema))
    if sort:
        table = table.take(pc.sort_indices(table, sort_keys=_sort_keys(sort, table.column_names)))
    if top is not None:
        table = table.slice(0, top)
    return table.select(columns) if columns else table
