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
        logits, cache = model.classify(batch["x"], batch["last"], training=training)   # (B, K)
        loss, ce_cache = k.cross_entropy_forward(logits, batch["labels"])
    else:
        logits, cache = model.forward(batch["x"], training=training)                 # (B, T, V)
        loss, ce_cache = k.cross_entropy_forward(logits, batch["y"], batch["mask"])
    return loss, logits, (cache, ce_cache)


def loss_and_grads(model, batch: dict, *, training: bool = True, weight: float = 1.0):
    """(weight * loss, weight * gradients) of one batch: gradients of the trainable parameters only.

    ``weight`` scales the backward pass from its start (dloss = weight), which is how the shards of
    a batch shared by worker threads get their share of the gradient (minilora.fast.parallel).
    """
    loss, _, (cache, ce_cache) = forward_loss(model, batch, training=training)
    dlogits = model.kernels.cross_entropy_backward(ce_cache, weight)
    return weight * loss, model.backward(dlogits, cache)
