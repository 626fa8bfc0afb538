"""The training loop: configuration rules, determinism, resuming, callbacks, divergence, devices and model files."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, replace

import pytest
import torch

from trainables.errors import ConfigError, DataError
from trainables.models import build_model
from trainables.config import COMPLETED, DIVERGED, EPOCH_METRICS, TrainConfig
from trainables.train import (
    Trainer,
    autograd_step,
    evaluate,
    load_model,
    mlp_sgd_step,
    place_model,
    resolve_device,
    save_model,
    to_tensors,
    train_epoch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour on a machine without CUDA")


def without_timing(history: list[dict]) -> list[dict]:
    """Metrics minus wall-clock time, which is the one thing allowed to differ between identical runs."""
    return [{k: v for k, v in m.items() if k != "epoch_s"} for m in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# --- TrainConfig ---------------------------------------------------------------------------------


def test_defaults_are_the_seeds_mlp():
    cfg = TrainConfig()
    assert (cfg.model, cfg.hidden_units, cfg.lr, cfg.momentum, cfg.batch_size) == ("mlp", 10, 0.1, 0.0, 32)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("model", "rnn", "model must be one of mlp, cnn"),
        ("hidden_units", 0, "hidden_units must be an integer >= 1"),
        ("hidden_units", 12.5, "hidden_units must be an integer >= 1"),
        ("hidden_units", "64", "hidden_units must be an integer >= 1"),
        ("hidden_units", True, "hidden_units must be an integer >= 1"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("lr", -0.1, "lr must be a finite number > 0"),
        ("lr", math.inf, "lr must be a finite number > 0"),
        ("lr", math.nan, "lr must be a finite number > 0"),
        ("lr", "0.1", "lr must be a finite number > 0"),
        ("momentum", -0.01, "momentum must be a number in [0, 1]"),
        ("momentum", 1.5, "momentum must be a number in [0, 1]"),
        ("momentum", math.nan, "momentum must be a number in [0, 1]"),
        ("momentum", None, "momentum must be a number in [0, 1]"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("batch_size", 32.0, "batch_size must be an integer >= 1"),
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("epochs", "5", "epochs must be an integer >= 1"),
        ("seed", 1.5, "seed must be an integer"),
        ("seed", None, "seed must be an integer"),
        ("num_threads", 0, "num_threads must be None or an integer >= 1"),
        ("num_threads", 2.0, "num_threads must be None or an integer >= 1"),
        ("device", "tpu", "device must be one of cpu, cuda, auto"),
    ],
)
def test_config_rules(field, value, rule):
    with pytest.raises(ConfigError, match=re.escape(f"{rule}, got {value!r}")):
        TrainConfig(**{field: value})


def test_config_accepts_boundaries():
    TrainConfig(model="cnn", hidden_units=1, lr=1e-9, momentum=1.0, batch_size=1, epochs=1, num_threads=1)
    TrainConfig(momentum=0, lr=1, device="auto")


# --- the loop ------------------------------------------------------------------------------------


def test_same_seed_same_metrics_and_weights(tiny_data):
    cfg = TrainConfig(model="cnn", hidden_units=16, momentum=0.5, epochs=2, seed=3)
    a = Trainer(cfg, tiny_data)
    a_history = a.fit().history
    b = Trainer(cfg, tiny_data)
    assert without_timing(a_history) == without_timing(b.fit().history)
    assert_same_weights(a.model, b.model)


def test_different_seed_different_run(tiny_data):
    a = Trainer(TrainConfig(hidden_units=16, epochs=1, seed=0), tiny_data)
    b = Trainer(TrainConfig(hidden_units=16, epochs=1, seed=1), tiny_data)
    assert without_timing(a.fit().history) != without_timing(b.fit().history)
    assert not torch.equal(a.model[1].weight, b.model[1].weight)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_resume_from_state_dict_equals_a_straight_run(tiny_data, model):
    cfg = TrainConfig(model=model, hidden_units=16, momentum=0.9, epochs=2, batch_size=24, seed=5)
    straight = Trainer(cfg, tiny_data)
    straight_history = straight.fit().history

    first = Trainer(replace(cfg, epochs=1), tiny_data)
    first_history = first.fit().history
    state = first.state_dict()
    assert state["epoch"] == 1 and state["config"]["epochs"] == 1
    resumed = Trainer(cfg, tiny_data, state=state)
    resumed_history = resumed.fit().history

    assert len(resumed_history) == 1 and resumed_history[0]["epoch"] == 2
    assert without_timing(first_history + resumed_history) == without_timing(straight_history)
    assert_same_weights(resumed.model, straight.model)


def test_state_kept_by_the_callback_is_a_snapshot(tiny_data):
    """A checkpoint written later (e.g. asynchronously) must still hold the epoch it was taken at."""
    cfg = TrainConfig(hidden_units=16, momentum=0.9, epochs=2)
    kept = []
    straight = Trainer(cfg, tiny_data)
    history = straight.fit(lambda metrics, state_fn: kept.append(state_fn())).history
    assert [s["epoch"] for s in kept] == [1, 2]
    assert not torch.equal(kept[0]["model"]["1.weight"], straight.model[1].weight)
    resumed = Trainer(cfg, tiny_data, state=kept[0])
    assert without_timing(resumed.fit().history) == without_timing(history[1:])
    assert_same_weights(resumed.model, straight.model)


def test_callback_once_per_epoch_with_metrics_and_state(tiny_data):
    calls = []

    def on_epoch(metrics, state_fn):
        calls.append((dict(metrics), state_fn()["epoch"]))

    result = Trainer(TrainConfig(hidden_units=8, epochs=3), tiny_data).fit(on_epoch)
    assert result.status == COMPLETED
    assert [epoch for _, epoch in calls] == [1, 2, 3]
    assert [m["epoch"] for m, _ in calls] == [1, 2, 3]
    assert [m for m, _ in calls] == result.history
    for metrics, _ in calls:
        assert set(EPOCH_METRICS) <= metrics.keys()
        assert all(math.isfinite(metrics[k]) for k in EPOCH_METRICS)
        assert 0 <= metrics["train_acc"] <= 1 and 0 <= metrics["val_acc"] <= 1
        assert metrics["epoch_s"] > 0 and metrics["diverged"] is False


def test_train_epoch_loss_and_accuracy_are_means_over_every_sample(tiny_data):
    """With lr 0 the weights stay put, so the epoch's running metrics must equal one evaluation of the same data."""
    torch.manual_seed(0)
    model = Trainer(TrainConfig(hidden_units=16), tiny_data).model
    x, y = to_tensors(tiny_data.x_train[:250], tiny_data.y_train[:250], CPU)  # 250 = 7 full batches of 32 + 26
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, acc = train_epoch(model, optimizer, x, y, 32, torch.Generator().manual_seed(0))
    expected_loss, expected_acc = evaluate(model, x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == expected_acc


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_hand_written_mlp_step_makes_autograds_update(tiny_data, momentum):
    """Same losses, logits, weights and momentum buffers as autograd + torch's SGD, step after step."""
    x, y = to_tensors(tiny_data.x_train[:100], tiny_data.y_train[:100], CPU)  # 3 batches of 32 and one of 4
    models, optimizers = [], []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(place_model("mlp", 16, CPU))
        optimizers.append(torch.optim.SGD(models[-1].parameters(), lr=0.05, momentum=momentum))
    reference, ours = autograd_step(models[0], optimizers[0]), mlp_sgd_step(models[1], optimizers[1])
    for _ in range(2):
        for i in range(0, 100, 32):
            (loss_a, out_a), (loss_b, out_b) = reference(x[i : i + 32], y[i : i + 32]), ours(x[i : i + 32], y[i : i + 32])
            torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    for (key, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)
    state_a, state_b = optimizers[0].state_dict()["state"], optimizers[1].state_dict()["state"]
    assert state_a.keys() == state_b.keys() == (set(range(4)) if momentum else set())
    for key in state_a:
        torch.testing.assert_close(state_b[key]["momentum_buffer"], state_a[key]["momentum_buffer"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
        lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=1e-4),
        lambda params: torch.optim.Adam(params, lr=1e-3),
    ],
    ids=["nesterov", "weight_decay", "adam"],
)
def test_other_optimizers_train_the_mlp_through_autograd(tiny_data, make_optimizer):
    model = place_model("mlp", 16, CPU)
    optimizer = make_optimizer(model.parameters())
    assert mlp_sgd_step(model, optimizer) is None
    before = model[1].weight.clone()
    x, y = to_tensors(tiny_data.x_train, tiny_data.y_train, CPU)
    loss, _ = train_epoch(model, optimizer, x, y, 32, torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and not torch.equal(before, model[1].weight)
    assert model[1].weight.grad is not None  # autograd ran


def test_evaluate_does_not_depend_on_batch_size(tiny_data):
    model = Trainer(TrainConfig(model="cnn", hidden_units=16), tiny_data).model
    x, y = to_tensors(tiny_data.x_val, tiny_data.y_val, CPU)
    loss, acc = evaluate(model, x, y)
    small_loss, small_acc = evaluate(model, x, y, batch_size=7)
    assert small_loss == pytest.approx(loss, rel=1e-5) and small_acc == acc
    assert not model.training


def test_divergence_ends_early_with_a_status_not_an_exception(tiny_data):
    seen = []
    cfg = TrainConfig(hidden_units=16, lr=1e10, epochs=5)
    result = Trainer(cfg, tiny_data).fit(lambda metrics, state_fn: seen.append(metrics))
    assert result.status == DIVERGED
    assert len(result.history) == 1 < cfg.epochs
    assert seen == result.history
    last = result.history[-1]
    assert last["diverged"] is True
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last["val_loss"]))


