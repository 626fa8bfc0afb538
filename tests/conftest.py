"""Shared fixtures: the real bundled MNIST (read once per session) and tiny random splits for wiring tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data import MnistSplits, load_mnist


@pytest.fixture(scope="session")
def mnist() -> MnistSplits:
    """The bundled MNIST, md5-verified and split as the seed did; shared by all tests, so never modify it."""
    return load_mnist()


@pytest.fixture
def tiny_data() -> MnistSplits:
    """256 train / 64 validation / 64 test random images in the real shapes and dtypes: wiring tests in milliseconds."""
    rng = np.random.default_rng(0)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.int64)

    return MnistSplits(*part(256), *part(64), *part(64))


@pytest.fixture
def one_torch_thread():
    """Train on one torch thread, and restore the process-wide count afterwards (also undoing Trainer's num_threads).

    Tests train tiny batches, where a second thread buys nothing; on a busy 2-core machine, two spin-waiting
    OpenMP threads per process turned a 0.7 s MNIST epoch into 30 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
