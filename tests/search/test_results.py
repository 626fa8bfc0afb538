"""Parquet tables: exact schemas, atomic writes (even under SIGKILL), reads across experiments, the results CLI."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search import results
from search.errors import ExperimentNotFound, QueryError
from search.results_cli import register

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=timezone.utc)


def _experiment(name: str, model: str, status: str, started_at: datetime, **outcome) -> dict:
    return {
        "name": name, "model": model, "status": status, "started_at": started_at,
        "ended_at": started_at + timedelta(seconds=300) if status == "finished" else None, "wall_s": 300.0,
        "num_samples": 5, "max_epochs": 5, "grace_period": 1, "reduction_factor": 3.0, "scheduler": "asha",
        "search_alg": "hyperopt", "batch_size": 32, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0,
        "max_failures": 1, "seed": 0, "n_initial_points": 3, "results_dir": "results",
        "hidden_units_min": 50, "hidden_units_max": 200, "hidden_units_step": 10,
        "lr_min": math.exp(-5), "lr_max": math.exp(-1), "momentum_min": 0.0, "momentum_max": 1.0,
        "python_version": "3.11.7", "torch_version": "2.5.1", "ray_version": "2.50.0", "hyperopt_version": "0.2.7",
        **outcome,
    }


def _trial(experiment, trial_id, model, hidden_units, lr, momentum, status, curve, **extra) -> dict:
    finite = [v for v in curve if not math.isnan(v)]
    best = max(finite) if finite else None
    return {
        "experiment": experiment, "trial_id": trial_id, "model": model, "hidden_units": hidden_units, "lr": lr,
        "momentum": momentum, "batch_size": 32, "status": status, "epochs_run": len(curve), "best_val_acc": best,
        "best_epoch": curve.index(best) + 1 if best is not None else None,
        "last_val_acc": curve[-1] if curve else None, "train_s": 10.0 * len(curve), "node": "10.0.0.1",
        "node_id": "a" * 56, "cpus": 1.0, "gpus": 0.0, "checkpoint_path": f"/ckpt/{trial_id}", **extra,
    }


# (trial_id, hidden_units, lr, momentum, status, val_acc per epoch, extra trial columns)
MLP_TRIALS = [
    ("mlp_1", 200, 0.15, 0.67, "completed", [0.95, 0.965, 0.97, 0.975, 0.977], {}),
    ("mlp_2", 100, 0.01, 0.5, "completed", [0.90, 0.93, 0.94, 0.945, 0.95], {}),
    ("mlp_3", 50, 0.007, 0.1, "stopped_early", [0.85],
     {"asha_rung": 1, "asha_cutoff": 0.90, "asha_value": 0.85}),
    ("mlp_4", 150, 0.35, 0.99, "diverged", [0.098, math.nan], {}),
    ("mlp_5", 120, 0.02, 0.3, "error", [], {"error": "RuntimeError: worker died\nTraceback (most recent call last)"}),
]
CNN_TRIALS = [
    ("cnn_1", 128, 0.1, 0.5, "completed", [0.98, 0.985, 0.988, 0.99, 0.991], {}),
    ("cnn_2", 64, 0.001, 0.2, "stopped_early", [0.90, 0.93, 0.94],
     {"asha_rung": 3, "asha_cutoff": 0.97, "asha_value": 0.94}),
    ("cnn_3", 96, 0.05, 0.8, "running", [0.97], {}),
]


def build_results(root: Path) -> Path:
    """Two experiments (mlp finished, cnn running) with every trial status the tables must carry."""
    root = Path(root) / "results"
    specs = [("mlp-demo", "mlp", "finished", T0, MLP_TRIALS), ("cnn-demo", "cnn", "running", T0 + timedelta(days=1),
                                                                 CNN_TRIALS)]
    for name, model, status, started_at, specs_ in specs:
        trials, epochs, elapsed = [], [], 0.0
        for trial_id, hu, lr, mom, trial_status, curve, extra in specs_:
            trials.append(_trial(name, trial_id, model, hu, lr, mom, trial_status, curve, **extra))
            for epoch, val_acc in enumerate(curve, start=1):
                elapsed += 7.5
                diverged = math.isnan(val_acc)
                epochs.append({
                    "experiment": name, "trial_id": trial_id, "epoch": epoch,
                    "train_loss": math.nan if diverged else 1 - val_acc, "train_acc": val_acc,
                    "val_loss": math.nan if diverged else 1.1 - val_acc, "val_acc": val_acc,
                    "epoch_s": 7.5, "elapsed_s": elapsed,
                })
        best = max((t for t in trials if t["best_val_acc"] is not None), key=lambda t: t["best_val_acc"])
        outcome = {} if status == "running" else {
            "best_trial_id": best["trial_id"], "best_hidden_units": best["hidden_units"], "best_lr": best["lr"],
            "best_momentum": best["momentum"], "best_val_acc": best["best_val_acc"], "test_acc": 0.976,
            "test_loss": 0.08, "git_commit": "baeca97",
        }
        exp_dir = root / name
        results.write_experiment(exp_dir, _experiment(name, model, status, started_at, trials=len(trials), **outcome))
        results.write_trials(exp_dir, trials)
        results.write_epochs(exp_dir, epochs)
    return root


@pytest.fixture
def results_dir(tmp_path) -> Path:
    return build_results(tmp_path)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hpsearch")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# --- schemas and writes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", results.TABLES)
def test_each_file_has_exactly_its_schema(results_dir, table):
    path = results_dir / "mlp-demo" / results.FILE_NAMES[table]
    written = pq.read_schema(path)
    expected = results.SCHEMAS[table]
    assert written.names == expected.names
    assert [f.type for f in written] == [f.type for f in expected]
    assert [f.nullable for f in written] == [f.nullable for f in expected]
    assert results.read_table(results_dir, table).schema.equals(expected)


def test_schema_spot_checks():
    e, t, ep = results.EXPERIMENT_SCHEMA, results.TRIAL_SCHEMA, results.EPOCH_SCHEMA
    assert e.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert e.field("ended_at").nullable and not e.field("results_dir").nullable
    assert e.names.index("results_dir") < e.names.index("best_trial_id") < e.names.index("git_commit")
    assert all(f.nullable for f in e if e.names.index(f.name) > e.names.index("results_dir"))
    assert (e.field("seed").type, e.field("subset").type, e.field("trials").type) == (pa.int64(), pa.int64(), pa.int32())
    assert [f.name for f in t if not f.nullable] == ["experiment", "trial_id", "model"]
    assert (t.field("asha_rung").type, t.field("asha_cutoff").type) == (pa.int32(), pa.float64())
    assert ep.names == ["experiment", "trial_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                        "epoch_s", "elapsed_s"]


def test_missing_keys_are_null(tmp_path):
    path = results.write_trials(tmp_path / "x", [{"experiment": "x", "trial_id": "t", "model": "mlp"}])
    row = pq.read_table(path).to_pylist()[0]
    assert row["trial_id"] == "t" and row["lr"] is None and row["asha_rung"] is None


@pytest.mark.parametrize(
    "row, message",
    [
        ({"experiment": "x", "trial_id": "t", "model": "mlp", "learning_rate": 0.1}, "not in the schema: learning_rate"),
        ({"experiment": "x", "trial_id": None, "model": "mlp"}, "'trial_id' must not be null"),
        ({"experiment": "x", "trial_id": "t", "model": "mlp", "status": "done"}, "status must be one of"),
    ],
)
def test_rows_that_break_the_schema_are_value_errors(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        results.write_trials(tmp_path, [row])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = results.write_trials(tmp_path, [{"experiment": "x", "trial_id": "old", "model": "mlp"}])

    def half_write(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(results.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        results.write_trials(tmp_path, [{"experiment": "x", "trial_id": "new", "model": "mlp"}])
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]
    assert pq.read_table(path)["trial_id"].to_pylist() == ["old"]


KILLED_WRITER = """
import sys
import numpy as np
from search import results
n, size = int(sys.argv[2]), 100_000  # 600 incompressible 100 kB strings: a write of about half a second
blob = np.random.default_rng(0).integers(0, 2**63, n * size // 16).astype(np.uint64).tobytes().hex()
rows = [{"experiment": "x", "trial_id": str(i), "model": "mlp", "error": blob[i * size:(i + 1) * size]} for i in range(n)]
print("writing", flush=True)
results.write_trials(sys.argv[1], rows)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_writer_killed_mid_write_leaves_old_file_readable(tmp_path):
    exp_dir = tmp_path / "results" / "x"
    results.write_experiment(exp_dir, _experiment("x", "mlp", "running", T0))
    results.write_trials(exp_dir, [{"experiment": "x", "trial_id": "old", "model": "mlp", "status": "completed"}])
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(exp_dir), "600"],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as child:
        try:
            assert child.stdout.readline() == b"writing\n"
            deadline = time.monotonic() + 60
            while not any(exp_dir.glob(".trials.parquet.tmp*")):  # the temp file exists only while writing
                assert child.poll() is None and time.monotonic() < deadline, "child finished before it was killed"
                time.sleep(0.005)
            time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    leftovers = list(exp_dir.glob(".trials.parquet.tmp*"))
    assert leftovers, "the kill must land while the temp file is open"
    assert not any(p.suffix == ".parquet" for p in leftovers)
    assert sorted(p.name for p in exp_dir.glob("*.parquet")) == ["experiment.parquet", "trials.parquet"]
    assert results.read_table(tmp_path / "results", "trials")["trial_id"].to_pylist() == ["old"]


