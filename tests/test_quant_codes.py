"""Spec: the code tables of QLoRA, derived from their definitions (minilora.adapters.quant_codes).

Expected values are published ones: the NF4 table of the QLoRA paper's code (bitsandbytes'
get_4bit_type("nf4")), bitsandbytes' FP4 table, and standard normal quantiles from statistical
tables. The files built by the real library are compared in test_quant_bnb.py.
"""
import math

import numpy as np
import pytest

from minilora.adapters import quant_codes as qc

# bitsandbytes.functional.get_4bit_type("nf4"), as published (float32 values printed in full)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
# bitsandbytes.functional.get_4bit_type("fp4") before normalising by its maximum, 12
PUBLISHED_FP4_UNSCALED = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
# (p, Phi^{-1}(p)) from standard tables of the normal distribution
NORMAL_QUANTILES = [(0.5, 0.0), (0.975, 1.959963984540054), (0.99, 2.3263478740408408),
                    (0.8413447460685429, 1.0), (0.025, -1.959963984540054), (1e-10, -6.361340902404056)]


# --------------------------------------------------------------------------- the normal quantile
@pytest.mark.parametrize("p, expected", NORMAL_QUANTILES)
def test_normal_quantile_matches_published_values(p, expected):
    """Phi^{-1}(p) agrees with the standard normal tables to 1e-12."""
    got = qc.normal_quantile(p)
    assert abs(got - expected) < 1e-12, f"Phi^-1({p}): expected {expected}, got {got}"


def test_normal_quantile_inverts_the_normal_cdf():
    """Phi(Phi^{-1}(p)) = p across (0, 1), tails included, to 1e-15 relative."""
    for p in [1e-300, 1e-12, 1e-3, 0.1, 0.3, 0.5, 0.7, 0.9677083, 1 - 1e-9]:
        back = qc.normal_cdf(qc.normal_quantile(p))
        assert abs(back - p) <= 1e-15 * max(p, 1e-300) + 1e-16, f"Phi(Phi^-1({p})) = {back}"


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_normal_quantile_rejects_probabilities_outside_the_open_interval(p):
    """p outside (0, 1) (where the quantile is infinite or undefined) is a clear ValueError."""
    with pytest.raises(ValueError, match="0 < p < 1"):
        qc.normal_quantile(p)


def test_float32_linspace_is_within_one_float32_step_of_the_exact_grid():
    """The float32 grid differs from the exact evenly spaced points by at most one float32 step."""
    got = qc.float32_linspace(0.9677083, 0.5, 9)
    exact = np.linspace(float(np.float32(0.9677083)), 0.5, 9)
    ulp = np.spacing(np.float32(1.0))
    assert got.dtype == np.float32 and np.abs(got - exact).max() <= ulp, f"got {got}, exact {exact}"
    assert got[0] == np.float32(0.9677083) and got[-1] == 0.5, "the end points are exact"


# --------------------------------------------------------------------------- NF4
def test_nf4_code_equals_the_published_table():
    """The 16 NF4 values derived from normal quantiles equal bitsandbytes' published table bit for bit."""
    got = qc.nf4_code()
    expected = np.array(PUBLISHED_NF4, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (16,), f"dtype {got.dtype}, shape {got.shape}"
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), f"expected {expected}, got {got}"


def test_nf4_is_asymmetric_with_an_exact_zero():
    """NF4 has 7 negative values, an exact 0 and 8 positive values, from -1 to 1 (QLoRA §3)."""
    code = qc.nf4_code()
    counts = ((code < 0).sum(), (code == 0).sum(), (code > 0).sum())
    assert counts == (7, 1, 8), f"expected (7 negative, 1 zero, 8 positive), got {counts}"
    assert code[0] == -1.0 and code[-1] == 1.0 and np.all(np.diff(code) > 0), f"not sorted in [-1, 1]: {code}"


def test_nf4_offset_is_the_mean_of_the_two_halves_end_probabilities():
    """0.9677083 is the mean of 1 - 1/32 and 1 - 1/30 (16 and 15 quantiles), to the 7 digits it is given with."""
    mean = ((1 - 1 / 32) + (1 - 1 / 30)) / 2
    assert round(mean, 7) == qc.NF4_OFFSET, f"expected {qc.NF4_OFFSET}, got {mean}"


