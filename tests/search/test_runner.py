"""Real tiny searches on a real local Ray: best checkpoint + test accuracy, reproducibility, ASHA, divergence, GPUs."""

from dataclasses import replace
from pathlib import Path

import pytest
import ray
from ray import tune

from search import results, runner
from search.cli import main
from search.errors import ClusterError, ExperimentExists, SpecError
from search.spec import build_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module: the runner joins it instead of starting its own (ray.init costs ~5 s)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def tiny(tmp_path: Path, name: str, **options):
    base = {"name": name, "results_dir": str(tmp_path), "subset": 600, "max_epochs": 2, "num_samples": 3}
    return build_spec({**base, **options})


def trials_of(spec) -> list[dict]:
    return results.read_table(spec.results_dir, "trials", [spec.name]).to_pylist()


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_tiny_search_gives_a_best_checkpoint_and_a_test_accuracy(tmp_path, model):
    spec = tiny(tmp_path, f"tiny-{model}", model=model, num_samples=2 if model == "cnn" else 3)
    summary = runner.run(spec, verbose=0)
    assert summary.status == "finished"
    assert 0.1 < summary.test_acc <= 1.0
    best_dir = spec.experiment_dir / "best"
    assert (best_dir / "model.pt").exists() and (best_dir / "metrics.json").exists()
    assert runner.evaluate(spec.name, spec.results_dir) == pytest.approx((summary.test_loss, summary.test_acc))
    experiment = results.read_table(spec.results_dir, "experiments", [spec.name]).to_pylist()[0]
    assert experiment["status"] == "finished" and experiment["test_acc"] == summary.test_acc
    assert experiment["trials"] == spec.num_samples and experiment["model"] == model


def test_tables_agree_with_rays_result_grid(tmp_path):
    spec = tiny(tmp_path, "agree", num_samples=4)
    summary = runner.run(spec, verbose=0)
    grid = tune.Tuner.restore(runner.ray_experiment_path(spec), trainable=runner.trainable).get_results()
    trials = trials_of(spec)
    assert len(trials) == len(grid) == spec.num_samples
    grid_best = max(r.metrics_dataframe["val_acc"].max() for r in grid)
    assert max(t["best_val_acc"] for t in trials) == pytest.approx(grid_best)
    assert summary.best["best_val_acc"] == pytest.approx(grid_best)
    epochs = results.read_table(spec.results_dir, "epochs", [spec.name])
    assert epochs.num_rows == sum(len(r.metrics_dataframe) for r in grid)


def test_hyperopt_search_is_reproducible_with_the_same_seed(tmp_path):
    def configs(name):
        spec = tiny(tmp_path, name, num_samples=3, max_epochs=1, seed=7, max_concurrent=1)
        runner.run(spec, verbose=0)
        return sorted((t["hidden_units"], t["lr"], t["momentum"]) for t in trials_of(spec))

    first, again = configs("seed-a"), configs("seed-b")
    assert first == again
    other = tiny(tmp_path, "seed-c", num_samples=3, max_epochs=1, seed=8, max_concurrent=1)
    runner.run(other, verbose=0)
    assert sorted((t["hidden_units"], t["lr"], t["momentum"]) for t in trials_of(other)) != first


def test_asha_stops_weak_trials_at_a_rung(tmp_path):
    spec = tiny(tmp_path, "asha", num_samples=8, max_epochs=4, grace_period=1, reduction_factor=2, subset=400, seed=3)
    runner.run(spec, verbose=0)
    trials = trials_of(spec)
    stopped = [t for t in trials if t["status"] == "stopped_early"]
    assert stopped, [t["status"] for t in trials]
    for t in stopped:
        assert t["epochs_run"] < spec.max_epochs
        assert t["asha_rung"] == t["epochs_run"]
        assert t["asha_value"] < t["asha_cutoff"]
    assert any(t["epochs_run"] == spec.max_epochs for t in trials)


def test_a_diverging_lr_is_recorded_and_the_search_goes_on(tmp_path):
    # lr >= 1e10 overflows the weights to inf/NaN within an epoch; the seed's point (lr 0.1) trains normally.
    spec = tiny(tmp_path, "diverge", num_samples=4, lr_min=0.01, lr_max=1e20, search_alg="random", seed=1,
                scheduler="fifo", seed_point=True)
    summary = runner.run(spec, verbose=0)
    trials = trials_of(spec)
    diverged = [t for t in trials if t["status"] == "diverged"]
    assert diverged, [(t["lr"], t["status"]) for t in trials]
    assert all(t["lr"] >= 1e6 and t["epochs_run"] == 1 for t in diverged)
    seed = next(t for t in trials if t["lr"] == pytest.approx(0.1))
    assert seed["status"] == "completed" and seed["epochs_run"] == spec.max_epochs
    assert summary.best["trial_id"] == seed["trial_id"] and summary.test_acc > 0.5


def test_asking_for_a_gpu_without_one_fails_fast(tmp_path, capsys):
    spec = tiny(tmp_path, "gpu", gpus_per_trial=0.5)
    with pytest.raises(ClusterError, match=r"gpus_per_trial=0.5 needs a GPU, but the Ray cluster has none"):
        runner.run(spec, verbose=0)
    code = main(["run", "--gpus-per-trial", "0.25", "--results-dir", str(tmp_path), "--name", "gpu-cli", "--verbose", "0"])
    assert code == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a GPU" in err


def test_an_existing_experiment_is_never_overwritten(tmp_path):
    spec = tiny(tmp_path, "once", num_samples=1, max_epochs=1)
    runner.run(spec, verbose=0)
    before = (spec.experiment_dir / "trials.parquet").read_bytes()
    with pytest.raises(ExperimentExists, match="hpsearch resume once"):
        runner.run(spec, verbose=0)
    assert (spec.experiment_dir / "trials.parquet").read_bytes() == before
    with pytest.raises(SpecError, match=r"these options differ: max_epochs \(saved 1, got 2\)"):
        runner.run(replace(spec, max_epochs=2), verbose=0, resume_existing=True)
    assert (spec.experiment_dir / "trials.parquet").read_bytes() == before


def test_run_resume_starts_a_new_experiment_and_continues_an_existing_one(tmp_path):
    """`run --resume` starts the experiment when it is new and continues it, rerunning nothing, when it exists."""
    argv = ["run", "--subset", "600", "--max-epochs", "1", "--num-samples", "2", "--name", "again",
            "--results-dir", str(tmp_path), "--verbose", "0", "--resume"]
    assert main(argv) == 0
    spec = runner.open_spec("again", str(tmp_path))
    first = {t["trial_id"]: t for t in trials_of(spec)}
    assert len(first) == 2
    assert main(argv) == 0
    again = {t["trial_id"]: t for t in trials_of(spec)}
    assert again == first
