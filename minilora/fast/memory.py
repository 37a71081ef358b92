"""Keep freed NumPy buffers for reuse instead of handing them back to the kernel (glibc only).

A training step allocates and frees the same few hundred MB of activations every step. By
default glibc returns large freed blocks to the kernel (munmap, or trimming the heap), so the next
step writes to brand-new pages: tens of thousands of page faults per step, each a trip into the
kernel to map and zero 4 KiB; about 15% of a step on a 2-core machine. CuPy has a memory pool for
the same reason. The training loop calls ``keep_freed_memory`` once (``TrainConfig.fast``).
"""
from __future__ import annotations

import os

from minilora.nn import backend

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
    the worker threads of ``minilora.fast.parallel`` would do every step).

    Process-wide and lasting (the process keeps its peak memory between steps); does nothing on
    CuPy, off glibc (macOS, musl) or with MINILORA_KEEP_FREED_MEMORY=0. Returns whether the
    setting is in force.
    """
    global _kept_freed_memory
    if _kept_freed_memory is None and backend.backend_name() == "numpy":
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
