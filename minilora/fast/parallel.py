"""One training step's loss and gradients with the batch shared by worker threads (data parallelism).

Batches are those of ``minilora.nn.loss``. Why threads. NumPy runs a matrix product on every core (through BLAS) but an elementwise
operation (GELU, layer norm, softmax, the optimizer) on one. In minilora's training step about
40% of the time is elementwise, and during it the other cores sit idle. The remedy is the one
used across GPUs, applied across cores: cut the batch into shards along B, give each worker
thread one shard and a single-threaded BLAS, run the forward and backward passes side by side,
and add the shards' gradients. NumPy releases Python's global lock inside its array loops and
BLAS calls, so the threads really do run at the same time.

It is exact. The loss is the mean over the n masked positions of the whole batch, and shard s
holds n_s of them, so
    loss = sum_s (n_s / n) loss_s          and          grad = sum_s (n_s / n) grad_s.
Each shard's backward pass starts from dloss = n_s / n, which gives its weighted gradient
directly; the sum is taken in shard order, so a run is reproducible for a fixed worker count.
(Nothing in a GPT mixes examples of a batch, unlike batch normalisation, so shards are
independent.) Results differ from one thread only by float rounding.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from minilora.nn import backend
from minilora.nn.loss import loss_and_grads as plain_loss_and_grads

# A shard of fewer tokens than this gives its thread too little work to pay for the hand-off
# (measured on 2 cores at C = 128: 2 workers win from about 500 tokens per batch, lose below 256).
MIN_SHARD_TOKENS = 256


def loss_and_grads(model, batch: dict, *, training: bool = True, workers: int | None = None):
    """Loss and the gradients of the trainable parameters for one batch, as ``minilora.nn.loss``.

    ``workers``: threads that share the batch (see the module docstring). 1 runs the plain
    step; None picks ``default_workers``. A model whose training forward draws random numbers
    (LoRA dropout) always runs on one thread, so that its random masks stay reproducible.
    """
    workers = default_workers(batch) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (or None for automatic), got {workers}")
    if workers == 1 or backend.backend_name() != "numpy" or getattr(model, "stochastic", False):
        return plain_loss_and_grads(model, batch, training=training)
    shards = [s for s in split_batch(batch, workers) if loss_positions(s) > 0]
    n = sum(loss_positions(s) for s in shards)
    if len(shards) < 2:                       # everything that counts sits in one shard
        return plain_loss_and_grads(model, batch, training=training)
    with blas_threads(1):
        results = list(_thread_pool(len(shards)).map(
            lambda s: plain_loss_and_grads(model, s, training=training, weight=loss_positions(s) / n), shards))
    loss, grads = results[0]
    for shard_loss, shard_grads in results[1:]:
        loss += shard_loss
        for name, g in shard_grads.items():
            grads[name] += g
    return loss, grads


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """One pool kept between steps: starting threads every step would cost time and fresh memory."""
    global _pool, _pool_size
    if _pool_size < workers:
        if _pool is not None:
            _pool.shutdown()
        _pool, _pool_size = ThreadPoolExecutor(workers, thread_name_prefix="minilora-step"), workers
    return _pool


def default_workers(batch: dict) -> int:
    """One worker per CPU core, but at least MIN_SHARD_TOKENS tokens per worker (1 on a GPU)."""
    if backend.backend_name() != "numpy":
        return 1
    B, T = batch["x"].shape
    return max(1, min(backend.cpu_count(), B, B * T // MIN_SHARD_TOKENS))


def split_batch(batch: dict, parts: int) -> list[dict]:
    """Cut every array of the batch into ``parts`` shards along B (sizes differ by at most 1)."""
    B = len(batch["x"])
    bounds = [B * i // parts for i in range(parts + 1)]
    return [{k: v[lo:hi] for k, v in batch.items()} for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def loss_positions(batch: dict) -> float:
    """How many positions the loss averages over: masked tokens, or rows for classification."""
    if "labels" in batch:
        return float(len(batch["labels"]))
    return float(batch["mask"].sum())


@contextmanager
def blas_threads(n: int):
    """Inside the block, NumPy's BLAS uses at most ``n`` threads (nothing changes on CuPy).

    For the worker threads above: each worker thread runs its own single-threaded
    matrix products, instead of every worker asking BLAS for all cores at once. The limit is
    set through threadpoolctl, which finds the BLAS NumPy loaded (OpenBLAS, MKL, BLIS) and uses
    that library's own call for it; the previous limit comes back on leaving the block.
    """
    global _blas_controller
    if backend.backend_name() != "numpy":
        yield
        return
    if _blas_controller is None:  # finding the loaded libraries takes ~0.3 ms: do it once
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    with _blas_controller.limit(limits=n, user_api="blas"):
        yield


_blas_controller = None
