"""Causal self-attention with less memory traffic: the same numbers as ``minilora.nn.attention``.

Three changes from the textbook form, each tested equal to it in float64 (tests/test_fast.py):
  * the scale goes on q, not on the (B, NH, T, T) scores: (s q) k^T = s (q k^T), and q is T / HS
    times smaller;
  * the mask, the max subtraction and the exponential work in the scores' own buffer;
  * the backward's softmax row sums sum_j datt_ij att_ij are dy_i . y_i, a sum over HS instead of
    T (the "D" of FlashAttention, Dao et al. 2022), so no second (B, NH, T, T) product is formed.

Shapes: B batch, T time, C channels, NH heads, HS = C // NH head size.
"""
from __future__ import annotations

import math

from minilora.nn.attention import causal_mask, merge_heads, split_heads
from minilora.nn.backend import xp
from minilora.fast.kernels import sum_last


def attention_forward(q, k, v, n_head: int):
    """Scaled dot-product attention with a causal mask.

    q, k, v (B, T, C)  ->  y (B, T, C);  cache = (qs, kh, vh, att, scale, n_head, yh), where
    qs = scale * qh, kh, vh and yh are (B, NH, T, HS) and att (B, NH, T, T) holds the softmax
    weights.
    """
    B, T, C = q.shape
    if C % n_head:
        raise ValueError(f"attention: C = {C} is not divisible by n_head = {n_head}")
    scale = 1.0 / math.sqrt(C // n_head)
    # The scale goes on q, not on the scores: (q s) k^T = s (q k^T), and q is T/HS times smaller.
    qs, kh, vh = split_heads(q * scale, n_head), split_heads(k, n_head), split_heads(v, n_head)
    scores = qs @ kh.transpose(0, 1, 3, 2)                    # (B, NH, T, T)
    scores += causal_mask(T, scores.dtype)                    # in place: (B, NH, T, T) is the largest buffer here
    scores -= scores.max(axis=-1, keepdims=True)              # stable softmax
    att = xp.exp(scores, out=scores)                          # reuse the buffer: att is (B, NH, T, T)
    att /= sum_last(att)                                      # normalise each row
    yh = att @ vh                                             # (B, NH, T, HS)
    return merge_heads(yh), (qs, kh, vh, att, scale, n_head, yh)


def attention_backward(dy, cache):
    """dy (B, T, C) -> dq, dk, dv, each (B, T, C). Read it as the forward, bottom to top."""
    qs, kh, vh, att, scale, n_head, yh = cache
    dyh = split_heads(dy, n_head)                             # (B, NH, T, HS)
    # forward: yh = att @ vh
    datt = dyh @ vh.transpose(0, 1, 3, 2)                     # (B, NH, T, T)
    dvh = att.transpose(0, 1, 3, 2) @ dyh                     # (B, NH, T, HS)
    # forward: att = softmax(scores): dscores = att * (datt - sum_j datt_j att_j).
    # The row sums need no (B, NH, T, T) product: sum_j datt_ij att_ij = dy_i . (sum_j att_ij v_j)
    # = dy_i . y_i, a sum over HS instead of T (the "D" of FlashAttention, Dao et al. 2022).
    # Masked positions have att = 0, so they get no gradient, as they should.
    datt -= sum_last(dyh * yh)                                # in place in datt's buffer
    dscores = datt
    dscores *= att
    # forward: scores = qs @ kh^T with qs = scale * qh
    dqh = dscores @ kh
    dqh *= scale
    dkh = dscores.transpose(0, 1, 3, 2) @ qs
    return merge_heads(dqh), merge_heads(dkh), merge_heads(dvh)
