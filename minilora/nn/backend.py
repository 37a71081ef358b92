"""The one place that decides between NumPy (CPU) and CuPy (GPU).

Every other module writes ``from minilora.nn.backend import xp`` and calls ``xp.matmul``,
``xp.exp`` and so on. ``xp`` is a small proxy that forwards to whichever array module is
active, so switching the backend at run time reaches code that was imported earlier.

Choose the backend with the environment variable ``MINILORA_BACKEND=numpy|cupy`` or with
``set_backend("cupy")``. CuPy is optional: it is imported only when asked for, and asking for
it on a machine without a working CUDA GPU raises a clear error instead of an ImportError
deep inside a layer.

Dtype: float32 by default (speed, and what GPUs like); float64 for gradient checks, where
central differences need the extra precision (float32 checks stall near 1e-4 relative error).

Randomness: weights and masks are drawn with NumPy's seeded ``Generator`` on the CPU and then
moved with ``asarray``, so a NumPy run and a CuPy run with the same seed start from the same
numbers.
"""
from __future__ import annotations

import os
import types

import numpy as np

_BACKENDS = ("numpy", "cupy")
_active: types.ModuleType = np
_name = "numpy"
_default_dtype = np.float32


class _ArrayModule:
    """Forwards attribute access to the active array module (numpy or cupy)."""

    def __getattr__(self, attr):
        return getattr(_active, attr)

    def __repr__(self):
        return f"<minilora array module: {_name}>"


xp = _ArrayModule()


# --------------------------------------------------------------------------- switching
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device. Never raises."""
    try:
        import cupy  # noqa: F401  (the only cupy import in minilora)

        return bool(cupy.is_available())
    except Exception:
        return False


def set_backend(name: str) -> None:
    """Make ``name`` ("numpy" or "cupy") the array module behind ``xp``."""
    global _active, _name
    name = name.strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {_BACKENDS}")
    if name == "cupy":
        if not cupy_available():
            raise RuntimeError(
                "the CuPy backend was asked for, but CuPy is not installed or sees no CUDA GPU. "
                "Install the GPU extra on a machine with an NVIDIA GPU "
                "(pip install 'minilora[gpu]'), or use MINILORA_BACKEND=numpy."
            )
        import cupy

        _active, _name = cupy, "cupy"
    else:
        _active, _name = np, "numpy"


def backend_name() -> str:
    """The name of the active backend: "numpy" or "cupy"."""
    return _name


def set_default_dtype(dtype) -> None:
    """Set the dtype new parameters are created in (float32 or float64)."""
    global _default_dtype
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype).name}")
    _default_dtype = dtype


def default_dtype():
    """The dtype new parameters are created in (float32 unless changed)."""
    return _default_dtype


# --------------------------------------------------------------------------- moving data
def asarray(a, dtype=None):
    """Put ``a`` on the active backend (a no-op for arrays already there)."""
    return _active.asarray(a, dtype=dtype)


def to_numpy(a) -> np.ndarray:
    """Bring an array back to the CPU as a NumPy array (a no-op for NumPy arrays)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)


def is_array(a) -> bool:
    """True for an ndarray of either backend."""
    return isinstance(a, np.ndarray) or type(a).__module__.startswith("cupy")


def rng(seed: int | None) -> np.random.Generator:
    """A seeded NumPy generator. Draw on the CPU, then ``asarray``: same numbers on any backend."""
    return np.random.default_rng(seed)


def synchronize() -> None:
    """Wait for queued GPU work (for honest timings); nothing to do on NumPy."""
    if _name == "cupy":
        _active.cuda.get_current_device().synchronize()


# --------------------------------------------------------------------------- CPU cores
def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1



# pick the backend named in the environment once, at import
_env = os.environ.get("MINILORA_BACKEND", "").strip()
if _env:
    set_backend(_env)
