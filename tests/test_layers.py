"""Specification of the layers: each backward equals central differences in float64."""
import numpy as np
import pytest

from minilora.nn.gradcheck import check_layer
from minilora.nn.layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                             embedding_forward, gelu_backward, gelu_forward, layernorm_backward,
                             layernorm_forward, linear_backward, linear_forward, log_softmax)

B, T, C, D = 2, 3, 5, 4


def test_linear_backward_matches_numerical_gradient(rng):
    """dx, dW, db of y = x W^T + b agree with central differences (rel. error < 1e-7)."""
    x, W, b = rng.standard_normal((B, T, C)), rng.standard_normal((D, C)), rng.standard_normal(D)
    errors = check_layer(linear_forward, linear_backward, [x, W, b], names=["x", "W", "b"])
    assert max(errors.values()) < 1e-7, errors


def test_linear_stores_weights_as_d_out_by_d_in(rng):
    """W is (d_out, d_in) as in the paper: y = x @ W.T has d_out features."""
    y, _ = linear_forward(rng.standard_normal((B, T, C)), rng.standard_normal((D, C)), None)
    assert y.shape == (B, T, D)


def test_frozen_linear_computes_no_weight_gradient(rng):
    """weight_grad=False returns dx only; dW and db are None (LoRA's saving)."""
    x, W = rng.standard_normal((B, T, C)), rng.standard_normal((D, C))
    _, cache = linear_forward(x, W, np.zeros(D))
    dx, dW, db = linear_backward(rng.standard_normal((B, T, D)), cache, weight_grad=False)
    assert dx.shape == x.shape and dW is None and db is None


def test_embedding_backward_matches_numerical_gradient(rng):
    """dW of a lookup equals central differences, repeated tokens included."""
    idx = np.array([[0, 2, 2], [1, 2, 0]])
    W = rng.standard_normal((4, C))
    errors = check_layer(embedding_forward, embedding_backward, [idx, W], wrt=[1], names=["W"])
    assert errors["W"] < 1e-7


def test_embedding_backward_adds_repeated_tokens(rng):
    """A token used twice gets the sum of both upstream gradients."""
    idx = np.array([[3, 3]])
    dW = embedding_backward(np.ones((1, 2, C)), (idx, 5))
    assert np.array_equal(dW[3], 2 * np.ones(C)) and not dW[[0, 1, 2, 4]].any()


def test_layernorm_backward_matches_numerical_gradient(rng):
    """dx, dgamma, dbeta of layer norm agree with central differences."""
    x = rng.standard_normal((B, T, C)) * 3 + 1
    g, b = rng.standard_normal(C), rng.standard_normal(C)
    errors = check_layer(layernorm_forward, layernorm_backward, [x, g, b], names=["x", "gamma", "beta"])
    assert max(errors.values()) < 1e-7, errors


def test_frozen_layernorm_computes_no_parameter_gradient(rng):
    """param_grads=False returns the same dx and no dgamma, dbeta (frozen gains cost nothing)."""
    x, g, b = rng.standard_normal((B, T, C)), rng.standard_normal(C), rng.standard_normal(C)
    dy = rng.standard_normal((B, T, C))
    _, cache = layernorm_forward(x, g, b)
    dx, dgamma, dbeta = layernorm_backward(dy, cache, param_grads=False)
    assert dgamma is None and dbeta is None
    assert np.allclose(dx, layernorm_backward(dy, cache)[0], rtol=0, atol=1e-15)


def test_layernorm_output_has_zero_mean_unit_variance(rng):
    """With gamma = 1, beta = 0 every row has mean 0 and variance 1 (up to eps)."""
    y, _ = layernorm_forward(rng.standard_normal((B, T, 64)) * 5 + 2, np.ones(64), np.zeros(64))
    assert np.allclose(y.mean(-1), 0, atol=1e-6) and np.allclose(y.var(-1), 1, atol=1e-3)


def test_gelu_backward_matches_numerical_gradient(rng):
    """The tanh-GELU derivative agrees with central differences."""
    errors = check_layer(gelu_forward, lambda d, c: (gelu_backward(d, c),),
                         [rng.standard_normal((B, T, C)) * 2])
    assert errors["input0"] < 1e-7


def test_gelu_matches_its_closed_form_at_known_points():
    """GELU(0) = 0, GELU(x) -> x for large x and -> 0 for very negative x."""
    y, _ = gelu_forward(np.array([0.0, 10.0, -10.0]))
    assert np.allclose(y, [0.0, 10.0, 0.0], atol=1e-6)


def test_cross_entropy_backward_matches_numerical_gradient(rng):
    """dlogits of the masked mean NLL agrees with central differences."""
    logits = rng.standard_normal((B, T, 7))
    targets = rng.integers(0, 7, (B, T))
    mask = np.array([[0, 1, 1], [1, 0, 1]], dtype=np.float64)
    errors = check_layer(lambda z: (np.array(cross_entropy_forward(z, targets, mask)[0]),
                                    cross_entropy_forward(z, targets, mask)[1]),
                         lambda d, c: (cross_entropy_backward(c, float(d)),), [logits])
    assert errors["input0"] < 1e-7


def test_cross_entropy_of_uniform_logits_is_log_v():
    """Equal logits over V classes give loss log(V), whatever the targets."""
    loss, _ = cross_entropy_forward(np.zeros((2, 3, 11)), np.array([[1, 2, 3], [4, 5, 6]]))
    assert loss == pytest.approx(np.log(11))


def test_cross_entropy_ignores_masked_positions(rng):
    """Changing the logits of a masked-out position changes neither loss nor gradient there."""
    logits = rng.standard_normal((1, 3, 5))
    targets, mask = np.array([[0, 1, 2]]), np.array([[1.0, 0.0, 1.0]])
    loss_a, cache = cross_entropy_forward(logits, targets, mask)
    logits[0, 1] += 100.0
    loss_b, _ = cross_entropy_forward(logits, targets, mask)
    assert loss_a == pytest.approx(loss_b)
    assert not cross_entropy_backward(cache)[0, 1].any()


def test_cross_entropy_with_empty_mask_is_an_error():
    """A mask with no position selected is a clear error, not a division by zero."""
    with pytest.raises(ValueError, match="mask selects no position"):
        cross_entropy_forward(np.zeros((1, 2, 3)), np.zeros((1, 2), int), np.zeros((1, 2)))


def test_log_softmax_is_stable_for_huge_logits():
    """Subtracting the max keeps log-softmax finite for logits of 1e4."""
    out = log_softmax(np.array([[1e4, 0.0, -1e4]]))
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(0.0)
