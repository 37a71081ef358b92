"""``QuantizedTensor``: one 4-bit weight as QLoRA stores it, and its tensors for a safetensors file.

    packed   (ceil(n/2),) uint8   two 4-bit codes per byte (``minilora.adapters.quant``)
    absmax   (nb,) float32        one scale per block, or, with double quantization,
    nested   DQState              the scales in 8 bits (``minilora.adapters.quant_dq``)
    shape, blocksize, quant_type, dtype   what is needed to undo it

Shapes: n = prod(shape) weights, nb = ceil(n / blocksize) blocks.

File layout: ``to_tensors(name)`` uses the names bitsandbytes and transformers give a 4-bit
weight in a state dict (``QuantState.as_dict(packed=True)``), so a quantized model saves as plain
tensors (no pickle) and reads like theirs:

    {name}                                     packed codes as a column (ceil(n/2), 1) uint8
    {name}.absmax                              (nb,) float32, or (nb,) uint8 codes when nested
    {name}.quant_map                           the 16-value code table, float32
    {name}.nested_absmax, .nested_quant_map    the second-level scales and the 8-bit map (nested only)
    {name}.quant_state.bitsandbytes__{type}    JSON as uint8 bytes: quant_type, blocksize, dtype, shape
                                               (and nested_blocksize, nested_dtype, nested_offset)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from minilora.nn import backend
from minilora.adapters.quant import check_blocksize, dequantize_4bit, quantize_4bit
from minilora.adapters.quant_codes import QUANT_TYPES, code_for, dynamic_map
from minilora.adapters.quant_dq import DQ_BLOCKSIZE, DQState, double_dequantize, double_quantize

STATE_KEY = "quant_state.bitsandbytes__"          # + quant_type: where bitsandbytes keeps the JSON state
DEQUANT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class QuantizedTensor:
    """A frozen 4-bit tensor; ``dequantize()`` gives the weights back (QLoRA's doubleDequant, eq. 6)."""
    packed: object                 # (ceil(n/2),) uint8
    absmax: object                 # (nb,) float32, or None when ``nested`` holds the scales
    shape: tuple
    blocksize: int = 64
    quant_type: str = "nf4"
    nested: DQState | None = None
    dtype: str = "float32"         # the dtype that was quantized: dequantize() returns it by default

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        check_blocksize(self.blocksize)
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"unknown quant_type {self.quant_type!r}: choose one of {QUANT_TYPES}")
        if self.dtype not in DEQUANT_DTYPES:
            raise ValueError(f"cannot dequantize to {self.dtype!r}: choose one of {DEQUANT_DTYPES}")
        if (self.absmax is None) == (self.nested is None):
            raise ValueError("give exactly one of absmax (plain scales) and nested (double-quantized scales)")
        if self.packed.dtype != np.uint8 or self.packed.size != (self.numel + 1) // 2:
            raise ValueError(f"packed must hold {(self.numel + 1) // 2} uint8 bytes for shape {self.shape}, "
                             f"got {self.packed.size} of dtype {self.packed.dtype}")
        scales = self.absmax if self.nested is None else self.nested.qabsmax
        if scales.size != self.n_blocks:
            raise ValueError(f"{scales.size} block scales for {self.numel} values in blocks of {self.blocksize} "
                             f"(expected {self.n_blocks})")

    # ----------------------------------------------------------------------- building and undoing
    @classmethod
    def quantize(cls, x, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False,
                 dq_blocksize: int = DQ_BLOCKSIZE) -> "QuantizedTensor":
        """Quantize a float tensor x (any shape) blockwise to 4 bits, optionally double-quantizing the scales."""
        dtype = np.dtype(x.dtype).name if hasattr(x, "dtype") else "float32"
        packed, absmax = quantize_4bit(x, quant_type, blocksize)
        nested = double_quantize(absmax, dq_blocksize) if double_quant else None
        return cls(packed, None if double_quant else absmax, tuple(x.shape), blocksize, quant_type, nested,
                   dtype if dtype in DEQUANT_DTYPES else "float32")

    def block_absmax(self):
        """The scales the codes are multiplied by: (nb,) float32 (decoded from 8 bits when nested)."""
        return self.absmax if self.nested is None else double_dequantize(self.nested)

    def dequantize(self, dtype=None):
        """The weights back, code[i] * absmax per block: (shape) in ``dtype`` (default: the quantized dtype)."""
        return dequantize_4bit(self.packed, self.block_absmax(), self.shape, self.quant_type, self.blocksize,
                               dtype=dtype or self.dtype)

    # ----------------------------------------------------------------------- size
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: codes, scales and (nested) second-level scales plus the 4-byte offset."""
        if self.nested is None:
            return int(self.packed.nbytes + self.absmax.nbytes)
        return int(self.packed.nbytes + self.nested.qabsmax.nbytes + self.nested.absmax2.nbytes + 4)

    @property
    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes / self.numel

    # ----------------------------------------------------------------------- files
    def to_tensors(self, name: str = "weight") -> dict[str, np.ndarray]:
        """Named NumPy arrays for a safetensors file, in bitsandbytes' state-dict layout (module docstring)."""
        state = {"quant_type": self.quant_type, "blocksize": self.blocksize, "dtype": self.dtype,
                 "shape": list(self.shape)}
        out = {name: backend.to_numpy(self.packed).reshape(-1, 1),
               f"{name}.quant_map": code_for(self.quant_type)}
        if self.nested is None:
            out[f"{name}.absmax"] = backend.to_numpy(self.absmax)
        else:
            out[f"{name}.absmax"] = backend.to_numpy(self.nested.qabsmax)
            out[f"{name}.nested_absmax"] = backend.to_numpy(self.nested.absmax2)
            out[f"{name}.nested_quant_map"] = dynamic_map(signed=True)
            state.update(nested_blocksize=self.nested.blocksize, nested_dtype="float32",
                         nested_offset=self.nested.offset)
        out[f"{name}.{STATE_KEY}{self.quant_type}"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict, name: str = "weight") -> "QuantizedTensor":
        """The inverse of ``to_tensors`` (also reads bitsandbytes' own state dicts for nf4 and fp4)."""
        state_keys = [k for k in tensors if k.startswith(f"{name}.{STATE_KEY}")]
        if len(state_keys) != 1:
            raise KeyError(f"expected one '{name}.{STATE_KEY}<quant_type>' entry for the 4-bit tensor {name!r}, "
                           f"found {state_keys or 'none'}; was it saved with QuantizedTensor.to_tensors?")
        state = json.loads(bytes(np.asarray(tensors[state_keys[0]], dtype=np.uint8)).decode())
        quant_type = state["quant_type"]
        _check_table(tensors, f"{name}.quant_map", code_for(quant_type), quant_type)
        absmax, nested = backend.asarray(tensors[f"{name}.absmax"]), None
        if "nested_offset" in state:
            _check_table(tensors, f"{name}.nested_quant_map", dynamic_map(signed=True), "the 8-bit dynamic map")
            nested = DQState(qabsmax=absmax, absmax2=backend.asarray(tensors[f"{name}.nested_absmax"]),
                             offset=float(state["nested_offset"]), blocksize=int(state["nested_blocksize"]))
            absmax = None
        return cls(backend.asarray(tensors[name]).reshape(-1), absmax, tuple(state["shape"]),
                   int(state["blocksize"]), quant_type, nested, state.get("dtype", "float32"))


def _check_table(tensors, key, expected, what):
    """Refuse a file whose code table differs from the one minilora derives (it would decode differently)."""
    if key in tensors and not np.array_equal(np.asarray(tensors[key]).reshape(-1), expected):
        raise ValueError(f"{key} is not the standard {what} table, so its codes would decode to other "
                         f"values; re-quantize the weight with minilora or bitsandbytes' standard types")


def quantize(x, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False) -> QuantizedTensor:
    """Shorthand for ``QuantizedTensor.quantize``: x (any shape) -> QuantizedTensor."""
    return QuantizedTensor.quantize(x, quant_type, blocksize, double_quant)
