"""Spec of minilora.nn.kv_cache: attention of new positions over cached keys and values.

Float64 throughout; the cached and the full attention compute the same sums in the same order per
row, so they agree to rounding (1e-12 leaves room for BLAS's blocking).
"""
import numpy as np
import pytest

from minilora.nn.attention import attention_forward, causal_mask
from minilora.nn.kv_cache import cache_length, cached_attention_forward, shifted_causal_mask

B, C, NH = 2, 12, 3


def qkv(rng, T):
    return [rng.standard_normal((B, T, C)) for _ in range(3)]


def test_shifted_mask_with_nothing_cached_is_the_causal_mask():
    """S = 0: the mask of the new positions is the ordinary causal mask."""
    got, want = shifted_causal_mask(5, 0, np.float64), causal_mask(5, np.float64)
    assert np.array_equal(got, want), f"expected\n{want}\nreceived\n{got}"


@pytest.mark.parametrize("S, T", [(0, 7), (4, 1), (4, 3), (6, 2)])
def test_cached_attention_equals_the_last_rows_of_full_attention(rng, S, T):
    """S positions through the cache, then T new ones: the same outputs as attention over all S + T."""
    q, k, v = qkv(rng, S + T)
    full, _ = attention_forward(q, k, v, NH)                                # (B, S + T, C)
    cache = None
    if S:
        _, cache = cached_attention_forward(q[:, :S], k[:, :S], v[:, :S], None, NH)
    y, cache = cached_attention_forward(q[:, S:], k[:, S:], v[:, S:], cache, NH)
    err = float(np.abs(y - full[:, S:]).max())
    assert err < 1e-12, f"expected the last {T} rows of the full attention, max error {err:.2e}"
    assert cache_length([cache]) == S + T, f"expected {S + T} cached positions, received {cache_length([cache])}"


def test_one_token_at_a_time_reproduces_every_row(rng):
    """Feeding positions one by one (the decoding loop) gives each row of the full causal attention."""
    q, k, v = qkv(rng, 6)
    full, _ = attention_forward(q, k, v, NH)
    cache, rows = None, []
    for t in range(6):
        y, cache = cached_attention_forward(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache, NH)
        rows.append(y)
    err = float(np.abs(np.concatenate(rows, axis=1) - full).max())
    assert err < 1e-12, f"expected the full attention row by row, max error {err:.2e}"


def test_the_cache_passed_in_is_not_changed(rng):
    """The cache is a value: a step returns a new one and leaves its argument as it was."""
    q, k, v = qkv(rng, 3)
    _, cache = cached_attention_forward(q[:, :2], k[:, :2], v[:, :2], None, NH)
    before = [c.copy() for c in cache]
    cached_attention_forward(q[:, 2:], k[:, 2:], v[:, 2:], cache, NH)
    assert all(np.array_equal(a, b) for a, b in zip(before, cache)), "expected the old cache unchanged"
    assert cache[0].shape == (B, NH, 2, C // NH), f"expected (B, NH, 2, HS), received {cache[0].shape}"
