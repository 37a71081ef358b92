"""Hidden spec of minilora.nn.attention: the identity the fast attention backward is built on.

This file computes part of the backward pass (step 4 of the exercises) by hand, so it is not handed
out: the student workspace lacks it; the teacher's test run keeps it.
"""
import numpy as np

from minilora.nn.attention import attention_forward, split_heads


def test_softmax_backward_row_sums_equal_dy_dot_y(rng):
    """sum_s datt_ts att_ts = dy_t . y_t per head: the identity minilora.fast's backward uses instead of a T x T product."""
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    dy = rng.standard_normal((2, 5, 8))
    y, (_, _, vh, att, _, _) = attention_forward(q, k, v, 2)
    dyh, yh = split_heads(dy, 2), split_heads(y, 2)
    over_T = ((dyh @ vh.transpose(0, 1, 3, 2)) * att).sum(axis=-1)     # (B, NH, T)
    over_HS = (dyh * yh).sum(axis=-1)
    assert np.allclose(over_T, over_HS, rtol=1e-12, atol=1e-12), np.abs(over_T - over_HS).max()
