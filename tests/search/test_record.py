"""The bookkeeping that needs no Ray: the epoch log, trial statuses and which checkpoints may go."""

import json
import pickle
from types import SimpleNamespace

from search.record import EPOCH_LOG, _checkpoints_named_in, prune_checkpoints, read_epoch_log, trial_status
from trainables.config import CHECKPOINT_METRICS


def epoch(n, loss=0.5):
    return {"trial_id": "t1", "epoch": n, "train_loss": loss, "val_loss": loss, "val_acc": 0.9}


def test_epoch_log_keeps_the_last_report_and_skips_a_torn_line(tmp_path):
    lines = [json.dumps(epoch(1)), json.dumps({**epoch(2), "val_acc": 0.1}), json.dumps(epoch(2)), '{"trial_id": "t1", "ep']
    (tmp_path / EPOCH_LOG).write_text("\n".join(lines))
    rows = read_epoch_log(tmp_path)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 0.9), (2, 0.9)]


def test_trial_status():
    done = SimpleNamespace(status="TERMINATED", trial_id="a")
    assert trial_status(done, [epoch(1), epoch(2)], 2, {}) == "completed"
    assert trial_status(done, [epoch(1)], 2, {"a": {}}) == "stopped_early"
    assert trial_status(done, [epoch(1, float("nan"))], 2, {}) == "diverged"
    assert trial_status(done, [epoch(1)], 2, {}, interrupted=True) == "pending"
    assert trial_status(SimpleNamespace(status="ERROR", trial_id="a"), [], 2, {}) == "error"
    assert trial_status(SimpleNamespace(status="RUNNING", trial_id="a"), [], 2, {}) == "running"


def test_checkpoint_names_are_found_inside_pickled_hex_without_unpickling():
    blob = pickle.dumps({"path": "/x/exp/trainable_ab_1_lr=0.1/checkpoint_000003"}).hex()
    snapshot = json.dumps({"trial_data": [[json.dumps({"checkpoint_manager": {"value": blob}})]]})
    assert _checkpoints_named_in(snapshot) == {"trainable_ab_1_lr=0.1/checkpoint_000003"}


def test_prune_keeps_best_newest_and_the_snapshots_latest(tmp_path):
    trial_dir = tmp_path / "trainable_ab_1"
    for i, acc in enumerate([0.5, 0.9, 0.6, 0.7, 0.8]):
        d = trial_dir / f"checkpoint_{i:06d}"
        d.mkdir(parents=True)
        (d / CHECKPOINT_METRICS).write_text(json.dumps({"epoch": i + 1, "val_acc": acc}))
    named = [f"{trial_dir}/checkpoint_00000{i}" for i in (0, 2)]  # Tune's list; its latest is 2
    blob = pickle.dumps(named).hex()
    (tmp_path / "experiment_state-2026.json").write_text(json.dumps({"trial_data": [[blob]]}))
    prune_checkpoints([SimpleNamespace(path=str(trial_dir))])
    left = sorted(p.name for p in trial_dir.iterdir())
    assert left == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000004"]  # best, snapshot's, newest


def test_prune_does_nothing_without_a_readable_snapshot(tmp_path):
    trial_dir = tmp_path / "trainable_ab_1"
    for i in range(4):
        d = trial_dir / f"checkpoint_{i:06d}"
        d.mkdir(parents=True)
        (d / CHECKPOINT_METRICS).write_text(json.dumps({"epoch": i + 1, "val_acc": 0.5}))
    (tmp_path / "experiment_state-2026.json").write_text('{"trial_data": [')  # still being copied
    prune_checkpoints([SimpleNamespace(path=str(trial_dir))])
    assert len(list(trial_dir.iterdir())) == 4