def test_test_set_evaluation(tiny_data):
    trainer = Trainer(TrainConfig(hidden_units=8, epochs=1), tiny_data)
    trainer.fit()
    loss, acc = trainer.test(tiny_data)
    assert (loss, acc) == evaluate(trainer.model, *to_tensors(tiny_data.x_test, tiny_data.y_test, CPU))
    assert math.isfinite(loss) and 0 <= acc <= 1


# --- devices and threads -------------------------------------------------------------------------


def test_cpu_cnn_is_placed_channels_last_and_computes_the_same():
    torch.manual_seed(0)
    plain = build_model("cnn", 16).eval()
    torch.manual_seed(0)
    placed = place_model("cnn", 16, CPU).eval()
    conv2 = placed[4].weight
    assert conv2.is_contiguous(memory_format=torch.channels_last) and not conv2.is_contiguous()
    x = torch.rand(8, 28, 28)
    torch.testing.assert_close(placed(x), plain(x), rtol=1e-5, atol=1e-5)
    assert place_model("mlp", 16, CPU)[1].weight.is_contiguous()



@needs_no_cuda
def test_cuda_without_a_gpu_is_a_config_error(tiny_data):
    with pytest.raises(ConfigError, match="device 'cuda' needs a CUDA-capable GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device 'cuda'"):
        Trainer(TrainConfig(device="cuda"), tiny_data)


