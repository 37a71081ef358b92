"""One batch's loss, and its gradients: the one contract every model answers the same way.

A batch is a dict of arrays on the active backend (see ``minilora.data.datasets``):
    generation:      x (B, T), y (B, T) next-token targets, mask (B, T) 1 on answer tokens
    classification:  x (B, T), last (B,) position the head reads, labels (B,)

Any model with ``forward``, ``classify``, ``backward`` and ``kernels`` (a GPT, or an adapter model
around one) is trained through these two functions, whichever its head.
"""
from __future__ import annotations


def forward_loss(model, batch: dict, *, training: bool = False):
    """Mean loss of one batch. Returns (loss, logits, caches): logits (B, T, V) or (B, K)."""
    k = model.kernels
    if "labels" in batch:
        _check_ids(batch, "last", batch["x"].shape[:1], batch["x"].shape[-1], "positions in the sequence")
        logits, cache = model.classify(batch["x"], batch["last"], training=training)   # (B, K)
        _check_ids(batch, "labels", batch["x"].shape[:1], logits.shape[-1], "classes of the head")
        loss, ce_cache = k.cross_entropy_forward(logits, batch["labels"])
    else:
        _check_ids(batch, "x", batch["x"].shape, None, "")
        if tuple(batch["mask"].shape) != tuple(batch["x"].shape):
            raise ValueError(f"batch['mask'] has shape {tuple(batch['mask'].shape)}, "
                             f"but x has {tuple(batch['x'].shape)}")
        logits, cache = model.forward(batch["x"], training=training)                 # (B, T, V)
        _check_ids(batch, "y", batch["x"].shape, logits.shape[-1], "token ids of the vocabulary")
        loss, ce_cache = k.cross_entropy_forward(logits, batch["y"], batch["mask"])
    return loss, logits, (cache, ce_cache)


def _check_ids(batch: dict, key: str, shape: tuple, n: int | None, what: str) -> None:
    """batch[key] must be an integer array of ``shape`` with values in [0, n): a clear error, not an IndexError."""
    a = batch[key]
    if len(a) == 0:
        raise ValueError(f"the batch is empty (batch['{key}'] has shape {tuple(a.shape)}); give at least one row")
    if a.dtype.kind not in "iu" or tuple(a.shape) != tuple(shape):
        raise ValueError(f"batch['{key}'] must be an integer array of shape {tuple(shape)}, "
                         f"got {a.dtype} with shape {tuple(a.shape)}")
    lo, hi = int(a.min()), int(a.max())
    if n is not None and (lo < 0 or hi >= n):
        raise ValueError(f"batch['{key}'] holds values in [{lo}, {hi}], outside the {n} {what} [0, {n}); "
                         f"check the data against the model (vocabulary size, number of classes, block size)")


def loss_and_grads(model, batch: dict, *, training: bool = True, weight: float = 1.0):
    """(weight * loss, weight * gradients) of one batch: gradients of the trainable parameters only.

    ``weight`` scales the backward pass from its start (dloss = weight), which is how the shards of
    a batch shared by worker threads get their share of the gradient (minilora.fast.parallel).
    """
    loss, _, (cache, ce_cache) = forward_loss(model, batch, training=training)
    dlogits = model.kernels.cross_entropy_backward(ce_cache, weight)
    return weight * loss, model.backward(dlogits, cache)
