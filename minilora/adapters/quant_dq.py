"""Double quantization: the block scales of a 4-bit weight, themselves quantized to 8 bits (QLoRA §3).

With 4-bit codes in blocks of 64, each block also stores its absmax c2 as a float32: 32/64 = 0.5
extra bits per weight. QLoRA's double quantization stores those constants in 8 bits instead:

    offset = mean(absmax)                                one float32 per tensor
    q2, c1 = blockwise 8-bit quantization of (absmax - offset), blocks of 256, with the
             signed dynamic tree map (``quant_codes.dynamic_map``) and one float32 scale c1 per block
    absmax_hat_b = code8[q2_b] * c1[b // 256] + offset

so the scales cost 8/64 + 32/(64 * 256) = 0.127 bits per weight: 4.127 bits in all instead of 4.5
(QLoRA §3, "Double Quantization"). The absmax values are all positive; subtracting their mean
centres them around zero, which is what a signed 8-bit type represents best.

Shapes: nb block scales (one per 4-bit block), nb2 = ceil(nb / 256) second-level scales.
This is bitsandbytes' ``quantize_4bit(..., compress_statistics=True)``: ``offset = absmax.mean()``,
then ``quantize_blockwise(absmax - offset, blocksize=256)``. One difference on the CPU:
bitsandbytes' C++ 8-bit quantizer finds the code through a lookup table of 65,536 bins, not an
exact nearest search, so for a few values in a thousand it picks a neighbour of the nearest
code; minilora always takes the nearest (the tests compare with bitsandbytes to a tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minilora.nn import backend
from minilora.nn.backend import xp
from minilora.adapters.quant import check_blocksize, dequantize_blockwise, quantize_blockwise
from minilora.adapters.quant_codes import dynamic_map

DQ_BLOCKSIZE = 256        # QLoRA §3: "a blocksize of 256 for c1"
_FLOAT32_BITS = 32


# --------------------------------------------------------------------------- the nested state
@dataclass(frozen=True)
class DQState:
    """The double-quantized block scales of one 4-bit tensor.

    qabsmax (nb,) uint8: an index into ``dynamic_map()`` per 4-bit block;
    absmax2 (nb2,) float32: the absmax of each block of 256 centred scales;
    offset: the mean of the original scales (a float32 value, kept as a Python float);
    blocksize: the second-level block size (256).
    """
    qabsmax: object
    absmax2: object
    offset: float
    blocksize: int = DQ_BLOCKSIZE

    def __post_init__(self):
        if self.qabsmax.dtype != np.uint8:
            raise ValueError(f"qabsmax must be uint8 codes, got dtype {self.qabsmax.dtype}")
        expected = -(-self.qabsmax.size // self.blocksize)
        if self.absmax2.size != expected:
            raise ValueError(f"{self.absmax2.size} second-level scales for {self.qabsmax.size} codes in blocks "
                             f"of {self.blocksize} (expected {expected})")


def double_quantize(absmax, blocksize: int = DQ_BLOCKSIZE) -> DQState:
    """Quantize the block scales to 8 bits: absmax (nb,) float32 -> DQState."""
    blocksize = check_blocksize(blocksize)
    absmax = backend.asarray(absmax).astype(xp.float32)
    # bitsandbytes takes absmax.mean() in float32. Summing in float64 and rounding once gives the same
    # float32 or its neighbour, and the same on NumPy and CuPy (their float32 sums add in different orders).
    offset = absmax.mean(dtype=xp.float64).astype(xp.float32)
    qabsmax, absmax2 = quantize_blockwise(absmax - offset, dynamic_map(signed=True), blocksize)
    return DQState(qabsmax=qabsmax, absmax2=absmax2, offset=float(offset), blocksize=blocksize)


def double_dequantize(state: DQState):
    """The block scales back from their 8-bit codes: DQState -> absmax_hat (nb,) float32.

    absmax_hat = code8[q2] * c1 + offset, in float32 (bitsandbytes' dequantize_blockwise, then + offset).
    """
    centred = dequantize_blockwise(state.qabsmax, state.absmax2, dynamic_map(signed=True), state.blocksize)
    return centred + xp.float32(state.offset)


# --------------------------------------------------------------------------- storage cost
def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = DQ_BLOCKSIZE) -> float:
    """Bits of storage per weight for a large tensor, QLoRA §3's count.

    Without double quantization: 4 + 32 / blocksize              (4.5 for blocks of 64);
    with it:                     4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
                                                                 (4.127 for 64 and 256).
    The per-tensor extras (one offset, padding of partial blocks) vanish per weight as n grows;
    ``storage_bits`` counts them for a given size.
    """
    blocksize, dq_blocksize = check_blocksize(blocksize), check_blocksize(dq_blocksize)
    if not double_quant:
        return 4 + _FLOAT32_BITS / blocksize
    return 4 + 8 / blocksize + _FLOAT32_BITS / (blocksize * dq_blocksize)


def storage_bits(n: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = DQ_BLOCKSIZE) -> int:
    """The exact bits a tensor of n weights takes: packed codes, block scales, nested state.

    codes: 8 * ceil(n / 2) (two per byte, an odd count wastes half a byte);
    scales: 32 * nb, or with double quantization 8 * nb + 32 * nb2 + 32 (the offset).
    The code tables are shared constants of the format and not counted.
    """
    blocksize, dq_blocksize = check_blocksize(blocksize), check_blocksize(dq_blocksize)
    if n < 1:
        raise ValueError(f"n must be a positive number of weights, got {n}")
    nb = -(-n // blocksize)
    codes = 8 * -(-n // 2)
    if not double_quant:
        return codes + _FLOAT32_BITS * nb
    nb2 = -(-nb // dq_blocksize)
    return codes + 8 * nb + _FLOAT32_BITS * nb2 + _FLOAT32_BITS
