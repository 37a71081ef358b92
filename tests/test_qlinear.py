"""Spec: the frozen 4-bit linear layer of QLoRA and its registry kind (minilora.adapters.qlinear).

Expected values: the plain linear layer on the dequantized weight (QLoRA eq. 5), and central
differences for the input gradient (minilora.nn.gradcheck) in float64.
"""
import numpy as np
import pytest

from minilora.adapters.qlinear import (Held4bit, from_storage, frozen_weight, hold_4bit, qlinear_backward,
                                       qlinear_forward, quant_options, reload_4bit, storage_tensors)
from minilora.adapters.quant_tensor import quantize
from minilora.nn.gradcheck import check_layer
from minilora.nn.layers import linear_backward, linear_forward
from minilora.nn.linears import get_kind


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


# --------------------------------------------------------------------------- a 4-bit weight as data, the kind


@pytest.mark.parametrize("double_quant", [False, True])
def test_storage_tensors_and_options_describe_the_same_weight(double_quant):
    """from_storage(storage_tensors(q), **quant_options(q)) dequantizes to q's weights, with no array copied."""
    qw, _, _ = layer(double_quant=double_quant)
    parts = storage_tensors(qw)
    back = from_storage(parts, **quant_options(qw))
    expected_roles = {"codes", "absmax"} | ({"nested_absmax", "nested_offset"} if double_quant else set())
    assert set(parts) == expected_roles, f"expected roles {sorted(expected_roles)}, got {sorted(parts)}"
    assert back.packed is qw.packed, "the codes were copied"
    assert np.array_equal(back.dequantize(), qw.dequantize()), "the weights differ"


def test_the_qlinear_kind_runs_the_pair_on_the_specs_tensors(rng):
    """The kind "qlinear" gives the pair's output and dx, and a bias gradient only when the bias trains."""
    qw, b, x = layer(seed=4)
    t = {**storage_tensors(qw), "bias": b}
    kind = get_kind("qlinear")
    y, cache = kind.forward(x, t, **quant_options(qw))
    expected, _ = qlinear_forward(x, qw, b)
    assert np.array_equal(y, expected), f"max |diff| {np.abs(y - expected).max()}"
    dy = rng.standard_normal(y.shape)
    for needs in (frozenset(), frozenset({"bias"})):
        dx, grads = kind.backward(dy, cache, needs)
        assert set(grads) == set(needs), f"asked for {sorted(needs)}, got {sorted(grads)}"
        assert np.array_equal(dx, qlinear_backward(dy, cache)), "dx differs from the pair's"
    assert np.allclose(grads["bias"], dy.sum(axis=(0, 1))), "db is not dy summed over rows"


@pytest.mark.parametrize("role", ["codes", "absmax", "nested_absmax"])
def test_a_4bit_weight_marked_trainable_is_refused(role):
    """No gradient exists for a 4-bit weight (QLoRA eq. 6): asking for one is a RuntimeError saying so."""
    qw, b, x = layer()
    kind = get_kind("qlinear")
    y, cache = kind.forward(x, {**storage_tensors(qw), "bias": b}, **quant_options(qw))
    with pytest.raises(RuntimeError, match="gets no gradient"):
        kind.backward(np.ones_like(y), cache, frozenset({role}))


def test_hold_keeps_the_4bit_weight_and_reload_dequantizes_it_again():
    """hold_4bit swaps the float W (by identity) for a Held4bit; reload_4bit gives the same W back."""
    qw, b, x = layer()
    t, quant = storage_tensors(qw), quant_options(qw)
    W = frozen_weight(np.float64, t, quant)
    held = hold_4bit((x, W, b), W, t, quant)
    assert held[0] is x and held[2] is b and isinstance(held[1], Held4bit), f"got {[type(c).__name__ for c in held]}"
    back = reload_4bit(held)
    assert back[1] is not W and np.array_equal(back[1], W), "reloaded weight differs"


def test_a_float_base_passes_through_unchanged():
    """With no quantization options the helpers are the identity: W0 is t["weight"] and the cache is kept."""
    W = np.ones((3, 4))
    cache = (W, 2.0)
    assert frozen_weight(np.float64, {"weight": W}, {}) is W, "a float W0 was not returned as is"
    assert hold_4bit(cache, W, {"weight": W}, {}) is cache, "a float cache was changed"
