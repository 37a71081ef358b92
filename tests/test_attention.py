"""Specification of causal multi-head attention."""
import numpy as np

from minilora.nn.attention import attention_backward, attention_forward, merge_heads, split_heads
from minilora.nn.gradcheck import check_layer


def test_attention_backward_matches_numerical_gradient(rng):
    """dq, dk, dv agree with central differences in float64."""
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    errors = check_layer(lambda q, k, v: attention_forward(q, k, v, 2), attention_backward,
                         [q, k, v], names=["q", "k", "v"])
    assert max(errors.values()) < 1e-7, errors


def test_attention_is_causal(rng):
    """Changing a later token's k or v does not change any earlier output."""
    q, k, v = (rng.standard_normal((1, 6, 8)) for _ in range(3))
    y1, _ = attention_forward(q, k, v, 2)
    k[0, 4:] += 5.0
    v[0, 4:] -= 3.0
    y2, _ = attention_forward(q, k, v, 2)
    assert np.allclose(y1[0, :4], y2[0, :4]), "positions 0..3 must not see positions 4..5"
    assert not np.allclose(y1[0, 4:], y2[0, 4:])


def test_attention_weights_are_a_distribution_over_the_past(rng):
    """Each row of att sums to 1 and is zero above the diagonal."""
    q, k, v = (rng.standard_normal((2, 4, 6)) for _ in range(3))
    _, cache = attention_forward(q, k, v, 3)
    att = cache[3]
    assert np.allclose(att.sum(-1), 1.0)
    assert not np.triu(att, k=1).any()


def test_first_token_attends_only_to_itself(rng):
    """At t = 0 the output is v_0 (per head), whatever q and k are."""
    q, k, v = (rng.standard_normal((1, 3, 4)) for _ in range(3))
    y, _ = attention_forward(q, k, v, 2)
    assert np.allclose(y[0, 0], v[0, 0])


def test_split_then_merge_heads_is_the_identity(rng):
    """(B, T, C) -> (B, NH, T, HS) -> (B, T, C) gives the input back."""
    x = rng.standard_normal((2, 3, 8))
    assert split_heads(x, 4).shape == (2, 4, 3, 2)
    assert np.array_equal(merge_heads(split_heads(x, 4)), x)