# --- reads ----------------------------------------------------------------------------------------------------------


def test_list_experiments(results_dir, tmp_path):
    (results_dir / "not-an-experiment").mkdir()
    assert results.list_experiments(results_dir) == ["cnn-demo", "mlp-demo"]
    assert results.list_experiments(tmp_path / "nowhere") == []


def test_read_across_two_experiments(results_dir):
    trials = results.read_table(results_dir, "trials")
    assert trials.num_rows == len(MLP_TRIALS) + len(CNN_TRIALS)
    assert set(trials["experiment"].to_pylist()) == {"mlp-demo", "cnn-demo"}
    epochs = results.read_table(results_dir, "epochs")
    assert epochs.num_rows == sum(len(t[5]) for t in MLP_TRIALS + CNN_TRIALS)
    experiments = results.read_table(results_dir, "experiments")
    assert sorted(experiments["name"].to_pylist()) == ["cnn-demo", "mlp-demo"]
    assert experiments["started_at"].to_pylist()[0].tzinfo is not None


def test_read_named_experiments(results_dir):
    trials = results.read_table(results_dir, "trials", ["cnn-demo"])
    assert sorted(trials["trial_id"].to_pylist()) == ["cnn_1", "cnn_2", "cnn_3"]
    assert results.read_table(results_dir, "trials", ["cnn-demo", "cnn-demo"]).num_rows == 3


