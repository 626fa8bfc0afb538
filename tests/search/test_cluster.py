"""Scale-out on a real two-node local Ray cluster (ray.cluster_utils.Cluster, 1 CPU per node)."""

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import ray
from ray.cluster_utils import Cluster

from search import results, runner
from search.spec import build_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    yield c, worker
    ray.shutdown()
    c.shutdown()


def spec_for(tmp_path, name, **options):
    base = {"name": name, "results_dir": str(tmp_path), "subset": 2000, "max_epochs": 2, "num_samples": 4}
    return build_spec({**base, **options})


def trials_of(spec):
    return results.read_table(spec.results_dir, "trials", [spec.name]).to_pylist()


def test_trials_land_on_both_nodes(cluster, tmp_path):
    c, worker = cluster
    spec = spec_for(tmp_path, "spread", scheduler="fifo")
    summary = runner.run(spec, verbose=0)
    assert summary.status == "finished"
    nodes = {t["node_id"] for t in trials_of(spec)}
    assert nodes == {c.head_node.node_id, worker.node_id}
    assert all(t["node"] for t in trials_of(spec))


def test_a_lost_node_retries_its_trial_from_its_checkpoint(cluster, tmp_path):
    c, _ = cluster
    doomed = c.add_node(num_cpus=1, resources={"doomed": 1})
    c.wait_for_nodes()
    spec = spec_for(tmp_path, "lost", subset=24000, max_epochs=6, num_samples=3, scheduler="fifo", max_failures=2)
    log = spec.experiment_dir / "epochs.jsonl"
    removed: dict = {}

    def remove_when_a_trial_on_it_has_trained():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed:
            for row in map(json.loads, log.read_text().splitlines() if log.exists() else []):
                if row["epoch"] >= 2 and _trial_node(spec, row["trial_id"]) == doomed.node_id:
                    removed["trial_id"], removed["epoch"] = row["trial_id"], row["epoch"]
                    c.remove_node(doomed)
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=remove_when_a_trial_on_it_has_trained)
    watcher.start()
    summary = runner.run(spec, verbose=0)
    watcher.join()
    assert removed, "no trial ran on the node to remove"
    trial = next(t for t in trials_of(spec) if t["trial_id"] == removed["trial_id"])
    assert trial["status"] == "completed" and trial["epochs_run"] == spec.max_epochs
    assert trial["node_id"] != doomed.node_id  # it finished elsewhere
    reports = Counter(json.loads(line)["epoch"] for line in log.read_text().splitlines()
                      if json.loads(line)["trial_id"] == removed["trial_id"])
    assert sorted(reports) == list(range(1, spec.max_epochs + 1))  # none missing
    assert sum(n - 1 for n in reports.values()) <= 1  # none trained twice but the one in flight
    epochs = results.read_table(spec.results_dir, "epochs", [spec.name]).to_pylist()
    assert sorted(e["epoch"] for e in epochs if e["trial_id"] == removed["trial_id"]) == list(range(1, 7))
    assert summary.status == "finished"


def _trial_node(spec, trial_id):
    """The node a trial's latest result came from, per Tune's own result.json."""
    for path in spec.experiment_dir.glob(f"*_{trial_id}_*/result.json"):
        lines = path.read_text().splitlines()
        if lines:
            return json.loads(lines[-1]).get("node_id")
    return None


def test_gpu_trials_go_to_the_gpu_node_and_cpu_trials_are_not_blocked(cluster, tmp_path):
    c, _ = cluster
    gpu_node = c.add_node(num_cpus=1, num_gpus=1)  # a logical GPU: this machine has no CUDA
    c.wait_for_nodes()
    gpu = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", "--address", c.address, "--gpus-per-trial", "0.5",
         "--num-samples", "2", "--max-epochs", "1", "--subset", "600", "--max-failures", "0",
         "--name", "gpu", "--results-dir", str(tmp_path), "--verbose", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    cpu = spec_for(tmp_path, "cpu", scheduler="fifo")
    summary = runner.run(cpu, verbose=0)
    out, _ = gpu.communicate(timeout=300)  # ends: no trial is left pending
    assert summary.status == "finished" and all(t["status"] == "completed" for t in trials_of(cpu))
    gpu_trials = results.read_table(str(tmp_path), "trials", ["gpu"]).to_pylist()
    assert len(gpu_trials) == 2, out
    for t in gpu_trials:
        assert t["status"] == "error" and t["gpus"] == 0.5
        assert f"GPU share on node {gpu_node.node_id}" in t["error"] and "CUDA is not usable" in t["error"]
    assert gpu.returncode != 0
    c.remove_node(gpu_node)

