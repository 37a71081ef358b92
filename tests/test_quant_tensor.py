"""Spec: ``QuantizedTensor``, a 4-bit weight with its scales, and its tensors for files (minilora.adapters.quant_tensor).

Expected values come from the functions it wraps (tested in test_quant.py and test_quant_dq.py)
and from bitsandbytes' state-dict names (QuantState.as_dict(packed=True)).
"""
import json

import numpy as np
import pytest

from minilora import io
from minilora.adapters import quant as q
from minilora.adapters.quant_dq import double_dequantize
from minilora.adapters.quant_tensor import QuantizedTensor, quantize

# bitsandbytes' names for the state of a 4-bit weight "weight" (QuantState.as_dict(packed=True))
BNB_PLAIN_KEYS = {"weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"}
BNB_NESTED_KEYS = BNB_PLAIN_KEYS | {"weight.nested_absmax", "weight.nested_quant_map"}


def gaussian(shape, seed=0, std=0.02):
    """N(0, std^2) float32 weights."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantize_equals_the_blockwise_functions(double_quant):
    """QuantizedTensor.dequantize() is dequantize_4bit of its codes and (decoded) scales, in the input's shape."""
    x = gaussian((40, 72))
    qt = quantize(x, "nf4", 64, double_quant)
    packed, absmax = q.quantize_4bit(x, "nf4", 64)
    scales = double_dequantize(qt.nested) if double_quant else absmax
    expected = q.dequantize_4bit(packed, scales, x.shape)
    assert np.array_equal(qt.packed, packed), "packed codes differ from quantize_4bit's"
    assert qt.dequantize().shape == (40, 72), f"shape {qt.dequantize().shape}"
    assert np.array_equal(qt.dequantize(), expected), "dequantize() differs from the functions it wraps"


def test_dequantize_defaults_to_the_quantized_dtype():
    """A float64 weight dequantizes to float64 unless another dtype is asked for."""
    qt = quantize(gaussian((8, 64)).astype(np.float64))
    assert qt.dtype == "float64" and qt.dequantize().dtype == np.float64, f"dtype {qt.dtype}"
    assert qt.dequantize(np.float32).dtype == np.float32, "an asked dtype must be used"


@pytest.mark.parametrize("double_quant, bits", [(False, 4.5), (True, 4 + 8 / 64 + 32 / 16384 + 32 / 2 ** 20)])
def test_bits_per_parameter_counts_the_stored_arrays(double_quant, bits):
    """A 1024 x 1024 NF4 weight stores 4.5 bits per weight, or 4.127 (plus the offset) double-quantized."""
    qt = quantize(gaussian((1024, 1024)), double_quant=double_quant)
    assert abs(qt.bits_per_parameter - bits) < 1e-12, f"expected {bits}, got {qt.bits_per_parameter}"


@pytest.mark.parametrize("double_quant", [False, True])
def test_tensors_use_bitsandbytes_state_dict_names(double_quant):
    """to_tensors('weight') gives bitsandbytes' keys; the packed codes are a (ceil(n/2), 1) uint8 column."""
    tensors = quantize(gaussian((7, 45)), double_quant=double_quant).to_tensors("weight")
    expected = BNB_NESTED_KEYS if double_quant else BNB_PLAIN_KEYS
    assert set(tensors) == expected, f"expected {sorted(expected)}, got {sorted(tensors)}"
    assert tensors["weight"].shape == (158, 1) and tensors["weight"].dtype == np.uint8, \
        f"packed {tensors['weight'].shape} {tensors['weight'].dtype}, expected (158, 1) uint8"
    state = json.loads(bytes(tensors["weight.quant_state.bitsandbytes__nf4"]).decode())
    assert state["shape"] == [7, 45] and state["blocksize"] == 64 and state["quant_type"] == "nf4", state


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_a_safetensors_file_round_trip_restores_the_same_weights(tmp_path, quant_type, double_quant):
    """to_tensors -> save -> load -> from_tensors gives back identical codes, scales and weights."""
    qt = quantize(gaussian((33, 70)), quant_type, 64, double_quant)
    io.save_tensors(tmp_path / "w.safetensors", qt.to_tensors("blocks.0.attn.wq.weight"))
    tensors, _ = io.load_tensors(tmp_path / "w.safetensors")
    back = QuantizedTensor.from_tensors(tensors, "blocks.0.attn.wq.weight")
    assert (back.shape, back.quant_type, back.blocksize) == (qt.shape, qt.quant_type, qt.blocksize), \
        f"read {back.shape}, {back.quant_type}, {back.blocksize}"
    assert np.array_equal(back.packed, qt.packed), "packed codes changed"
    assert np.array_equal(back.dequantize(), qt.dequantize()), "dequantized weights changed"
    if double_quant:
        assert back.nested.offset == qt.nested.offset, f"offset {qt.nested.offset} -> {back.nested.offset}"


def test_from_tensors_names_the_missing_state():
    """Reading a name without its quant_state entry is a KeyError naming the entry and how it is written."""
    with pytest.raises(KeyError, match="weight.quant_state.bitsandbytes__.*to_tensors"):
        QuantizedTensor.from_tensors({"weight": np.zeros((4, 1), np.uint8)}, "weight")


def test_from_tensors_refuses_a_foreign_code_table():
    """A file whose quant_map is not the standard table would decode differently: a ValueError."""
    tensors = quantize(gaussian(128)).to_tensors("w")
    tensors["w.quant_map"] = tensors["w.quant_map"][::-1].copy()
    with pytest.raises(ValueError, match="not the standard nf4 table"):
        QuantizedTensor.from_tensors(tensors, "w")


def test_inconsistent_parts_are_refused():
    """Scales for the wrong block count, both kinds of scales, or a wrong byte count are ValueErrors."""
    qt = quantize(gaussian(256))
    with pytest.raises(ValueError, match="expected 4"):
        QuantizedTensor(qt.packed, qt.absmax[:3], qt.shape)
    with pytest.raises(ValueError, match="exactly one of absmax"):
        QuantizedTensor(qt.packed, qt.absmax, qt.shape, nested=quantize(gaussian(256), double_quant=True).nested)
    with pytest.raises(ValueError, match="must hold 128 uint8 bytes"):
        QuantizedTensor(qt.packed[:-1], qt.absmax, qt.shape)
    with pytest.raises(ValueError, match="unknown quant_type"):
        QuantizedTensor(qt.packed, qt.absmax, qt.shape, quant_type="nf3")
