"""hpsearch report: three PNGs from the tables alone, and one clear line when matplotlib is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from search.errors import ExperimentNotFound
from search.report import PLOTS, write_report
from search.results_cli import MATPLOTLIB_MISSING

from .test_results import build_results, run_cli

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["mlp-demo", "cnn-demo"])
def test_report_writes_three_pngs(tmp_path, capsys, name):
    root = build_results(tmp_path)
    assert run_cli(["report", name, "--results-dir", str(root)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(root / name / p) for p in PLOTS]
    for path in printed:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_report_of_a_search_without_trials_yet(tmp_path):
    root = build_results(tmp_path)
    (root / "cnn-demo" / "trials.parquet").unlink()
    (root / "cnn-demo" / "epochs.parquet").unlink()
    assert all(p.stat().st_size > 0 for p in write_report(root, "cnn-demo"))


def test_report_unknown_experiment(tmp_path):
    with pytest.raises(ExperimentNotFound, match="experiment 'nope' not found"):
        run_cli(["report", "nope", "--results-dir", str(build_results(tmp_path))])


def test_report_without_matplotlib(tmp_path, capsys, monkeypatch):
    root = build_results(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert run_cli(["report", "mlp-demo", "--results-dir", str(root)]) == 2
    assert capsys.readouterr().err == MATPLOTLIB_MISSING + "\n"
    assert not list((root / "mlp-demo").glob("*.png"))
