"""The --where language: every operator, precedence, nulls, and errors that say where and what."""

from __future__ import annotations

import pyarrow as pa
import pytest

from search import results
from search.errors import QueryError
from search.query import compile_where

from .test_results import build_results


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = build_results(tmp_path_factory.mktemp("q"))
    return {name: results.read_table(root, name) for name in results.TABLES}


def ids(tables, where: str, table: str = "trials", key: str = "trial_id") -> list[str]:
    return sorted(results.query(tables[table], where=where)[key].to_pylist())


@pytest.mark.parametrize(
    "where, expected",
    [
        ("hidden_units == 200", ["mlp_1"]),
        ("status != 'completed'", ["cnn_2", "cnn_3", "mlp_3", "mlp_4", "mlp_5"]),
        ("lr < 0.01", ["cnn_2", "mlp_3"]),
        ("lr <= 0.01", ["cnn_2", "mlp_2", "mlp_3"]),
        ("best_val_acc > 0.98", ["cnn_1"]),
        ("best_val_acc >= 0.977", ["cnn_1", "mlp_1"]),
        ("status in ('diverged', 'error')", ["mlp_4", "mlp_5"]),
        ("hidden_units not in (50, 64, 96, 100, 120, 128)", ["mlp_1", "mlp_4"]),
        ("model == 'cnn' and lr > 0.01", ["cnn_1", "cnn_3"]),
        ("hidden_units == 50 or hidden_units == 64", ["cnn_2", "mlp_3"]),
        ("not model == 'mlp'", ["cnn_1", "cnn_2", "cnn_3"]),
        ("(status == 'completed' or status == 'running') and model == \"cnn\"", ["cnn_1", "cnn_3"]),
        ("error == null", ["cnn_1", "cnn_2", "cnn_3", "mlp_1", "mlp_2", "mlp_3", "mlp_4"]),
        ("asha_rung != null", ["cnn_2", "mlp_3"]),
        ("lr < 1e-2 and lr > 5E-3", ["mlp_3"]),
        ("lr > -1 and momentum >= .99", ["mlp_4"]),
        ("hidden_units == 200.0", ["mlp_1"]),
        ("status == 'stopped_early' AND NOT asha_rung > 1", ["mlp_3"]),
    ],
)
def test_operators(tables, where, expected):
    assert ids(tables, where) == expected


def test_not_binds_tighter_than_and_which_binds_tighter_than_or(tables):
    assert ids(tables, "not model == 'mlp' and lr < 0.01") == ["cnn_2"]  # (not mlp) and lr < 0.01
    # or binds last: mlp_1 comes from the left side alone
    assert ids(tables, "hidden_units == 200 or model == 'cnn' and lr < 0.01") == ["cnn_2", "mlp_1"]
    assert ids(tables, "(hidden_units == 200 or model == 'cnn') and lr < 0.01") == ["cnn_2"]
    assert ids(tables, "not not model == 'cnn'") == ["cnn_1", "cnn_2", "cnn_3"]


def test_nulls_behave_as_in_sql(tables):
    assert ids(tables, "best_val_acc < 0.5") == ["mlp_4"]  # mlp_5 has no best_val_acc: not less than anything
    assert ids(tables, "not best_val_acc < 0.5") == ["cnn_1", "cnn_2", "cnn_3", "mlp_1", "mlp_2", "mlp_3"]
    assert ids(tables, "asha_rung not in (1)") == ["cnn_2"]
    assert ids(tables, "not asha_rung in (1)") == ["cnn_2"]
    assert ids(tables, "asha_rung in (3, null)") == ["cnn_1", "cnn_2", "cnn_3", "mlp_1", "mlp_2", "mlp_4", "mlp_5"]
    assert ids(tables, "asha_rung not in (3, null)") == ["mlp_3"]


def test_strings_with_escaped_quotes():
    table = pa.table({"s": ["it's", 'say "hi"', "plain"]})
    assert results.query(table, where=r"s == 'it\'s'")["s"].to_pylist() == ["it's"]
    assert results.query(table, where="s in ('say \"hi\"', \"it's\")")["s"].to_pylist() == ["it's", 'say "hi"']


def test_booleans_and_timestamps(tables):
    flags = pa.table({"ok": [True, False, None]})
    assert results.query(flags, where="ok == true").num_rows == 1
    assert results.query(flags, where="ok != true").num_rows == 1
    assert ids(tables, "started_at >= '2025-01-02'", "experiments", "name") == ["cnn-demo"]
    assert ids(tables, "started_at < '2025-01-01T11:00:00+01:00'", "experiments", "name") == []
    assert ids(tables, "ended_at == null", "experiments", "name") == ["cnn-demo"]


@pytest.mark.parametrize(
    "where, message",
    [
        ("bogus > 1", "unknown column 'bogus' in --where; columns: experiment, trial_id, model,"),
        ("best_val > 1", "unknown column 'best_val' in --where (did you mean 'best_val_acc'?)"),
        ("lr == 'abc'", "column 'lr' is float64, got string 'abc'"),
        ("status == 3", "column 'status' is string, got number 3"),
        ("hidden_units in (1, 'x')", "column 'hidden_units' is int32, got string 'x'"),
        ("lr == true", "column 'lr' is float64, got boolean true"),
        ("started_at > 'yesterday'", "column 'started_at' is timestamp[us, tz=UTC], got string 'yesterday'"),
        ("lr >", "bad --where at position 5: expected a value (number, quoted string, true, false or null), "
                "got end of input"),
        ("lr = 0.1", "bad --where at position 4: unexpected character '=' (compare with ==)"),
        ("lr 0.1", "bad --where at position 4: expected an operator (==, !=, <, <=, >, >=, in, not in), got '0.1'"),
        ("(lr > 0.1", "bad --where at position 10: expected ')', got end of input"),
        ("lr > 0.1)", "bad --where at position 9: expected 'and', 'or' or end of input, got ')'"),
        ("lr > 0.1 and", "bad --where at position 13: expected a column name, 'not' or '('"),
        ("status == 'done", "bad --where at position 11: unterminated string 'done"),
        ("status in 'a'", "bad --where at position 11: expected '(' to start the list of values, got \"'a'\""),
        ("status in ('a' 'b')", "bad --where at position 16: expected ',' or ')', got \"'b'\""),
        ("status not 'a'", "bad --where at position 12: expected 'in', got \"'a'\""),
        ("lr < null", "null can only be compared with == or !=, got 'lr < null'"),
        ("  ", "--where is empty"),
    ],
)
def test_bad_queries(tables, where, message):
    table = "experiments" if "started_at" in where else "trials"
    with pytest.raises(QueryError) as e:
        compile_where(where, tables[table].schema)
    assert str(e.value).startswith(message)