def test_experiment_without_trials_yet_reads_empty(tmp_path):
    results.write_experiment(tmp_path / "new", _experiment("new", "mlp", "running", T0))
    trials = results.read_table(tmp_path, "trials", ["new"])
    assert trials.num_rows == 0 and trials.schema.equals(results.TRIAL_SCHEMA)


def test_unknown_experiment(results_dir):
    with pytest.raises(ExperimentNotFound) as e:
        results.read_table(results_dir, "trials", ["mlp-demo", "nope"])
    assert str(e.value) == f"experiment 'nope' not found in {results_dir}; known: cnn-demo, mlp-demo"
    assert e.value.exit_code == 4


def test_unknown_table(results_dir):
    with pytest.raises(QueryError, match="table must be one of experiments, trials, epochs, got 'runs'"):
        results.read_table(results_dir, "runs")


# --- query ----------------------------------------------------------------------------------------------------------


def test_query_sorts_with_nulls_and_nans_last(results_dir):
    trials = results.read_table(results_dir, "trials")
    desc = results.query(trials, sort="-best_val_acc", columns=["trial_id"])["trial_id"].to_pylist()
    assert desc[:2] == ["cnn_1", "mlp_1"] and desc[-1] == "mlp_5"
    asc = results.query(trials, sort="best_val_acc")["trial_id"].to_pylist()
    assert asc[0] == "mlp_4" and asc[-1] == "mlp_5"
    last = results.query(trials, where="epochs_run > 0", sort="last_val_acc")["trial_id"].to_pylist()
    assert last[-1] == "mlp_4"  # its last val_acc is NaN


