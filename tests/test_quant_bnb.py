"""Spec: minilora's 4-bit quantization agrees with bitsandbytes (files made by scripts/make_bnb_fixtures.py).

tests/fixtures/bnb/ holds what bitsandbytes' CPU path returned for small fixed-seed matrices
(versions in versions.json). Plain NF4 and FP4 must agree bit for bit: packed bytes, block
scales, dequantized weights. Double quantization agrees to a tolerance: bitsandbytes' C++ 8-bit
quantizer looks codes up in a 65,536-bin table instead of searching for the nearest, so a few
scale codes in a thousand land one step from the nearest; minilora must decode bitsandbytes' own
nested state exactly, though. FP4 has two zero patterns; bitsandbytes' C++ dequantizer returns
-0.0 for one of them where its Python path returns +0.0, so weights are compared as numbers
(where -0.0 == 0.0). Dequantized weights in the files come from bitsandbytes' reference
(pure-PyTorch) path; its AVX-512 CPU kernel disagrees with it when blocks straddle rows of a
length that is a multiple of 16 (the counts are recorded in versions.json, "cpu_kernel_mismatches").
The same checks against the live library are in test_quant_bnb_live.py.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from minilora import io
from minilora.adapters import quant_codes as qc
from minilora.adapters.qlinear import qlinear_backward, qlinear_forward
from minilora.adapters.quant import dequantize_4bit, quantize_4bit
from minilora.adapters.quant_dq import double_dequantize, double_quantize
from minilora.adapters.quant_tensor import QuantizedTensor, quantize

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bnb"
# float32 products summed in another order: relative differences of a few 1e-7 at these sizes
MATMUL_RTOL = 1e-5


def load(name):
    """The named arrays of one fixture file."""
    return io.load_tensors(FIXTURES / f"{name}.safetensors")[0]


def info():
    return json.loads((FIXTURES / "versions.json").read_text())


# --------------------------------------------------------------------------- tables
def test_derived_tables_equal_bitsandbytes_tables_bit_for_bit():
    """NF4 and FP4 (get_4bit_type) and the signed and unsigned dynamic maps equal the library's, bit for bit."""
    t = load("tables")
    pairs = {"nf4_code": qc.nf4_code(), "fp4_code": qc.fp4_code(),
             "dynamic_map_signed": qc.dynamic_map(signed=True), "dynamic_map_unsigned": qc.dynamic_map(signed=False)}
    for name, mine in pairs.items():
        diff = int((mine.view(np.uint32) != t[name].view(np.uint32)).sum())
        assert diff == 0, f"{name}: {diff} values differ from bitsandbytes (max |diff| {np.abs(mine - t[name]).max()})"


def test_nf4_equals_bitsandbytes_create_normal_map_built_with_scipy():
    """The 16 distinct values of create_normal_map() (scipy's norm.ppf) are minilora's NF4 table."""
    t = load("tables")
    if "normal_map" not in t:
        pytest.skip("the fixtures were made without scipy")
    assert np.array_equal(np.unique(t["normal_map"]), qc.nf4_code()), "create_normal_map differs from nf4_code"


def test_float32_linspace_equals_torch_linspace():
    """float32_linspace reproduces torch.linspace's float32 points exactly for every recorded grid."""
    t = load("tables")
    for i, (start, stop, num) in enumerate(info()["linspaces"]):
        got, expected = qc.float32_linspace(start, stop, num), t[f"linspace{i}"]
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), f"linspace({start}, {stop}, {num})"


