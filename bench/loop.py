"""Epoch throughput of our training loop against the seed notebook's DataLoader loop.

Both loops train the same architecture with the same plain SGD, batch size, thread count and
images, in one process, alternating so that machine noise hits both alike. The seed fed float32
tensors (pixels/256) through a shuffled DataLoader over a TensorDataset and read loss and accuracy
back with `.item()` after every batch; ours is `trainables.train.train_epoch` over uint8 tensors,
with the model placed as `Trainer` places it (`place_model`: channels-last CNN on CPU) and, for the
MLP, its hand-written SGD step (`mlp_sgd_step`). A third loop, "autograd", runs autograd + torch's
SGD on ready-made float batches with no bookkeeping: what removing the input pipeline alone gains.

    .venv/bin/python bench/loop.py [--repeats 12] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from trainables.data import PIXEL_SCALE, load_mnist
from trainables.models import build_model
from trainables.train import place_model, to_tensors, train_epoch

# name, model, hidden units, batch size, training samples per timed epoch. Short epochs and many
# alternating rounds, because on a shared 2-core VM one epoch can be 30% slower than the next for no
# reason of its own; the fastest of many short epochs is the stable figure.
CASES = (
    ("mlp200_bs32", "mlp", 200, 32, 12_000),
    ("mlp200_bs128", "mlp", 200, 128, 12_000),
    ("cnn_bs32", "cnn", 128, 32, 2_000),
)
LR, MOMENTUM = 0.1, 0.5  # identical in both loops; momentum > 0 as in most searched trials


def fresh(model_name: str, hidden: int, seed_style: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same initial weights for both loops: ours placed as Trainer places it, the seed's as the notebook built it.

    The seed's data came pre-shaped, so its nets had no Flatten/Unflatten layer in front.
    """
    torch.manual_seed(0)
    if seed_style:
        model = torch.nn.Sequential(*list(build_model(model_name, hidden))[1:])
    else:
        model = place_model(model_name, hidden, torch.device("cpu"))
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def seed_loader(x_uint8, y, model_name: str, batch_size: int) -> DataLoader:
    """The seed's input pipeline: float32 pixels/256, flattened for the MLP, N×1×28×28 for the CNN."""
    shape = (-1, 784) if model_name == "mlp" else (-1, 1, 28, 28)
    x = torch.tensor(x_uint8, dtype=torch.float32).mul_(PIXEL_SCALE).reshape(shape)
    return DataLoader(TensorDataset(x, torch.tensor(y, dtype=torch.int64)), batch_size=batch_size, shuffle=True)


def seed_epoch(model, optimizer, loader) -> tuple[float, float]:
    """The seed notebook's loop, with the per-batch `.item()` bookkeeping a notebook typically does."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in loader:
        optimizer.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(yb)
        correct += (out.argmax(1) == yb).sum().item()
        seen += len(yb)
    return total_loss / seen, correct / seen


def autograd_epoch(model, optimizer, batches) -> tuple[float, float]:
    """Ready-made float batches and no bookkeeping: autograd's forward/backward and torch's SGD step alone."""
    model.train()
    for xb, yb in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    return math.nan, math.nan


def bench_case(data, model_name: str, hidden: int, batch_size: int, n: int, repeats: int) -> dict:
    x_np, y_np = data.x_train[:n], data.y_train[:n]
    x, y = to_tensors(x_np, y_np, torch.device("cpu"))
    loader = seed_loader(x_np, y_np, model_name, batch_size)
    ours_model, ours_opt = fresh(model_name, hidden, seed_style=False)
    seed_model, seed_opt = fresh(model_name, hidden, seed_style=True)
    autograd_model, autograd_opt = fresh(model_name, hidden, seed_style=False)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    batches = list(zip(x[order].float().mul_(PIXEL_SCALE).split(batch_size), y[order].split(batch_size)))

    def ours() -> tuple[float, float]:
        return train_epoch(ours_model, ours_opt, x, y, batch_size, generator)

    def seed() -> tuple[float, float]:
        return seed_epoch(seed_model, seed_opt, loader)

    def autograd() -> tuple[float, float]:
        return autograd_epoch(autograd_model, autograd_opt, batches)

    loops = {"ours": ours, "seed": seed, "autograd": autograd}
    times = {label: [] for label in loops}
    metrics = {}
    for r in range(repeats + 1):  # round 0 is the warm-up; the order flips every round
        for label, run in list(loops.items())[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            metrics[label] = run()
            if r:
                times[label].append(time.perf_counter() - start)
    return {
        "best": {label: n / min(ts) for label, ts in times.items()},
        "median": {label: n / statistics.median(ts) for label, ts in times.items()},
        "train_acc": {label: acc for label, (_, acc) in metrics.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12, help="timed epochs per loop and case, after one warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, cuda available: {torch.cuda.is_available()}")
    print(f"torch threads (both loops): {torch.get_num_threads()}; SGD lr {LR} momentum {MOMENTUM}; "
          f"{args.repeats} timed epochs per loop, alternating")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    data = load_mnist()
    ratios = {}
    print("\nsamples/s of each loop's fastest epoch (other processes can only slow a run down)")
    print("ratio = ours / seed; median = the same from median epochs; autograd = autograd + SGD on ready-made")
    print("batches, without any input pipeline or bookkeeping; its column on the right is autograd / seed")
    print(f"{'case':<14}{'samples':>9}{'ours':>10}{'seed':>10}{'autograd':>10}{'ratio':>7}{'median':>8}{'autogr':>7}"
          "   train_acc ours / seed")
    for name, model_name, hidden, batch_size, n in CASES:
        res = bench_case(data, model_name, hidden, batch_size, n, args.repeats)
        best, median, acc = res["best"], res["median"], res["train_acc"]
        ratios[name] = best["ours"] / best["seed"]
        print(f"{name:<14}{n:>9,}{best['ours']:>10,.0f}{best['seed']:>10,.0f}{best['autograd']:>10,.0f}"
              f"{ratios[name]:>7.2f}{median['ours'] / median['seed']:>8.2f}{best['autograd'] / best['seed']:>7.2f}"
              f"   {acc['ours']:.4f} / {acc['seed']:.4f}", flush=True)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    for name, ratio in ratios.items():
        print(f"ratio {name} {ratio:.2f}")


if __name__ == "__main__":
    main()
