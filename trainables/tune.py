"""The Ray Tune trainable: a thin shell around trainables.train.

Config in (the searched hyperparameters), per-epoch `tune.report` with a checkpoint out. On a
retry or a resumed search it continues from `tune.get_checkpoint()`, so no finished epoch reruns.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.data import MnistSplits
from trainables.train import TrainConfig, Trainer

CHECKPOINT_FILE = "state.pt"


def load_checkpoint_state(checkpoint: tune.Checkpoint, device: str = "cpu") -> dict:
    """The Trainer state saved in a checkpoint; weights_only so a checkpoint cannot run code."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=True)


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
    checkpoint = tune.get_checkpoint()
    state = load_checkpoint_state(checkpoint) if checkpoint else None
    trainer = Trainer(cfg, data, state=state)
    where = {
        "node": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }

    def report(metrics: dict, state_fn) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(state_fn(), Path(d) / CHECKPOINT_FILE)
            tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(d))

    trainer.fit(report)
