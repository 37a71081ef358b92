"""Blockwise absmax quantization to 4 bits: QLoRA's storage of the frozen base (Dettmers et al. 2023, §3).

A weight is flattened row-major (a (d_out, d_in) matrix reads row by row), cut into contiguous
blocks of ``blocksize`` values (64 by default; a last partial block is its own block) and each
block is stored as

    absmax_b = max |x| over the block                        one float32 per block
    i        = the index of the code value nearest x / absmax_b    4 bits per value

so that dequantization is x_hat = code[i] * absmax_b (QLoRA eq. 1-2 with c = 1 / absmax). Scaling
by the block's own maximum keeps an outlier from coarsening the grid of the whole tensor: it
only costs its own block. Two 4-bit indices share a byte, the first in the high nibble.

Shapes: n values in the flattened tensor, nb = ceil(n / blocksize) blocks.
Every step is done exactly as bitsandbytes' ``quantize_4bit`` / ``dequantize_4bit`` do it on the
CPU (the tests compare packed bytes and dequantized values bit for bit), with NumPy or CuPy
through ``xp``. The code tables come from ``minilora.adapters.quant_codes``.
"""
from __future__ import annotations

import math

import numpy as np

from minilora.nn import backend
from minilora.nn.backend import xp
from minilora.adapters.quant_codes import code_for

MAX_BLOCKSIZE = 4096          # bitsandbytes accepts 32 ... 4096; minilora also 2 ... 16, for examples worked by hand
TINY = 1e-38                  # bitsandbytes' floor for absmax: an all-zero block scales by 1/1e-38 (no 0/0)


# --------------------------------------------------------------------------- checks
def check_blocksize(blocksize) -> int:
    """``blocksize`` as an int, or a ValueError: a power of two from 2 to 4096.

    Why a power of two: blocks must split into whole bytes (two 4-bit codes per byte), so an odd
    block would share a byte with its neighbour; powers of two are also what bitsandbytes'
    kernels accept. The tensor's size need not be a multiple: the last block may be partial.
    """
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)):
        raise ValueError(f"blocksize must be an int (a power of two such as 64), got {blocksize!r}")
    blocksize = int(blocksize)
    if blocksize < 2 or blocksize > MAX_BLOCKSIZE or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two from 2 to {MAX_BLOCKSIZE} (QLoRA uses 64), got "
                         f"{blocksize}: an odd block would split a byte between two blocks, and bitsandbytes' "
                         f"kernels take powers of two only")
    return blocksize


def check_finite(x, what: str = "the tensor") -> None:
    """Raise a ValueError when ``x`` holds NaN or +-inf (absmax would make the whole block NaN)."""
    bad = x.size - int(xp.isfinite(x).sum())
    if bad:
        raise ValueError(f"cannot quantize {what}: {bad} of {x.size} values are NaN or infinite; "
                         f"find where they come from (a diverged training run?) and fix them first")


def as_float32_flat(x, what: str = "the tensor"):
    """x (any shape) -> (n,) float32 on the active backend, after checking it is a finite, non-empty float array."""
    x = backend.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"can only quantize floating-point weights, got {what} of dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"cannot quantize {what}: it is empty (shape {tuple(x.shape)})")
    check_finite(x, what)
    return x.reshape(-1).astype(xp.float32)           # bitsandbytes quantizes from float32


# --------------------------------------------------------------------------- nearest code
def _sorted_code(code: np.ndarray):
    """(order, midpoints): the indices that sort ``code`` and the midpoints between sorted neighbours.

    Ties in the sort (FP4's two zeros) keep index order (a stable sort), which is the order
    bitsandbytes gets from torch.argsort.
    """
    code = np.asarray(code, dtype=np.float32)
    order = np.argsort(code, kind="stable")
    ordered = code[order]
    midpoints = (ordered[:-1] + ordered[1:]) / np.float32(2.0)           # float32, as bitsandbytes
    return order, midpoints


def nearest_code(scaled, code):
    """The index of the nearest code value for each entry: scaled (n,) in [-1, 1] -> (n,) uint8.

    Bucketize against the midpoints of the sorted table: position p = the number of midpoints
    strictly below the value, so a value exactly on a midpoint goes to the lower of its two
    neighbours (torch.bucketize's and np.searchsorted(side="left")'s rule). Then map the
    sorted position back to the table's own index (FP4 and INT4 are stored in bit-pattern order).
    """
    order, midpoints = _sorted_code(code)
    position = xp.searchsorted(backend.asarray(midpoints), scaled, side="left")
    return backend.asarray(order.astype(np.uint8))[position]


# --------------------------------------------------------------------------- blockwise absmax
def _blocks(flat, blocksize: int):
    """(n,) -> (nb, blocksize), the last block padded with zeros (a zero never changes a max |x|)."""
    pad = (-flat.size) % blocksize
    if pad:
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(-1, blocksize)


