"""Causal multi-head self-attention, the core between the projections (Vaswani et al. 2017).

The projections q = x Wq^T, k = x Wk^T, v = x Wv^T and the output projection Wo are ordinary
linear layers applied by the model, so that LoRA can adapt any of them (Hu et al. 2021, §4.2
names exactly these four matrices). This module holds only what sits between them:

    att = softmax(q k^T / sqrt(HS) + causal mask)    per head
    y   = att v

Shapes: B batch, T time, C channels, NH heads, HS = C // NH head size.
"""
from __future__ import annotations

import math

from minilora.backend import xp


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


def attention_forward(q, k, v, n_head: int):
    """Scaled dot-product attention with a causal mask.

    q, k, v (B, T, C)  ->  y (B, T, C);  cache = (qh, kh, vh, att, scale, n_head),
    where qh, kh, vh are (B, NH, T, HS) and att (B, NH, T, T) holds the softmax weights.
    """
    B, T, C = q.shape
    if C % n_head:
        raise ValueError(f"attention: C = {C} is not divisible by n_head = {n_head}")
    scale = 1.0 / math.sqrt(C // n_head)
    qh, kh, vh = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)
    scores = qh @ kh.transpose(0, 1, 3, 2)                    # (B, NH, T, T)
    scores *= scale                                           # in place: (B, NH, T, T) is the largest buffer here
    scores += causal_mask(T, scores.dtype)
    scores -= scores.max(axis=-1, keepdims=True)              # stable softmax
    att = xp.exp(scores, out=scores)                          # reuse the buffer: att is (B, NH, T, T)
    att /= att.sum(axis=-1, keepdims=True)
    y = merge_heads(att @ vh)                                 # (B, T, C)
    return y, (qh, kh, vh, att, scale, n_head)


def attention_backward(dy, cache):
    """dy (B, T, C) -> dq, dk, dv, each (B, T, C). Read it as the forward, bottom to top."""
    qh, kh, vh, att, scale, n_head = cache
    ### BEGIN SOLUTION
    dyh = split_heads(dy, n_head)                             # (B, NH, T, HS)
    # forward: yh = att @ vh
    datt = dyh @ vh.transpose(0, 1, 3, 2)                     # (B, NH, T, T)
    dvh = att.transpose(0, 1, 3, 2) @ dyh                     # (B, NH, T, HS)
    # forward: att = softmax(scores): dscores = att * (datt - sum_j datt_j att_j).
    # Masked positions have att = 0, so they get no gradient, as they should.
    # Computed in place in datt's buffer, to avoid two more (B, NH, T, T) temporaries.
    datt -= (datt * att).sum(axis=-1, keepdims=True)
    dscores = datt
    dscores *= att
    dscores *= scale                                          # forward: scores = q k^T * scale
    dqh = dscores @ kh                                        # forward: scores = qh @ kh^T
    dkh = dscores.transpose(0, 1, 3, 2) @ qh
    ### END SOLUTION
    return merge_heads(dqh), merge_heads(dkh), merge_heads(dvh)