def test_query_multi_key_sort_top_and_columns(results_dir):
    trials = results.read_table(results_dir, "trials")
    out = results.query(trials, sort="model,-hidden_units", top=3, columns=["hidden_units", "trial_id"])
    assert out.column_names == ["hidden_units", "trial_id"]
    assert out["trial_id"].to_pylist() == ["cnn_1", "cnn_3", "cnn_2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top": 0}, "--top must be >= 1, got 0"),
        ({"columns": ["trial_id", "acc"]}, "unknown column 'acc' in --columns; columns: experiment, trial_id"),
        ({"sort": "-val_acc"}, "unknown column 'val_acc' in --sort"),
        ({"sort": "-"}, "--sort takes COL or -COL"),
    ],
)
def test_query_errors(results_dir, kwargs, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(")):
        results.query(results.read_table(results_dir, "trials"), **kwargs)


# --- the results CLI ------------------------------------------------------------------------------------------------


def test_cli_lists_experiments_by_start(results_dir, capsys):
    assert run_cli(["results", "--results-dir", str(results_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "model", "status", "trials", "best_val_acc", "test_acc", "wall_s"]
    assert [line.split()[0] for line in lines[2:]] == ["mlp-demo", "cnn-demo"]
    assert lines[2].split() == ["mlp-demo", "mlp", "finished", "5", "0.977", "0.976", "300"]
    assert lines[3].split()[-3:] == ["null", "null", "300"]


def test_cli_named_experiment_shows_best_trials(results_dir, capsys):
    assert run_cli(["results", "mlp-demo", "--results-dir", str(results_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["trial_id", "experiment", "hidden_units", "lr", "momentum", "status", "epochs_run",
                                "best_val_acc"]
    assert [line.split()[0] for line in lines[2:]] == ["mlp_1", "mlp_2", "mlp_3", "mlp_4", "mlp_5"]


def test_cli_all_top_cuts_and_says_so(results_dir, capsys):
    assert run_cli(["results", "--all", "--top", "2", "--results-dir", str(results_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["cnn_1", "mlp_1"]
    assert lines[-1] == "(2 of 8 rows; --top N shows more)"


def test_cli_sort_descending_and_several_keys(results_dir, capsys):
    run_cli(["results", "--all", "--sort=-lr", "--columns", "trial_id", "--top", "2", "--format", "csv",
             "--results-dir", str(results_dir)])
    assert capsys.readouterr().out.split() == ['"trial_id"', '"mlp_4"', '"mlp_1"']
    run_cli(["results", "--all", "--sort=model,-hidden_units", "--columns", "trial_id", "--top", "2", "--format",
             "csv", "--results-dir", str(results_dir)])
    assert capsys.readouterr().out.split() == ['"trial_id"', '"cnn_1"', '"cnn_3"']


def test_cli_table_cells_are_one_short_line(results_dir, capsys):
    run_cli(["results", "mlp-demo", "--where", "status == 'error'", "--columns", "trial_id,error",
             "--results-dir", str(results_dir)])
    assert capsys.readouterr().out.splitlines()[2] == "mlp_5     RuntimeError: worker died…"


def test_cli_csv_parses(results_dir, capsys):
    run_cli(["results", "--all", "--table", "trials", "--sort", "trial_id", "--format", "csv",
             "--results-dir", str(results_dir)])  # no --top: CSV and JSON get every row
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["trial_id"] for r in rows] == sorted(t[0] for t in MLP_TRIALS + CNN_TRIALS)
    assert list(rows[0]) == ["trial_id", "experiment", "hidden_units", "lr", "momentum", "status", "epochs_run",
                             "best_val_acc"]
    assert float(rows[0]["best_val_acc"]) == 0.991


def test_cli_json_parses_with_nan_as_null_and_iso_times(results_dir, capsys):
    run_cli(["results", "--table", "epochs", "--where", "trial_id == 'mlp_4'", "--format", "json",
             "--results-dir", str(results_dir)])
    records = json.loads(capsys.readouterr().out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["val_loss"] is None and records[0]["val_acc"] == 0.098
    run_cli(["results", "--table", "experiments", "--columns", "name,started_at,ended_at", "--format", "json",
             "--results-dir", str(results_dir)])
    first = json.loads(capsys.readouterr().out)[0]
    assert first == {"name": "mlp-demo", "started_at": "2025-01-01T10:00:00+00:00",
                     "ended_at": "2025-01-01T10:05:00+00:00"}


def test_cli_empty_results_dir(tmp_path, capsys):
    for argv in (["results"], ["results", "--all"], ["results", "--table", "epochs"]):
        assert run_cli(argv + ["--results-dir", str(tmp_path)]) == 0
        assert capsys.readouterr().out == f"no experiments in {tmp_path}\n"


def test_cli_where_with_no_match_prints_header(results_dir, capsys):
    run_cli(["results", "--all", "--where", "lr > 10", "--results-dir", str(results_dir)])
    assert capsys.readouterr().out.splitlines()[-1] == "(no rows)"
    run_cli(["results", "--all", "--where", "lr > 10", "--format", "json", "--results-dir", str(results_dir)])
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (["results", "nope"], ExperimentNotFound, "experiment 'nope' not found in"),
        (["results", "mlp-demo", "--all"], QueryError, "give experiment NAMEs or --all, not both"),
        (["results", "--all", "--where", "lr >"], QueryError, "expected a value"),
        (["results", "--all", "--columns", "trial_id,bogus"], QueryError, "unknown column 'bogus' in --columns"),
        (["results", "--all", "--top", "0"], QueryError, "--top must be >= 1, got 0"),
    ],
)
def test_cli_user_errors_raise_project_errors(results_dir, argv, error, message):
    with pytest.raises(error, match=message):
        run_cli(argv + ["--results-dir", str(results_dir)])


# --- through the lead's search.cli.main: one stderr line and the error's exit code, no traceback ----------------------


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["results", "nope"], 4, "hpsearch: error: experiment 'nope' not found in {d}; known: cnn-demo, mlp-demo"),
        (["results", "--all", "--where", "lr == 'abc'"], 2, "hpsearch: error: column 'lr' is float64, got string 'abc'"),
        (["results", "--all", "--where", "bogus > 1"], 2, "hpsearch: error: unknown column 'bogus' in --where"),
        (["report", "nope"], 4, "hpsearch: error: experiment 'nope' not found in {d}"),
    ],
)
def test_main_turns_user_errors_into_one_line(results_dir, capsys, argv, code, message):
    from search.cli import main

    assert main(argv + ["--results-dir", str(results_dir)]) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(message.format(d=results_dir))


def test_main_results_prints_listing(results_dir, capsys):
    from search.cli import main

    assert main(["results", "--results-dir", str(results_dir)]) == 0
    assert "mlp-demo" in capsys.readouterr().out
