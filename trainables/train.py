"""The epoch loop, evaluation, devices and seeding: plain PyTorch, no Ray, so it can be tested and profiled alone.

Speed comes from what the seed's DataLoader did per sample: we shuffle the uint8 tensor once per
epoch with one gather, then slice contiguous batches (views, no collate) and scale to float there.
The MLP's SGD step is written out by hand (`mlp_sgd_step`), because at batch 32 autograd's overhead
costs as much as the two GEMMs; on CPU the CNN runs channels-last, where oneDNN is faster.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import PIXEL_SCALE, MnistSplits
from trainables.config import COMPLETED, DIVERGED, TrainConfig
from trainables.errors import ConfigError, DataError
from trainables.models import MLP, build_model

EVAL_BATCH = 4096  # evaluation has no gradients, so large batches only cost memory
DIVERGENCE_CHECK_EVERY = 100  # steps between finite-loss checks; each check syncs with the device

@dataclass
class TrainResult:
    status: str  # COMPLETED or DIVERGED
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = None


def resolve_device(name: str) -> torch.device:
    """Choose the device once; asking for cuda where there is none is a user error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' needs a CUDA-capable GPU and a CUDA build of torch, got none available")
    return torch.device(name)


def place_model(name: str, hidden_units: int, device: torch.device) -> nn.Module:
    """A fresh model on `device`; on CPU a CNN goes channels-last (about 1.25x faster per epoch on 2 cores)."""
    model = build_model(name, hidden_units).to(device)
    if name == "cnn" and device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def to_tensors(x, y, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 labels on `device`, moved once (copied, as Ray's arrays are read-only)."""
    return torch.tensor(x, dtype=torch.uint8, device=device), torch.tensor(y, dtype=torch.int64, device=device)


Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (uint8 x, y) -> (loss sum, logits)


def autograd_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Step:
    """Any model, any optimizer: forward, cross-entropy, backward, optimizer step."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(xb.float().mul_(PIXEL_SCALE))
        loss = F.cross_entropy(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * len(yb), out.detach()

    return step


def _plain_sgd(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The optimizer's one param group if it is SGD with only lr and momentum over all of the model's parameters."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["dampening"] or group["nesterov"] or group["maximize"]:
        return None
    return group if {id(p) for p in group["params"]} == {id(p) for p in model.parameters()} else None


def mlp_sgd_step(model: MLP, optimizer: torch.optim.Optimizer) -> Step | None:
    """The MLP's SGD step with its two layers' gradients written out: the update autograd + torch's SGD make.

    At batch 32 an MLP step is two small GEMMs buried under ~40 dispatched ops (autograd graph, loss,
    zero_grad, a per-parameter optimizer loop); this is about 20, and an epoch on CPU is ~1.8x faster.
    The 1/256 pixel scale and the 1/batch of the mean loss ride in the GEMMs' alpha, SGD's momentum in
    their beta (buf = momentum * buf + grad, then param -= lr * buf; with momentum 0 the GEMMs update the
    weights directly). The momentum buffers live in the optimizer's state, as torch's SGD keeps them,
    so checkpoints and resuming are the same for both steps. None when the optimizer is not plain SGD.
    """
    group = _plain_sgd(model, optimizer)
    if group is None:
        return None
    lr, momentum = group["lr"], group["momentum"]
    layers = [model[1].weight, model[1].bias, model[3].weight, model[3].bias]
    params = [p.detach() for p in layers]  # no autograd graph, so they can be updated in place
    if momentum:
        for p in layers:  # torch starts a buffer as the first gradient, which is momentum * 0 + gradient
            if optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, requires_grad=False)
        targets, beta, alpha = [optimizer.state[p]["momentum_buffer"] for p in layers], momentum, 1.0
    else:
        targets, beta, alpha = params, 1.0, -lr
    w1, b1, w2, b2 = params
    t_w1, t_b1, t_w2, t_b2 = targets
    constants = {}  # batch length -> (ones, a column of -1): the full batch and the epoch's last one

    def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(yb)
        if n not in constants:
            constants[n] = (w1.new_ones(n), w1.new_full((n, 1), -1.0))
        ones, minus_one = constants[n]
        x = xb.reshape(n, -1).float()
        h = torch.addmm(b1, x, w1.t(), alpha=PIXEL_SCALE).relu_()
        out = torch.addmm(b2, h, w2.t())
        log_p = torch.log_softmax(out, 1)
        loss_sum = log_p.gather(1, yb[:, None]).sum().neg_()
        grad_out = log_p.exp_().scatter_add_(1, yb[:, None], minus_one)  # softmax - one_hot, times n
        grad_h = torch.mm(grad_out, w2).mul_(h > 0)  # before w2 changes
        a = alpha / n
        t_w2.addmm_(grad_out.t(), h, beta=beta, alpha=a)
        t_b2.addmv_(grad_out.t(), ones, beta=beta, alpha=a)
        t_w1.addmm_(grad_h.t(), x, beta=beta, alpha=a * PIXEL_SCALE)
        t_b1.addmv_(grad_h.t(), ones, beta=beta, alpha=a)
        if momentum:
            torch._foreach_add_(params, targets, alpha=-lr)
        return loss_sum, out

    return step


def train_epoch(model, optimizer, x, y, batch_size: int, generator: torch.Generator) -> tuple[float, float]:
    """One pass over (x, y) in a fresh random order; returns (mean loss, accuracy). NaN loss if it diverged."""
    model.train()
    step = (isinstance(model, MLP) and mlp_sgd_step(model, optimizer)) or autograd_step(model, optimizer)
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device)
    xs, ys = x[order], y[order]  # one gather per epoch instead of one per sample
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for batch_no, i in enumerate(range(0, n, batch_size)):
        yb = ys[i : i + batch_size]
        batch_loss, out = step(xs[i : i + batch_size], yb)
        loss_sum += batch_loss
        correct += (out.argmax(1) == yb).sum()
        if batch_no % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            return math.nan, correct.item() / max(i + len(yb), 1)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluate(model, x, y, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(mean loss, accuracy) over (x, y) in large batches, without gradients."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size].float().mul_(PIXEL_SCALE))
        yb = y[i : i + batch_size]
        loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    return loss_sum / max(len(x), 1), correct / max(len(x), 1)


EpochCallback = Callable[[dict, Callable[[], dict]], None]


class Trainer:
    """Holds one trial's model, optimizer, data on its device and RNGs; `fit` runs the epochs."""

    def __init__(self, cfg: TrainConfig, data: MnistSplits, state: dict | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)  # model init and dropout
        self.generator = torch.Generator().manual_seed(cfg.seed)  # shuffling, independent of the model
        self.model = place_model(cfg.model, cfg.hidden_units, self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.x_train, self.y_train = to_tensors(data.x_train, data.y_train, self.device)
        self.x_val, self.y_val = to_tensors(data.x_val, data.y_val, self.device)
        self.epoch = 0
        if state is not None:
            self.load_state_dict(state)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where we are: model, optimizer, epoch, RNGs, config.

        A copy, not torch's live references: a state kept past the epoch callback must not move with training.
        """
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.generator.get_state(),
            "config": asdict(self.cfg),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["shuffle_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def fit(self, on_epoch: EpochCallback | None = None) -> TrainResult:
        """Train up to cfg.epochs; after each epoch call on_epoch(metrics, state_fn). Stops early if the loss diverges."""
        result = TrainResult(COMPLETED, model=self.model)
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            train_loss, train_acc = train_epoch(
                self.model, self.optimizer, self.x_train, self.y_train, self.cfg.batch_size, self.generator
            )
            val_loss, val_acc = self.validate()
            self.epoch += 1
            diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
            metrics = {
                "epoch": self.epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "epoch_s": time.perf_counter() - start,
                "diverged": diverged,
            }
            result.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, self.state_dict)
            if diverged:
                result.status = DIVERGED
                break
        return result

    def validate(self) -> tuple[float, float]:
        """(val_loss, val_acc) on the validation split."""
        return evaluate(self.model, self.x_val, self.y_val)

    def test(self, data: MnistSplits) -> tuple[float, float]:
        """(test_loss, test_acc): the held-out set, used once per search on the best checkpoint."""
        return evaluate(self.model, *to_tensors(data.x_test, data.y_test, self.device))


def save_model(path, model: nn.Module, cfg: TrainConfig, extra: dict | None = None) -> None:
    """Save state dict + config (+ metrics) with torch.save; read back with load_model."""
    torch.save({"model": model.state_dict(), "config": asdict(cfg), **(extra or {})}, path)


def model_from_state(blob: dict, device: torch.device) -> nn.Module:
    """The model a saved model file or a trial checkpoint describes (its "config" and "model" entries), on `device`."""
    cfg = blob["config"]
    model = place_model(cfg["model"], int(cfg["hidden_units"]), device)
    model.load_state_dict(blob["model"])
    return model


def load_model(path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model; weights_only=True so a model file cannot run code."""
    try:
        blob = torch.load(path, map_location=resolve_device(device), weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: refusing to load, it is not a model file of only tensors and plain values") from None
    except (OSError, EOFError, RuntimeError) as e:
        raise DataError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from None
    return model_from_state(blob, resolve_device(device)), blob