# --------------------------------------------------------------------------- plain 4-bit
@pytest.mark.parametrize("file", ["plain_48x128", "straddle_8x96", "partial_7x45"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_plain_quantization_matches_bitsandbytes_bit_for_bit(file, quant_type):
    """Packed bytes, block scales and dequantized weights equal quantize_4bit / dequantize_4bit's."""
    t = load(file)
    packed, absmax = quantize_4bit(t["input"], quant_type, 64)
    assert np.array_equal(packed, t[f"{quant_type}.weight"].reshape(-1)), \
        f"{int((packed != t[f'{quant_type}.weight'].reshape(-1)).sum())} packed bytes differ"
    assert np.array_equal(absmax.view(np.uint32), t[f"{quant_type}.weight.absmax"].view(np.uint32)), "scales differ"
    x_hat = dequantize_4bit(packed, absmax, t["input"].shape, quant_type, 64)
    assert np.array_equal(x_hat, t[f"{quant_type}.dequantized"]), \
        f"max |diff| {np.abs(x_hat - t[f'{quant_type}.dequantized']).max()}"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bitsandbytes_state_dict_loads_into_a_quantized_tensor(quant_type):
    """from_tensors reads bitsandbytes' own state dict and dequantizes to its weights exactly."""
    t = load("plain_48x128")
    qt = QuantizedTensor.from_tensors(t, f"{quant_type}.weight")
    assert (qt.shape, qt.quant_type) == ((48, 128), quant_type), f"read {qt.shape}, {qt.quant_type}"
    assert np.array_equal(qt.dequantize(), t[f"{quant_type}.dequantized"]), "dequantized weights differ"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlinear_matches_bitsandbytes_matmul_4bit_and_its_input_gradient(quant_type):
    """qlinear_forward / backward agree with bitsandbytes.matmul_4bit and its autograd to float32 rounding."""
    t = load("plain_48x128")
    qw = quantize(t["input"], quant_type, 64)
    m = f"{quant_type}.matmul"
    y, cache = qlinear_forward(t[f"{m}.x"], qw, t[f"{m}.bias"])
    dx = qlinear_backward(t[f"{m}.dy"], cache)
    for name, got in (("y", y), ("dx", dx)):
        expected = t[f"{m}.{name}"]
        err = np.abs(got - expected).max() / np.abs(expected).max()
        assert err < MATMUL_RTOL, f"{name}: relative difference {err:.2e} >= {MATMUL_RTOL}"


# --------------------------------------------------------------------------- double quantization
@pytest.mark.parametrize("file, quant_type", [("nested_96x200", "nf4"), ("nested_96x200", "fp4"),
                                              ("partial_7x45", "nf4"), ("partial_7x45", "fp4")])
def test_double_quantization_matches_bitsandbytes_within_its_lookup_table(file, quant_type):
    """Offset to one float32 step, at most 1% of scale codes one step away, decoded scales within 1%."""
    t = load(file)
    prefix = f"{quant_type}_dq"
    packed, absmax = quantize_4bit(t["input"], quant_type, 64)
    assert np.array_equal(packed, t[f"{prefix}.weight"].reshape(-1)), "the 4-bit codes do not depend on DQ"
    state = double_quantize(absmax)
    bnb_state = json.loads(bytes(t[f"{prefix}.weight.quant_state.bitsandbytes__{quant_type}"]).decode())
    offset = np.float32(bnb_state["nested_offset"])
    assert abs(np.float32(state.offset) - offset) <= np.spacing(offset), f"offset {state.offset} vs {offset}"
    steps = state.qabsmax.astype(int) - t[f"{prefix}.weight.absmax"].astype(int)
    assert np.abs(steps).max() <= 1 and np.count_nonzero(steps) <= max(1, absmax.size // 100), \
        f"{np.count_nonzero(steps)} of {absmax.size} scale codes differ, by up to {np.abs(steps).max()} steps"
    change = np.abs(double_dequantize(state) - t[f"{prefix}.absmax_dequantized"]) / t[f"{prefix}.absmax_dequantized"]
    assert change.max() < 0.01, f"decoded scales differ by up to {change.max():.2%}"


@pytest.mark.parametrize("file", ["nested_96x200", "partial_7x45"])
def test_bitsandbytes_nested_state_decodes_exactly(file):
    """Given bitsandbytes' own 8-bit scale codes, minilora decodes its scales and weights exactly."""
    t = load(file)
    qt = QuantizedTensor.from_tensors(t, "nf4_dq.weight")
    scales = double_dequantize(qt.nested)
    assert np.array_equal(scales, t["nf4_dq.absmax_dequantized"]), \
        f"max |diff| {np.abs(scales - t['nf4_dq.absmax_dequantized']).max()}"
    assert np.array_equal(qt.dequantize(), t["nf4_dq.dequantized"]), "dequantized weights differ"


def test_saved_tensor_names_are_bitsandbytes_names():
    """A double-quantized tensor is saved under exactly the state-dict keys bitsandbytes writes."""
    names = sorted(k.removeprefix("weight.") for k in quantize(np.ones(300, np.float32), double_quant=True)
                   .to_tensors("weight") if k != "weight")
    assert names == info()["nested_state_dict_keys"], f"expected {info()['nested_state_dict_keys']}, got {names}"
