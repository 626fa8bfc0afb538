"""The Ray Tune trainable: a thin shell around trainables.train.

Config in (the searched hyperparameters), per-epoch `tune.report` with a checkpoint out. On a retry
or a resumed search it continues from the newest checkpoint of its trial: `tune.get_checkpoint()`,
or a newer one in the trial's folder when Tune's saved state lags behind (a driver killed between
two state snapshots), so no finished epoch is trained again.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from trainables.config import CHECKPOINT_FILE, CHECKPOINT_METRICS, METRIC, REPLAYED, TrainConfig
from trainables.data import MnistSplits
from trainables.train import Trainer


def load_checkpoint_state(checkpoint: tune.Checkpoint, device: str = "cpu") -> dict:
    """The Trainer state saved in a checkpoint; weights_only so a checkpoint cannot run code."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=True)


def newest_state(trial_path: str) -> dict | None:
    """The newest readable Trainer state among the trial's checkpoint_* folders (local or remote storage)."""
    fs, root = pafs.FileSystem.from_uri(trial_path) if "://" in trial_path else (pafs.LocalFileSystem(), trial_path)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    folders = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for folder in reversed(folders):
        try:
            with fs.open_input_file(f"{folder}/{CHECKPOINT_FILE}") as f:
                return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):  # a checkpoint cut short by a crash: try the one before
            continue
    return None


def train_config(config: dict, settings: dict) -> TrainConfig:
    """One trial's TrainConfig: searched values from `config`, the fixed ones from the experiment's `settings`."""
    return TrainConfig(
        model=settings["model"],
        hidden_units=int(round(config["hidden_units"])),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        batch_size=settings["batch_size"],
        epochs=settings["max_epochs"],
        seed=settings["seed"],
        device="cuda" if settings["gpus_per_trial"] > 0 else "cpu",
        num_threads=max(1, int(settings["cpus_per_trial"])),
    )


def trainable(config: dict, data: MnistSplits, settings: dict) -> None:
    """Train one configuration, reporting every epoch's metrics with a checkpoint (model, optimizer, epoch, RNG)."""
    cfg = train_config(config, settings)
    node_id = ray.get_runtime_context().get_node_id()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        # Ray placed us on a GPU share, but this node's torch cannot use it: say where, instead of hanging.
        raise RuntimeError(
            f"trial got a GPU share on node {node_id} ({ray.util.get_node_ip_address()}), "
            f"but CUDA is not usable there (torch {torch.__version__}, cuda available: False)"
        )
    trial_path = f"{settings['experiment_path']}/{os.path.basename(tune.get_context().get_trial_dir())}"
    candidates = [newest_state(trial_path)]
    if checkpoint := tune.get_checkpoint():
        candidates.append(load_checkpoint_state(checkpoint))
    state = max((s for s in candidates if s), key=lambda s: s["epoch"], default=None)
    where = {"node_id": node_id}  # Tune fills in node_ip and hostname itself
    if state is not None:
        # The driver may have stopped before it saw this epoch's result: send it again (the log keeps one copy).
        tune.report({**state["metrics"], **where, REPLAYED: True})
        if state["epoch"] >= cfg.epochs or state["metrics"]["diverged"]:
            return  # it had finished: nothing left to train
    trainer = Trainer(cfg, data, state=state)

    def report(metrics: dict, state_fn) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save({**state_fn(), "metrics": metrics}, Path(d) / CHECKPOINT_FILE)
            (Path(d) / CHECKPOINT_METRICS).write_text(json.dumps({"epoch": metrics["epoch"], METRIC: metrics[METRIC]}))
            tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(d))

    trainer.fit(report)