@needs_no_cuda
def test_auto_resolves_to_cpu_without_a_gpu(tiny_data):
    assert resolve_device("auto") == CPU
    trainer = Trainer(TrainConfig(device="auto", hidden_units=4), tiny_data)
    assert trainer.device == CPU and next(trainer.model.parameters()).device == CPU


def test_num_threads_sets_torchs_thread_count(tiny_data):
    Trainer(TrainConfig(hidden_units=4, num_threads=2), tiny_data)
    assert torch.get_num_threads() == 2
    Trainer(TrainConfig(hidden_units=4), tiny_data)
    assert torch.get_num_threads() == 2  # None leaves it alone


# --- model files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_save_and_load_model_round_trip(tiny_data, tmp_path, model):
    trainer = Trainer(TrainConfig(model=model, hidden_units=12, epochs=1), tiny_data)
    trainer.fit()
    path = tmp_path / "model.pt"
    save_model(path, trainer.model, trainer.cfg, extra={"val_acc": 0.5, "epoch": 1})
    loaded, blob = load_model(path)
    assert blob["config"] == asdict(trainer.cfg)
    assert (blob["val_acc"], blob["epoch"]) == (0.5, 1)
    assert_same_weights(loaded, trainer.model)
    x, y = to_tensors(tiny_data.x_val, tiny_data.y_val, CPU)
    assert evaluate(loaded, x, y) == evaluate(trainer.model, x, y)


class Payload:
    """Pickles as a call to os.system: what a tampered model file would contain."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_tampered_model_file_is_refused_not_run(tiny_data, tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    trainer = Trainer(TrainConfig(hidden_units=4), tiny_data)
    torch.save({"model": trainer.model.state_dict(), "config": asdict(trainer.cfg), "x": Payload(marker)}, path)
    with pytest.raises(DataError, match="refusing to load") as e:
        load_model(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not a readable model file"),
        (b"", "not a readable model file"),
        (b"not a torch file", "refusing to load"),
    ],
)
def test_missing_or_corrupt_model_file(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as e:
        load_model(path)
    assert str(path) in str(e.value)


# --- the real thing ------------------------------------------------------------------------------


def test_seed_mlp_one_epoch_on_real_mnist(mnist):
    """The seed's MLP 784-10-10, lr 0.1, batch 32: about 0.92 after one epoch (0.930 after ten in the seed)."""
    cfg = TrainConfig(model="mlp", hidden_units=10, lr=0.1, momentum=0.0, batch_size=32, epochs=1, seed=0)
    result = Trainer(cfg, mnist).fit()
    assert result.status == COMPLETED
    assert result.history[0]["val_acc"] >= 0.90
