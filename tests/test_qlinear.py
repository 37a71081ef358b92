"""Spec: the frozen 4-bit linear layer of QLoRA (minilora.adapters.qlinear).

Expected values: the plain linear layer on the dequantized weight (QLoRA eq. 5), and central
differences for the input gradient (minilora.nn.gradcheck) in float64.
"""
import numpy as np
import pytest

from minilora.adapters.qlinear import qlinear_backward, qlinear_forward
from minilora.adapters.quant_tensor import QuantizedTensor, quantize
from minilora.nn.gradcheck import check_layer
from minilora.nn.layers import linear_backward, linear_forward


def layer(seed=0, d_out=24, d_in=40, double_quant=True):
    """A quantized (d_out, d_in) weight, its bias (d_out,) and an input x (2, 3, d_in), all float64 but the codes."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d_out, d_in)) * 0.02
    return quantize(W, "nf4", 64, double_quant), 0.1 * rng.standard_normal(d_out), rng.standard_normal((2, 3, d_in))


def test_forward_is_a_linear_layer_on_the_dequantized_weight():
    """y = x dequant(W)^T + b, equal to linear_forward on the dequantized weight (QLoRA eq. 5)."""
    qw, b, x = layer()
    y, _ = qlinear_forward(x, qw, b)
    expected, _ = linear_forward(x, qw.dequantize(np.float64), b)
    assert y.shape == (2, 3, 24) and y.dtype == np.float64, f"shape {y.shape}, dtype {y.dtype}"
    assert np.array_equal(y, expected), f"max |diff| {np.abs(y - expected).max()}"


def test_forward_computes_in_the_activation_dtype():
    """float32 activations get a float32 output; the weight is dequantized in float32 for them."""
    qw, b, x = layer()
    y, _ = qlinear_forward(x.astype(np.float32), qw, b.astype(np.float32))
    assert y.dtype == np.float32, f"expected float32, got {y.dtype}"


def test_input_gradient_matches_central_differences():
    """dx from qlinear_backward agrees with central differences in float64 (relative error < 1e-7)."""
    qw, b, x = layer(seed=1)
    errors = check_layer(lambda x_: qlinear_forward(x_, qw, b), qlinear_backward, [x], names=["x"])
    assert errors["x"] < 1e-7, f"relative error {errors['x']:.2e}"


def test_backward_equals_the_frozen_linear_backward_and_returns_no_weight_gradient():
    """The only gradient is dx = dy dequant(W), the same as linear_backward with a frozen weight."""
    qw, b, x = layer(seed=2)
    y, cache = qlinear_forward(x, qw, b)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx = qlinear_backward(dy, cache)
    _, lin_cache = linear_forward(x, qw.dequantize(np.float64), b)
    expected, dW, db = linear_backward(dy, lin_cache, weight_grad=False)
    assert not isinstance(dx, tuple) and dW is None and db is None, "a frozen 4-bit weight has no gradient"
    assert np.array_equal(dx, expected), f"max |diff| {np.abs(dx - expected).max()}"


def test_the_cache_holds_the_4bit_weight_not_a_dequantized_copy():
    """Between forward and backward only the quantized weight is kept: no (d_out, d_in) float array."""
    qw, b, x = layer()
    _, cache = qlinear_forward(x, qw, b)
    held = [c for c in cache if isinstance(c, np.ndarray) and c.shape == qw.shape]
    assert cache[0] is qw and not held, f"cache holds {[type(c).__name__ for c in cache]}"


def test_a_weight_that_is_not_2d_is_refused():
    """A linear layer needs a (d_out, d_in) weight: a 3-D quantized tensor is a ValueError saying so."""
    qw = quantize(np.random.default_rng(0).standard_normal((2, 4, 8)))
    with pytest.raises(ValueError, match="needs a 2-D weight"):
        qlinear_forward(np.ones((3, 8)), qw)


def test_a_feature_count_that_does_not_match_the_weight_is_refused():
    """x with 39 features for a (24, 40) weight is a ValueError giving d_in."""
    qw, b, x = layer()
    with pytest.raises(ValueError, match="d_in = 40"):
        qlinear_forward(x[..., :39], qw, b)


def test_an_unquantized_weight_is_refused():
    """Passing a plain array instead of a QuantizedTensor is a TypeError saying to quantize first."""
    with pytest.raises(TypeError, match="quantize the weight first"):
        qlinear_forward(np.ones((3, 8)), np.ones((4, 8)))
