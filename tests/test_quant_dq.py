"""Spec: double quantization of the block scales and the storage it saves (minilora.adapters.quant_dq).

Expected values: QLoRA §3's bit counts (4 + 32/64 = 4.5 bits per weight; 4 + 8/64 + 32/(64*256)
= 4.127 with double quantization), counts of bytes from the definition, and the dynamic map's
resolution.
"""
import numpy as np
import pytest

from minilora.adapters import quant as q
from minilora.adapters import quant_dq as dq
from minilora.adapters.quant_codes import dynamic_map


def gaussian(shape, seed=0, std=0.02):
    """N(0, std^2) float32 weights."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


def block_scales(shape=(512, 512), seed=0):
    """The NF4 block scales (nb,) float32 of Gaussian weights, blocks of 64."""
    return q.quantize_4bit(gaussian(shape, seed), "nf4", 64)[1]


# --------------------------------------------------------------------------- storage
def test_plain_4bit_storage_is_4_5_bits_per_weight():
    """Blocks of 64 with one float32 scale each: 4 + 32/64 = 4.5 bits per weight (QLoRA §3)."""
    assert dq.bits_per_parameter(64) == 4.5, f"expected 4.5, got {dq.bits_per_parameter(64)}"


def test_double_quantization_brings_storage_to_4_127_bits_per_weight():
    """8-bit scales in blocks of 256: 4 + 8/64 + 32/(64 * 256) = 4.126953125 bits, 0.373 saved (QLoRA §3)."""
    got = dq.bits_per_parameter(64, double_quant=True)
    assert got == 4 + 8 / 64 + 32 / (64 * 256) == 4.126953125, f"expected 4.126953125, got {got}"
    assert abs(4.5 - got - 0.373) < 1e-3, f"saving {4.5 - got}, QLoRA reports about 0.373 bits per weight"


@pytest.mark.parametrize("n, double_quant, expected", [
    (128, False, 8 * 64 + 32 * 2),                    # 2 whole blocks
    (129, False, 8 * 65 + 32 * 3),                    # odd count: half a byte and a third, partial block
    (64 * 300, True, 8 * 9600 + 8 * 300 + 32 * 2 + 32),   # 300 scales: 2 nested blocks, plus the offset
])
def test_storage_bits_count_codes_scales_and_nested_state(n, double_quant, expected):
    """storage_bits adds up packed bytes, scales (32 or 8 bits each), nested scales and the offset."""
    got = dq.storage_bits(n, 64, double_quant)
    assert got == expected, f"n = {n}, double_quant = {double_quant}: expected {expected}, got {got}"


def test_storage_of_whole_blocks_is_the_formula_plus_the_offset():
    """A 4096 x 4096 weight takes exactly the formula's bits per weight, plus 32/n for DQ's one offset."""
    n = 4096 * 4096
    for double_quant in (False, True):
        exact = dq.storage_bits(n, 64, double_quant) / n
        expected = dq.bits_per_parameter(64, double_quant) + (32 / n if double_quant else 0)
        assert abs(exact - expected) < 1e-12, f"double_quant={double_quant}: {exact} vs {expected}"


def test_storage_bits_refuses_an_empty_tensor():
    """n = 0 is a ValueError (bits per weight would be undefined)."""
    with pytest.raises(ValueError, match="positive"):
        dq.storage_bits(0)


# --------------------------------------------------------------------------- the nested state
def test_double_quantization_centres_the_scales_on_their_mean():
    """offset is mean(absmax) (float32), and the 8-bit codes stand for absmax - offset."""
    absmax = block_scales()
    state = dq.double_quantize(absmax)
    mean = float(np.float32(absmax.astype(np.float64).mean()))
    assert state.offset == mean, f"offset: expected {mean}, got {state.offset}"
    centred = dynamic_map()[state.qabsmax] * np.repeat(state.absmax2, 256)[:absmax.size]
    decoded = dq.double_dequantize(state)
    assert np.allclose(centred + np.float32(state.offset), decoded, atol=0, rtol=1e-6), \
        f"expected code8[q2] * c1 + offset, got {decoded[:4]} vs {(centred + state.offset)[:4]}"


def test_double_quantized_scales_have_one_second_level_scale_per_256():
    """4096 scales give 16 second-level scales, 300 give 2: one per (possibly partial) block of 256."""
    for nb, expected in ((4096, 16), (300, 2)):
        state = dq.double_quantize(np.linspace(0.01, 0.05, nb, dtype=np.float32))
        assert state.qabsmax.shape == (nb,) and state.qabsmax.dtype == np.uint8, \
            f"codes {state.qabsmax.shape} {state.qabsmax.dtype}, expected ({nb},) uint8"
        assert state.absmax2.shape == (expected,), f"{nb} scales: expected {expected}, got {state.absmax2.shape}"


def test_8bit_scales_change_by_less_than_one_percent():
    """Each decoded scale is within 1% of the original (QLoRA: about 0.2% on average)."""
    absmax = block_scales()
    change = np.abs(dq.double_dequantize(dq.double_quantize(absmax)) - absmax) / absmax
    assert change.max() < 0.01 and change.mean() < 0.003, f"max {change.max():.4f}, mean {change.mean():.4f}"


def test_double_quantization_barely_changes_the_weight_error():
    """NF4's relative error on N(0, 0.02^2) weights moves by less than 1% of itself with 8-bit scales."""
    x = gaussian((512, 512), seed=1)
    packed, absmax = q.quantize_4bit(x, "nf4", 64)
    plain = q.relative_error(x, q.dequantize_4bit(packed, absmax, x.shape))
    nested = q.relative_error(x, q.dequantize_4bit(packed, dq.double_dequantize(dq.double_quantize(absmax)), x.shape))
    assert abs(nested - plain) < 0.01 * plain, f"plain {plain:.5f}, double-quantized {nested:.5f}"


def test_dq_state_refuses_inconsistent_parts():
    """Float codes, or a wrong number of second-level scales, are a ValueError naming the problem."""
    with pytest.raises(ValueError, match="uint8"):
        dq.DQState(np.zeros(10, np.float32), np.ones(1, np.float32), 0.0)
    with pytest.raises(ValueError, match="expected 2"):
        dq.DQState(np.zeros(300, np.uint8), np.ones(1, np.float32), 0.0)