def quantize_blockwise(flat, code, blocksize: int):
    """Absmax-quantize a flat float32 array block by block against the table ``code``.

    flat (n,) float32, code (k,) float32 with k <= 256, blocksize  ->  (idx (n,) uint8, absmax (nb,) float32).
    Cut into blocks (``_blocks`` pads the last one with zeros), take each block's max |x| (QLoRA
    eq. 1's absmax), scale by its inverse into [-1, 1], and pick the nearest code (``nearest_code``).
    """
    ### BEGIN SOLUTION
    blocks = _blocks(flat, blocksize)                                     # (nb, blocksize)
    absmax = xp.abs(blocks).max(axis=1)                                   # (nb,)
    inverse = xp.float32(1.0) / xp.maximum(absmax, xp.float32(TINY))     # bitsandbytes multiplies by 1/absmax
    scaled = xp.clip(blocks * inverse[:, None], -1.0, 1.0)                # rounding can pass 1 by an ulp
    idx = nearest_code(scaled.reshape(-1)[:flat.size], code)              # (n,): the padding is dropped
    ### END SOLUTION
    return idx, absmax


def dequantize_blockwise(idx, absmax, code, blocksize: int):
    """x_hat = code[idx] * absmax of the block: idx (n,) integer, absmax (nb,) float32 -> (n,) float32.

    QLoRA eq. 2 (dequantization): look every index up in the table, then multiply each block of
    ``blocksize`` values by its own scale, in float32.
    """
    n = idx.size
    ### BEGIN SOLUTION
    values = _blocks(backend.asarray(code, dtype=np.float32)[idx], blocksize)   # (nb, blocksize)
    x_hat = (values * absmax[:, None]).reshape(-1)[:n]                    # float32, like bitsandbytes
    ### END SOLUTION
    return x_hat


# --------------------------------------------------------------------------- two codes per byte
def pack_4bit(idx):
    """Pack 4-bit indices two per byte, the first in the high nibble: (n,) uint8 -> (ceil(n/2),) uint8.

    An odd count is padded with index 0 (``quantize_4bit`` pads before this, with the code of 0).
    """
    idx = idx.astype(xp.uint8)
    if idx.size % 2:
        idx = xp.concatenate([idx, xp.zeros(1, dtype=xp.uint8)])
    return ((idx[0::2] << 4) | idx[1::2]).astype(xp.uint8)       # stays one byte under any promotion rules


def unpack_4bit(packed, n: int):
    """The inverse of ``pack_4bit``: packed (ceil(n/2),) uint8 -> idx (n,) uint8."""
    if packed.size != (n + 1) // 2:
        raise ValueError(f"{packed.size} packed bytes cannot hold {n} 4-bit codes (need {(n + 1) // 2})")
    high, low = packed >> 4, packed & 0x0F
    return xp.stack([high, low], axis=1).reshape(-1)[:n].astype(xp.uint8)


# --------------------------------------------------------------------------- the whole tensor
def quantize_4bit(x, quant_type: str = "nf4", blocksize: int = 64):
    """A float tensor of any shape -> (packed (ceil(n/2),) uint8, absmax (nb,) float32).

    bitsandbytes.functional.quantize_4bit without double quantization (its packed tensor is the
    same bytes as a column (ceil(n/2), 1)). ``quant_type``: "nf4", "fp4" or "int4".
    """
    blocksize = check_blocksize(blocksize)
    flat = as_float32_flat(x)
    if flat.size % 2:
        # An odd count leaves half a byte: bitsandbytes fills it with the code of the value 0 (NF4: 7).
        # The even blocksize puts the extra 0 in the last, partial, block, where it cannot change the max.
        flat = xp.concatenate([flat, xp.zeros(1, dtype=xp.float32)])
    idx, absmax = quantize_blockwise(flat, code_for(quant_type), blocksize)
    return pack_4bit(idx), absmax


def dequantize_4bit(packed, absmax, shape, quant_type: str = "nf4", blocksize: int = 64, dtype=np.float32):
    """The inverse of ``quantize_4bit`` up to the rounding: -> x_hat (shape) in ``dtype``.

    The products code * absmax are taken in float32 and then cast, as bitsandbytes does, so a
    float64 result holds exactly the float32 values.
    """
    blocksize = check_blocksize(blocksize)
    n = math.prod(shape)
    if absmax.size != -(-n // blocksize):
        raise ValueError(f"{absmax.size} block scales for {n} values in blocks of {blocksize} "
                         f"(expected {-(-n // blocksize)})")
    idx = unpack_4bit(packed.reshape(-1), n)
    flat = dequantize_blockwise(idx, absmax.astype(xp.float32), code_for(quant_type), blocksize)
    return flat.reshape(shape).astype(dtype)


def relative_error(x, x_hat) -> float:
    """||x - x_hat||_F / ||x||_F, the relative Frobenius error of a reconstruction (computed in float64)."""
    x = backend.to_numpy(x).astype(np.float64)
    x_hat = backend.to_numpy(x_hat).astype(np.float64)
    return float(np.linalg.norm(x - x_hat) / np.linalg.norm(x))
