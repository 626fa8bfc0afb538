"""The seed's two networks: shapes, sizes, and the errors a user can cause when naming one."""

from __future__ import annotations

import re

import pytest
import torch

from trainables.errors import ConfigError
from trainables.config import DEFAULT_HIDDEN_UNITS, MODELS
from trainables.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("hidden", [1, 10, 128])
def test_output_shape(name, hidden):
    out = build_model(name, hidden)(torch.rand(5, 28, 28))
    assert out.shape == (5, 10) and out.dtype == torch.float32


@pytest.mark.parametrize("hidden", [1, 10, 50, 200])
def test_mlp_parameter_count(hidden):
    assert n_params(build_model("mlp", hidden)) == 784 * hidden + hidden + 10 * hidden + 10


@pytest.mark.parametrize("hidden", [1, 128, 200])
def test_cnn_parameter_count(hidden):
    conv1 = 1 * 32 * 3 * 3 + 32
    conv2 = 32 * 64 * 3 * 3 + 64
    fc1 = 1600 * hidden + hidden  # 64 channels x 5 x 5 after two conv+pool stages
    fc2 = hidden * 10 + 10
    assert n_params(build_model("cnn", hidden)) == conv1 + conv2 + fc1 + fc2


def test_seed_default_widths_build():
    assert n_params(build_model("mlp", DEFAULT_HIDDEN_UNITS["mlp"])) == 7_960  # the seed's 784-10-10
    assert n_params(build_model("cnn", DEFAULT_HIDDEN_UNITS["cnn"])) == 225_034


def test_cnn_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model, x = build_model("cnn", 128), torch.rand(8, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["rnn", "MLP", "", None])
def test_unknown_model_name(name):
    with pytest.raises(ConfigError, match=re.escape(f"model must be one of mlp, cnn, got {name!r}")):
        build_model(name, 10)


@pytest.mark.parametrize("hidden", [0, -5, 2.5, 10.0, "10", None, True])
def test_hidden_units_must_be_a_positive_int(hidden):
    with pytest.raises(ConfigError, match=re.escape(f"hidden_units must be an integer >= 1, got {hidden!r}")):
        build_model("mlp", hidden)
