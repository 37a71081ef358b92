"""Shared test set-up: a non-interactive plot backend and float64 helpers."""
import matplotlib

matplotlib.use("Agg")  # tests never open windows

import numpy as np
import pytest

from minilora import backend


@pytest.fixture
def rng():
    """A fixed-seed NumPy generator, so every test sees the same numbers."""
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def numpy_backend():
    """Every test starts on NumPy with float32 defaults, whatever an earlier test switched."""
    backend.set_backend("numpy")
    backend.set_default_dtype(np.float32)
    yield
    backend.set_backend("numpy")
    backend.set_default_dtype(np.float32)
