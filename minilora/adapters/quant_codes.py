"""The 4-bit and 8-bit code tables of QLoRA (Dettmers et al. 2023, arXiv 2305.14314), derived in code.

A k-bit "data type" here is a table ``code`` of at most 2^k float32 values in [-1, 1]: a stored
index i stands for the value code[i] times its block's scale (``minilora.adapters.quant``). This
module builds every table from its definition and never types one in:

  * NF4, 4-bit NormalFloat (QLoRA §3): the quantiles of the standard normal N(0, 1), so that each
    code is used about equally often by normally distributed weights; asymmetric (8 values below
    zero, 7 above) so that zero is exactly representable.
  * FP4, bitsandbytes' 4-bit float: 1 sign bit, 2 exponent bits, 1 mantissa bit.
  * INT4, symmetric integers -7..7 over 7: the evenly spaced baseline of QLoRA's Table 2.
  * the dynamic tree map: bitsandbytes' signed 8-bit type (Dettmers 2016, arXiv 1511.04561), which
    double quantization uses for the block scales (QLoRA §3, "Double Quantization").

bitsandbytes (``bitsandbytes.functional.get_4bit_type``, ``create_normal_map``,
``create_dynamic_map``) publishes these tables; the tests check the derived ones against them,
value for value.
"""
from __future__ import annotations

import math

import numpy as np

QUANT_TYPES = ("nf4", "fp4", "int4")

# QLoRA §3: NF4 estimates 2^(k-1) quantiles for the negative half and 2^(k-1) + 1 for the positive
# half, each from evenly spaced probabilities that stop short of 0 and 1 (where the quantile is
# infinite). bitsandbytes' create_normal_map(offset=0.9677083) places the outermost probability at
# 0.9677083, the mean of 1 - 1/(2*16) and 1 - 1/(2*15), rounded to 7 digits; the 7-digit constant
# is the one the published table comes from.
NF4_OFFSET = 0.9677083


