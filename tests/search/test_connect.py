"""Joining a cluster that is not there: one line on stderr in seconds, and no experiment left behind.

A module of its own: no Ray may be initialised in this process, or the runner would join that one.
"""

import time

import pytest
import ray

from search.cli import main


@pytest.mark.parametrize("address", ["127.0.0.1:1", "auto", "ray://127.0.0.1:1", "no-port"])
def test_an_unreachable_address_fails_in_one_line(address, tmp_path, monkeypatch, capsys):
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # what `auto` resolves to
    start = time.monotonic()
    code = main(["run", "--smoke", "--address", address, "--results-dir", str(tmp_path), "--name", "x"])
    assert code == 5 and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: ")
    assert not (tmp_path / "x").exists()
