"""Epoch throughput of our training loop against the seed notebook's DataLoader loop.

Both loops train the same architecture with the same optimizer, batch size, thread count
and images, in one process, alternating so that machine noise hits both alike. The seed
fed float32 tensors (pixels/256) through a shuffled DataLoader over a TensorDataset and
read loss and accuracy back with `.item()` after every batch; ours is
`trainables.train.train_epoch` over uint8 tensors, exactly as `Trainer` calls it.

    .venv/bin/python bench/loop.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
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
from trainables.train import to_tensors, train_epoch

# name, model, hidden units, batch size, training samples per epoch (a CNN subset keeps 2 cores under a minute)
CASES = (
    ("mlp200_bs32", "mlp", 200, 32, 48_000),
    ("mlp200_bs128", "mlp", 200, 128, 48_000),
    ("cnn_bs32", "cnn", 128, 32, 6_000),
)
LR, MOMENTUM = 0.1, 0.5  # identical in both loops; momentum > 0 as in most searched trials


def fresh(model_name: str, hidden: int, seed_style: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same initial weights for both loops; the seed's data came pre-shaped, so its nets had no reshape layer."""
    torch.manual_seed(0)
    model = build_model(model_name, hidden)
    if seed_style:
        model = torch.nn.Sequential(*list(model)[1:])
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


def bench_case(data, model_name: str, hidden: int, batch_size: int, n: int, repeats: int) -> dict:
    x_np, y_np = data.x_train[:n], data.y_train[:n]
    x, y = to_tensors(x_np, y_np, torch.device("cpu"))
    loader = seed_loader(x_np, y_np, model_name, batch_size)
    ours_model, ours_opt = fresh(model_name, hidden)
    seed_model, seed_opt = fresh(model_name, hidden, seed_style=True)
    generator = torch.Generator().manual_seed(0)

    def ours() -> tuple[float, float]:
        return train_epoch(ours_model, ours_opt, x, y, batch_size, generator)

    def seed() -> tuple[float, float]:
        return seed_epoch(seed_model, seed_opt, loader)

    times = {"ours": [], "seed": []}
    metrics = {}
    for r in range(repeats + 1):  # round 0 is the warm-up
        for label, run in (("ours", ours), ("seed", seed)) if r % 2 == 0 else (("seed", seed), ("ours", ours)):
            start = time.perf_counter()
            metrics[label] = run()
            if r:
                times[label].append(time.perf_counter() - start)
    return {label: n / statistics.median(ts) for label, ts in times.items()} | {"metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per loop and case (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (median epoch time), "
          f"SGD lr {LR} momentum {MOMENTUM}")
    data = load_mnist()
    ratios = {}
    print(f"\n{'case':<14}{'samples':>9}{'ours samples/s':>16}{'seed samples/s':>16}{'ratio':>7}"
          "   last train_acc ours / seed")
    for name, model_name, hidden, batch_size, n in CASES:
        res = bench_case(data, model_name, hidden, batch_size, n, args.repeats)
        ratios[name] = res["ours"] / res["seed"]
        acc_ours, acc_seed = res["metrics"]["ours"][1], res["metrics"]["seed"][1]
        print(f"{name:<14}{n:>9,}{res['ours']:>16,.0f}{res['seed']:>16,.0f}{ratios[name]:>7.2f}"
              f"   {acc_ours:.4f} / {acc_seed:.4f}", flush=True)
    print()
    for name, ratio in ratios.items():
        print(f"ratio {name} {ratio:.2f}")


if __name__ == "__main__":
    main()