# --------------------------------------------------------------------------- the normal quantile
def normal_cdf(x: float) -> float:
    """Phi(x) = P(Z <= x) for Z ~ N(0, 1), through the complementary error function.

    erfc keeps full relative precision in the far left tail, where 1 + erf(x) would cancel.
    """
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """Phi^{-1}(p): the x with P(Z <= x) = p for Z ~ N(0, 1), 0 < p < 1 (scipy's norm.ppf).

    Bisection on the increasing function Phi: halve [lo, hi] until the midpoint equals an end,
    i.e. until the bracket is one double apart (about 60 halvings; more near p = 1/2, where x
    is near 0 and doubles lie closer together). Above the median it solves the
    mirror problem, Phi^{-1}(p) = -Phi^{-1}(1 - p): 1 - p is exact there, and the lower tail is
    where erfc is accurate, so the result agrees with scipy to about 1e-15 even at p = 1 - 1e-6.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile needs 0 < p < 1, got {p!r}")
    if p > 0.5:
        return -normal_quantile(1.0 - p)
    lo, hi = -40.0, 40.0                         # Phi(-40) ~ 4e-350 underflows to 0: any valid p is inside
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return mid
        if normal_cdf(mid) < p:
            lo = mid
        else:
            hi = mid


def float32_linspace(start: float, stop: float, num: int) -> np.ndarray:
    """``num`` evenly spaced float32 points from start to stop, rounded as torch.linspace does.

    bitsandbytes builds its grids with torch.linspace in float32, so the published tables are
    functions of those exact points. torch takes the step in float32, then computes the first
    half of the points forward from start and the second half backward from stop in double,
    rounding each to float32. Any other rounding moves a point by one float32 step and a table
    value by a few (checked against torch.linspace in the tests' reference files).
    """
    start32, stop32 = np.float32(start), np.float32(stop)
    step = float(np.float32((stop32 - start32) / np.float32(num - 1)))
    i = np.arange(num)
    forward = float(start32) + step * i
    backward = float(stop32) - step * (num - 1 - i)
    return np.where(i < num // 2, forward, backward).astype(np.float32)


# --------------------------------------------------------------------------- NF4 (QLoRA §3)
def nf4_code(offset: float = NF4_OFFSET) -> np.ndarray:
    """The 16 NF4 values (16,) float32, sorted, from -1 to 1 with an exact 0 (QLoRA §3, Appendix).

    Positive half: the quantiles Phi^{-1}(p) at 9 probabilities evenly spaced from ``offset`` down
    to 0.5, dropping p = 0.5 itself (its quantile is the zero): 8 positive values.
    Negative half: minus the quantiles at 8 probabilities from ``offset`` to 0.5, dropping 0.5:
    7 negative values. Add the one shared 0, then divide by the largest value so the table spans
    [-1, 1] (absmax scaling sends a block's largest |weight| to exactly +-1).
    """
    positive = [normal_quantile(float(p)) for p in float32_linspace(offset, 0.5, 9)[:-1]]
    negative = [-normal_quantile(float(p)) for p in float32_linspace(offset, 0.5, 8)[:-1]]
    values = np.sort(np.array(positive + [0.0] + negative, dtype=np.float32))
    return values / values.max()                  # float32 division, as bitsandbytes normalises


# --------------------------------------------------------------------------- FP4 (bitsandbytes)
def fp4_value(bits: int) -> float:
    """The unscaled value of one bitsandbytes FP4 pattern ``bits`` (0..15): sign, exponent e, mantissa m.

    Bit 3 is the sign, bits 2-1 the exponent field e, bit 0 the mantissa m. For e > 0 the value is
    (1 + m/2) 2^(4 - e), i.e. 8, 12 (e = 1), 4, 6 (e = 2), 2, 3 (e = 3): the e2m1 numbers with
    bitsandbytes' exponent layout (the largest exponent on the smallest field). e = 0 is the
    subnormal range: 0, and m/16 = 0.0625 for m = 1 (where IEEE-style e2m1 would have 0.5).
    """
    if not 0 <= bits <= 15:
        raise ValueError(f"an FP4 pattern is 4 bits (0..15), got {bits}")
    sign = -1.0 if bits & 0b1000 else 1.0
    e, m = (bits >> 1) & 0b11, bits & 0b1
    magnitude = m / 16 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e)
    return sign * magnitude if magnitude else 0.0   # both zero patterns are +0.0, as in bitsandbytes' table


def fp4_code() -> np.ndarray:
    """bitsandbytes' FP4 table (16,) float32 in bit-pattern order, divided by its largest value (12).

    Not sorted: index i holds the value of pattern i. Patterns 0 and 8 both stand for 0.
    """
    values = np.array([fp4_value(bits) for bits in range(16)], dtype=np.float32)
    return values / values.max()


# --------------------------------------------------------------------------- INT4 (symmetric)
def int4_value(bits: int) -> float:
    """The integer of one sign-magnitude INT4 pattern ``bits`` (0..15): bit 3 the sign, bits 2-0 |k|."""
    if not 0 <= bits <= 15:
        raise ValueError(f"an INT4 pattern is 4 bits (0..15), got {bits}")
    magnitude = bits & 0b111
    return (-1.0 if bits & 0b1000 else 1.0) * magnitude if magnitude else 0.0   # both zeros are +0.0


def int4_code() -> np.ndarray:
    """Symmetric INT4: k / 7 for k = -7..7 (16,) float32, sign-magnitude order (patterns 0 and 8 are +-0).

    Why -7..7 and not two's complement -8..7: absmax scaling maps the block's largest |weight| to
    exactly +-1, and a symmetric grid represents both signs of it; -8 would be a level that no
    scaled weight in [-1, 1] ever reaches (the QLoRA paper's Int4 baseline and bitsandbytes'
    get_4bit_type("int4") use the same 15 levels). Sign-magnitude, like FP4, keeps bit 3 the
    sign in every 4-bit type of this module.
    """
    values = np.array([int4_value(bits) for bits in range(16)], dtype=np.float32)
    return values / np.float32(7.0)


# --------------------------------------------------------------------------- the 8-bit dynamic map
def dynamic_map(signed: bool = True) -> np.ndarray:
    """bitsandbytes' 8-bit dynamic tree map (256,) float32, sorted (create_dynamic_map's defaults).

    A float with a variable split between exponent and fraction (Dettmers 2016): for each decade
    10^(i - 6), i = 0..6, evenly spaced values inside it: the 2^i midpoints of the intervals that
    split [0.1, 1] evenly, times the decade (2^(i+1) of them when unsigned). Small magnitudes get
    few, coarse values and magnitudes near 1 many fine ones, which suits numbers spread over
    several orders of magnitude. Plus 0 and 1. Signed: each value also with a minus sign, so 127
    negative values, 0 and 128 positive ones (the largest is 1, the most negative -0.99297).
    """
    values = []
    for i in range(7):
        count = 2 ** i if signed else 2 ** (i + 1)
        edges = float32_linspace(0.1, 1.0, count + 1)
        means = (edges[:-1] + edges[1:]) / np.float32(2.0)               # float32, as bitsandbytes
        decade = np.float32(10.0 ** (i - 6))
        values += list(decade * means)
        if signed:
            values += list(-decade * means)
    values += [0.0, 1.0]
    return np.sort(np.array(values, dtype=np.float32))


# --------------------------------------------------------------------------- by name
def code_for(quant_type: str) -> np.ndarray:
    """The 4-bit table (16,) float32 of ``quant_type``: "nf4", "fp4" or "int4"."""
    builders = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}
    if quant_type not in builders:
        raise ValueError(f"unknown quant_type {quant_type!r}: choose one of {QUANT_TYPES}")
    return builders[quant_type]()
