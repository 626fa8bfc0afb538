"""The seed notebook's search against `hpsearch run`, same space, same trials, same epochs, one run.

Seed: sequential `hyperopt.fmin` (TPE, its default 20 random starts), each trial the notebook's
DataLoader loop at batch 32 for 5 epochs, torch's default threads. Ours: `search.runner.run` with
the default spec (HyperOptSearch + ASHA, one CPU per trial) and max_epochs = 5.

ray_overhead_share = 1 - (seconds spent inside training epochs) / (trial slots x our wall time):
everything that is not an epoch (Ray start-up, trial start, reporting, checkpoints, idle slots).

    .venv/bin/python bench/search.py [--trials 50] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hyperopt import STATUS_OK, Trials, fmin, hp, tpe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop import fresh, seed_loader, seed_epoch  # noqa: E402

from search import results, runner  # noqa: E402
from search.spec import build_spec  # noqa: E402
from trainables.data import PIXEL_SCALE, load_mnist  # noqa: E402


def seed_search(data, trials: int, epochs: int) -> tuple[float, float]:
    """The notebook's section 5: (best val_acc, wall seconds)."""
    x_val = torch.tensor(data.x_val, dtype=torch.float32).mul_(PIXEL_SCALE).reshape(-1, 784)
    y_val = torch.tensor(data.y_val)
    loader_cache = {}

    def objective(params):
        model, _ = fresh("mlp", int(params["hidden_units"]), seed_style=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
        loader = loader_cache.setdefault(32, seed_loader(data.x_train, data.y_train, "mlp", 32))
        for _ in range(epochs):
            seed_epoch(model, optimizer, loader)
        model.eval()
        with torch.no_grad():
            acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        return {"loss": -acc, "status": STATUS_OK}

    space = {
        "hidden_units": hp.quniform("hidden_units", 50, 200, 10),
        "lr": hp.loguniform("lr", -5, -1),
        "momentum": hp.uniform("momentum", 0, 1),
    }
    history = Trials()
    start = time.perf_counter()
    fmin(objective, space, algo=tpe.suggest, max_evals=trials, trials=history,
         rstate=np.random.default_rng(0), show_progressbar=False)
    wall = time.perf_counter() - start
    return -min(history.losses()), wall


def our_search(trials: int, epochs: int, out: Path) -> tuple[float, float, float]:
    """`hpsearch run`: (best val_acc, wall seconds, Ray overhead share)."""
    spec = build_spec({"name": "bench", "results_dir": str(out), "num_samples": trials, "max_epochs": epochs})
    start = time.perf_counter()
    summary = runner.run(spec, verbose=1)
    wall = time.perf_counter() - start
    epoch_s = sum(results.read_table(spec.results_dir, "epochs", [spec.name]).column("epoch_s").to_pylist())
    slots = min(os.cpu_count() // int(spec.cpus_per_trial), trials)  # what runner.max_concurrent picks locally
    print("\n".join(summary.lines()))
    return summary.best["best_val_acc"], wall, 1 - epoch_s / (slots * wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed-trials", type=int, default=None,
                   help="run only this many of the seed's trials and scale its wall time to --trials "
                        "(its trials are sequential and equal in work); default: all")
    args = p.parse_args()
    seed_trials = args.seed_trials or args.trials
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.trials} trials x {args.epochs} epochs")
    data = load_mnist()
    with tempfile.TemporaryDirectory() as out:
        ours_val, ours_wall, overhead = our_search(args.trials, args.epochs, Path(out))
    seed_val, seed_wall = seed_search(data, seed_trials, args.epochs)
    if seed_trials != args.trials:
        print(f"seed: {seed_trials} trials took {seed_wall:.1f} s; scaled to {args.trials} trials")
        seed_wall *= args.trials / seed_trials
    print(f"seed wall {seed_wall:.1f} s, ours wall {ours_wall:.1f} s")
    print(f"speedup {seed_wall / ours_wall:.2f}")
    print(f"best_val_ours {ours_val:.5f}")
    print(f"best_val_seed {seed_val:.5f}")
    print(f"ray_overhead_share {overhead:.3f}")


if __name__ == "__main__":
    main()