def test_nf4_values_are_normal_quantiles_up_to_one_scale():
    """Each positive NF4 value times Phi^{-1}(offset) is the quantile of its grid probability (QLoRA §3)."""
    code = qc.nf4_code().astype(np.float64)
    top = qc.normal_quantile(float(np.float32(qc.NF4_OFFSET)))
    probs = np.linspace(float(np.float32(qc.NF4_OFFSET)), 0.5, 9)[:-1][::-1]      # ascending
    expected = np.array([qc.normal_quantile(p) for p in probs]) / top
    assert np.allclose(code[8:], expected, atol=3e-7), f"expected {expected}, got {code[8:]}"


# --------------------------------------------------------------------------- FP4 and INT4
def test_fp4_code_equals_bitsandbytes_table():
    """The FP4 table decoded from sign/exponent/mantissa bits equals bitsandbytes' table divided by 12."""
    expected = np.array(PUBLISHED_FP4_UNSCALED, dtype=np.float32) / np.float32(12.0)
    got = qc.fp4_code()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), f"expected {expected}, got {got}"


def test_fp4_normal_values_are_e2m1_numbers():
    """Every non-zero FP4 magnitude except the subnormal 1/16 has the form (1 + m/2) 2^e."""
    for bits in range(16):
        magnitude = abs(qc.fp4_value(bits))
        if magnitude in (0.0, 0.0625):
            continue
        e = math.floor(math.log2(magnitude))
        assert magnitude / 2 ** e in (1.0, 1.5), f"pattern {bits:04b} = {magnitude} is not (1 + m/2) 2^e"


def test_int4_code_is_the_integers_minus7_to_7_over_7():
    """INT4 holds k/7 for k = -7..7 in sign-magnitude order: bit 3 the sign, bits 2-0 |k|."""
    got = qc.int4_code()
    expected = np.array([k / 7 for k in range(8)] + [0.0] + [-k / 7 for k in range(1, 8)], dtype=np.float32)
    assert np.array_equal(got, expected), f"expected {expected}, got {got}"
    levels = sorted(set(got.tolist()))
    assert len(levels) == 15 and levels[0] == -1.0 and levels[-1] == 1.0, f"expected 15 levels -1..1, got {levels}"


@pytest.mark.parametrize("decode", [qc.fp4_value, qc.int4_value])
def test_4bit_decoders_reject_patterns_wider_than_4_bits(decode):
    """A pattern outside 0..15 is a ValueError naming the 4-bit range."""
    with pytest.raises(ValueError, match="0..15"):
        decode(16)


# --------------------------------------------------------------------------- the dynamic map
def test_signed_dynamic_map_has_127_negative_values_zero_and_128_positive():
    """The 8-bit signed dynamic map: 256 sorted distinct values, -0.99297 ... 0 ... 1, smallest |v| 5.5e-7."""
    code = qc.dynamic_map(signed=True)
    counts = ((code < 0).sum(), (code == 0).sum(), (code > 0).sum())
    assert code.shape == (256,) and counts == (127, 1, 128), f"got shape {code.shape}, counts {counts}"
    assert np.all(np.diff(code) > 0), "values must be sorted and distinct"
    assert code[-1] == 1.0 and abs(code[0] + 0.99296875) < 1e-7, f"ends {code[0]}, {code[-1]}"
    assert abs(np.abs(code[code != 0]).min() - 5.5e-7) < 1e-12, f"smallest magnitude {np.abs(code[code != 0]).min()}"


def test_dynamic_map_spends_more_codes_on_larger_decades():
    """Decade 10^(i-6) holds 2^i positive values: 1 value in [1e-7, 1e-6), 64 in [0.1, 1)."""
    code = qc.dynamic_map(signed=True)
    for i in range(7):
        low, high = 10.0 ** (i - 7), 10.0 ** (i - 6)
        count = int(((code >= low) & (code < high)).sum())
        assert count == 2 ** i, f"decade [{low:g}, {high:g}): expected {2 ** i} values, got {count}"


# --------------------------------------------------------------------------- by name
def test_code_for_rejects_an_unknown_quant_type_naming_the_choices():
    """code_for('nf8') is a ValueError listing nf4, fp4 and int4."""
    with pytest.raises(ValueError, match="nf4.*fp4.*int4"):
        qc.code_for("nf8")
