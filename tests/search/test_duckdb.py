"""The Parquet layout is the public interface: DuckDB must read all experiments at once and agree with read_table."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from search import results

from .test_results import build_results

duckdb = pytest.importorskip("duckdb")


@pytest.fixture
def root(tmp_path):
    return build_results(tmp_path)


def sql(query: str) -> list[tuple]:
    return duckdb.connect().execute(query).fetchall()


def test_duckdb_reads_trials_of_all_experiments(root):
    glob = f"{root}/*/trials.parquet"
    trials = results.read_table(root, "trials")
    assert sql(f"select count(*) from read_parquet('{glob}')")[0][0] == trials.num_rows
    by_sql = dict(sql(f"select experiment, max(best_val_acc) from read_parquet('{glob}') group by 1"))
    by_arrow = trials.group_by("experiment").aggregate([("best_val_acc", "max")]).to_pylist()
    assert by_sql == {r["experiment"]: r["best_val_acc_max"] for r in by_arrow} == {"mlp-demo": 0.977, "cnn-demo": 0.991}


def test_duckdb_sees_the_same_types(root):
    described = {r[0]: r[1] for r in sql(f"describe select * from read_parquet('{root}/*/experiment.parquet')")}
    assert described["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert (described["trials"], described["seed"], described["best_lr"]) == ("INTEGER", "BIGINT", "DOUBLE")


def test_duckdb_joins_trials_with_experiments(root):
    rows = sql(
        f"""
        select e.name, e.model, e.status, count(*) as n, max(t.best_val_acc) as best
        from read_parquet('{root}/*/trials.parquet') t
        join read_parquet('{root}/*/experiment.parquet') e on t.experiment = e.name
        where t.status != 'error'
        group by all order by best desc
        """
    )
    assert rows == [("cnn-demo", "cnn", "running", 3, 0.991), ("mlp-demo", "mlp", "finished", 4, 0.977)]
    trials = results.read_table(root, "trials")
    assert pc.sum(pc.not_equal(trials["status"], "error")).as_py() == 7


def test_duckdb_epochs_agree_with_read_table(root):
    by_sql = sql(
        f"select trial_id, count(*), max(val_acc) from read_parquet('{root}/*/epochs.parquet') "
        "where not isnan(val_acc) group by 1 order by 1"
    )
    epochs = results.query(results.read_table(root, "epochs"), where="val_acc > -1")
    arrow = epochs.group_by("trial_id").aggregate([("epoch", "count"), ("val_acc", "max")]).sort_by("trial_id")
    assert by_sql == [tuple(r.values()) for r in arrow.to_pylist()]
