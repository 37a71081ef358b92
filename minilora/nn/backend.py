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
from contextlib import contextmanager

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


# --------------------------------------------------------------------------- CPU threads
def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@contextmanager
def blas_threads(n: int):
    """Inside the block, NumPy's BLAS uses at most ``n`` threads (nothing changes on CuPy).

    For data parallelism (``minilora.experiments.step``): each worker thread runs its own single-threaded
    matrix products, instead of every worker asking BLAS for all cores at once. The limit is
    set through threadpoolctl, which finds the BLAS NumPy loaded (OpenBLAS, MKL, BLIS) and uses
    that library's own call for it; the previous limit comes back on leaving the block.
    """
    global _blas_controller
    if _name != "numpy":
        yield
        return
    if _blas_controller is None:  # finding the loaded libraries takes ~0.3 ms: do it once
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    with _blas_controller.limit(limits=n, user_api="blas"):
        yield


_blas_controller = None


# --------------------------------------------------------------------------- CPU memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8   # mallopt parameters (glibc's malloc.h)
_kept_freed_memory: bool | None = None


def keep_freed_memory(*, largest_block: int = 64 << 20, keep: int = 1 << 30) -> bool:
    """Let glibc's malloc reuse freed NumPy buffers instead of handing them back to the kernel.

    A training step allocates and frees the same few hundred MB of activations every step. By
    default glibc returns large freed blocks to the kernel (munmap, or trimming the heap), so the
    next step writes to brand-new pages: tens of thousands of page faults per step, each a trip
    into the kernel to map and zero 4 KiB; about 15% of a step on a 2-core machine. CuPy has a
    memory pool for the same reason; for NumPy, minilora asks glibc to serve blocks up to
    ``largest_block`` bytes from its heap and to keep up to ``keep`` freed bytes there, and to
    use that one heap for every thread (per-thread heaps are unmapped whenever they empty, which
    the worker threads of ``minilora.experiments.step`` would do every step).

    Called by ``minilora.experiments.step.forward_loss`` (training and evaluation). Process-wide; does nothing on
    CuPy, off glibc (macOS, musl) or with MINILORA_KEEP_FREED_MEMORY=0. Returns whether the
    setting is in force.
    """
    global _kept_freed_memory
    if _kept_freed_memory is None and _name == "numpy":
        _kept_freed_memory = (os.environ.get("MINILORA_KEEP_FREED_MEMORY", "1") != "0"
                              and _glibc_mallopt({_M_ARENA_MAX: 1, _M_MMAP_THRESHOLD: largest_block,
                                                  _M_TRIM_THRESHOLD: keep}))
    return bool(_kept_freed_memory)


def _glibc_mallopt(settings: dict) -> bool:
    """Apply mallopt(param, value) for each setting; False where the C library is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in settings.items())
    except (OSError, AttributeError):
        return False


# pick the backend named in the environment once, at import
_env = os.environ.get("MINILORA_BACKEND", "").strip()
if _env:
    set_backend(_env)
