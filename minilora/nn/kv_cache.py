"""Causal attention with a key/value cache: the new positions attend to everything before them.

When a model generates text one token at a time, position t's attention output needs q_t and the
keys and values of positions 0..t. Under the causal mask (Vaswani et al. 2017, §3.2.3) the keys and
values of positions 0..t-1 never change once computed, so they are kept (the "KV cache") and each
step computes the projections of ONE new position instead of all t + 1 again:

    scores = q_new K^T / sqrt(HS)          q_new (T new positions), K = [K_cached; k_new] (S + T)
    y_new  = softmax(scores + mask) V      the mask hides, for new position i, keys after S + i

With S cached positions and T new ones the mask is the causal mask shifted by S: new position i
is absolute position S + i and sees keys 0..S + i. T = 1 (a decoding step) needs no mask at all;
S = 0 (the prompt) is the ordinary causal attention of ``minilora.nn.attention``.

The textbook full forward (``attention.attention_forward``) is untouched; this is inference only
(no backward: nothing is trained through a cache). The cache is a plain value: a function returns
a new one rather than changing its argument (the concatenation copies S positions per step, the
same O(S) work as the step's own q K^T, so the cost stays linear in S per token).

Shapes: B batch, T new positions, S cached positions, C channels, NH heads, HS = C // NH.
"""
from __future__ import annotations

import math

from minilora.nn.attention import merge_heads, softmax, split_heads
from minilora.nn.backend import xp


def shifted_causal_mask(T: int, S: int, dtype):
    """(T, S + T) additive mask: new position i (absolute S + i) sees keys 0..S + i, not the ones after."""
    return xp.triu(xp.full((T, S + T), -xp.inf, dtype=dtype), k=S + 1)


def cached_attention_forward(q, k, v, layer_cache, n_head: int):
    """Attention of T new positions over the S cached ones and themselves.

    q, k, v (B, T, C): the new positions' projections. layer_cache: None (nothing cached, S = 0)
    or (K, V), each (B, NH, S, HS).  ->  y (B, T, C), new layer cache (K', V'), each
    (B, NH, S + T, HS). Equals the last T rows of ``attention_forward`` over all S + T positions.
    """
    B, T, C = q.shape
    if C % n_head:
        raise ValueError(f"attention: C = {C} is not divisible by n_head = {n_head}")
    scale = 1.0 / math.sqrt(C // n_head)
    qh, kh, vh = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)   # (B, NH, T, HS)
    if layer_cache is not None:
        K_old, V_old = layer_cache
        kh, vh = xp.concatenate([K_old, kh], axis=2), xp.concatenate([V_old, vh], axis=2)  # (B, NH, S + T, HS)
    S = kh.shape[2] - T
    scores = scale * (qh @ kh.transpose(0, 1, 3, 2))                     # (B, NH, T, S + T)
    if T > 1:                                                            # one new position sees every key
        scores = scores + shifted_causal_mask(T, S, q.dtype)
    yh = softmax(scores) @ vh                                            # (B, NH, T, HS)
    return merge_heads(yh), (kh, vh)


def cache_length(cache) -> int:
    """S, the number of positions a model cache (one (K, V) per block, or None) holds."""
    return 0 if not cache else int(cache[0][0].shape[2])
