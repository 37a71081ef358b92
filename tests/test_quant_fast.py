"""Spec: the one-gather dequantization every QLoRA product uses (minilora.adapters.quant_fast).

Expected values: the textbook ``QuantizedTensor.dequantize()`` / ``block_absmax()``, bit for bit.
"""
import numpy as np
import pytest

from minilora.nn import backend
from minilora.adapters.quant_codes import QUANT_TYPES
from minilora.adapters.quant_fast import block_absmax_fast, dequantize_fast
from minilora.adapters.quant_tensor import quantize

needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA GPU")
SHAPES = [(64, 48), (37, 41), (3, 5), (1,), (300, 700)]    # whole blocks, odd count, one partial block, > 256 blocks


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fast_dequantization_equals_the_textbook_form_bit_for_bit(quant_type, double_quant, shape):
    """dequantize_fast(q) == q.dequantize() exactly, for whole and partial blocks, odd counts and DQ."""
    x = (np.random.default_rng(0).standard_normal(shape) * 0.02).astype(np.float32)
    qw = quantize(x, quant_type, 64, double_quant)
    expected, received = qw.dequantize(), dequantize_fast(qw)
    assert received.dtype == expected.dtype and received.shape == expected.shape, \
        f"expected {expected.dtype} {expected.shape}, got {received.dtype} {received.shape}"
    assert np.array_equal(received, expected), f"{(received != expected).sum()} values differ"
    assert np.array_equal(block_absmax_fast(qw), qw.block_absmax()), "block scales differ"


def test_fast_dequantization_casts_the_float32_products_to_the_asked_dtype():
    """In float64 it returns the float32 products cast, as the textbook form does (gradient checks rely on it)."""
    qw = quantize(np.random.default_rng(1).standard_normal((16, 64)), "nf4", 64, True)
    received = dequantize_fast(qw, np.float64)
    assert received.dtype == np.float64, f"expected float64, got {received.dtype}"
    assert np.array_equal(received, qw.dequantize(np.float64)), "float64 results differ"


def test_fast_dequantization_returns_a_fresh_array_each_call():
    """Two calls give two arrays: writing to one (a caller's in-place op) cannot corrupt the next product."""
    qw = quantize(np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32))
    a, b = dequantize_fast(qw), dequantize_fast(qw)
    a[...] = 0
    assert np.array_equal(b, qw.dequantize()), "the second result changed when the first was overwritten"


@needs_gpu
def test_fast_dequantization_on_cupy_equals_numpy():
    """The same bytes give the same weights on the GPU (CuPy's take and views)."""
    x = (np.random.default_rng(3).standard_normal((96, 200)) * 0.02).astype(np.float32)
    expected = dequantize_fast(quantize(x, "nf4", 64, True))
    backend.set_backend("cupy")
    received = backend.to_numpy(dequantize_fast(quantize(backend.asarray(x), "nf4", 64, True)))
    assert np.array_equal(received, expected), f"{(received != expected).sum()} values differ"
