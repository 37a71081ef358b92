"""Causal multi-head self-attention, the core between the projections (Vaswani et al. 2017).

The projections q = x Wq^T, k = x Wk^T, v = x Wv^T and the output projection Wo are ordinary
linear layers applied by the model, so that LoRA can adapt any of them (Hu et al. 2021, §4.2
names exactly these four matrices). This module holds only what sits between them:

    att = softmax(q k^T / sqrt(HS) + causal mask)    per head
    y   = att v

Shapes: B batch, T time, C channels, NH heads, HS = C // NH head size.

This is the textbook form. ``minilora.fast.attention`` computes the same numbers with less memory
traffic (the scale on q, the softmax in place, the backward's row sums from dy . y), tested equal.
"""
from __future__ import annotations

import math

from minilora.nn.backend import xp


def split_heads(x, n_head: int):
    """(B, T, C) -> (B, NH, T, HS)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, NH, T, HS) -> (B, T, C)."""
    B, NH, T, HS = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)


def causal_mask(T: int, dtype):
    """(T, T) additive mask: 0 on and below the diagonal, -inf above (no peeking ahead)."""
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def softmax(scores):
    """Softmax over the last axis, stable: subtract each row's max first (it cancels in the ratio)."""
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_forward(q, k, v, n_head: int):
    """Scaled dot-product attention with a causal mask (Vaswani et al. 2017, eq. 1).

    q, k, v (B, T, C)  ->  y (B, T, C);  cache = (qh, kh, vh, att, scale, n_head), where qh, kh, vh
    are (B, NH, T, HS) and att (B, NH, T, T) holds the softmax weights.
    """
    B, T, C = q.shape
    if C % n_head:
        raise ValueError(f"attention: C = {C} is not divisible by n_head = {n_head}")
    scale = 1.0 / math.sqrt(C // n_head)
    qh, kh, vh = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)
    scores = scale * (qh @ kh.transpose(0, 1, 3, 2)) + causal_mask(T, q.dtype)   # (B, NH, T, T)
    att = softmax(scores)                                     # each row a distribution over past positions
    yh = att @ vh                                             # (B, NH, T, HS)
    return merge_heads(yh), (qh, kh, vh, att, scale, n_head)


def attention_backward(dy, cache):
    """dy (B, T, C) -> dq, dk, dv, each (B, T, C). Read it as the forward, bottom to top."""
    qh, kh, vh, att, scale, n_head = cache
    ### BEGIN SOLUTION
    dyh = split_heads(dy, n_head)                             # (B, NH, T, HS)
    # forward: yh = att @ vh
    datt = dyh @ vh.transpose(0, 1, 3, 2)                     # (B, NH, T, T)
    dvh = att.transpose(0, 1, 3, 2) @ dyh                     # (B, NH, T, HS)
    # forward: att = softmax(scores), row by row: dscores = att * (datt - sum_j datt_j att_j).
    # Masked positions have att = 0, so they get no gradient, as they should.
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # forward: scores = scale * qh @ kh^T
    dqh = scale * (dscores @ kh)
    dkh = scale * (dscores.transpose(0, 1, 3, 2) @ qh)
    ### END SOLUTION
    return merge_heads(dqh), merge_heads(dkh), merge_heads(dvh)
