"""The claim that matters, on the real bundled MNIST: a 20-trial MLP search reaches val_acc >= 0.975."""

import pytest

from search import runner
from search.spec import build_spec

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_mlp_search_of_20_trials_reaches_0975(tmp_path):
    spec = build_spec({"name": "mlp20", "results_dir": str(tmp_path), "num_samples": 20, "max_epochs": 10})
    summary = runner.run(spec, verbose=0)
    assert summary.status == "finished" and summary.counts.get("error", 0) == 0
    assert summary.best["best_val_acc"] >= 0.975, summary.lines()
    assert summary.test_acc >= 0.97, summary.lines()
