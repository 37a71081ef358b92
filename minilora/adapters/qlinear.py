"""A frozen linear layer whose weight is stored in 4 bits: the base layer of QLoRA (Dettmers et al. 2023, §3).

QLoRA eq. 5:  Y = X doubleDequant(c1, c2, W^NF4) + b    (the LoRA term X L1 L2 is added by the adapter)

    x (..., d_in), qweight a ``QuantizedTensor`` of shape (d_out, d_in), b (d_out,) or None -> y (..., d_out)

The weight is dequantized for every product it takes part in, in the activation dtype, and never
kept: between the forward and the backward only the 4-bit weight is held, which is where QLoRA's
memory saving comes from. bitsandbytes does the same (``MatMul4Bit``: the forward dequantizes and
multiplies, the backward dequantizes again for ``grad_A = grad_output @ W``). Dequantizing uses
``quant_fast.dequantize_fast``: the numbers of ``qweight.dequantize()`` in one gather.

The backward returns dx only. The 4-bit weight is frozen, so no gradient for it exists (QLoRA
eq. 6: only dE/dL_i for the adapters is needed; dE/dX flows through the dequantized W).

In a model, a quantized weight is data like any other: its arrays live in ``model.params`` under
the weight's name plus a part (``storage_tensors``), and the layer's spec names them by role and
carries the static facts as options (``quant_options``):

    roles    codes (ceil(n/2),) uint8, absmax (nb,) float32 (or uint8 codes with double quantization),
             nested_absmax (nb2,) float32 and nested_offset (1,) float32 (double quantization only)
    options  shape (d_out, d_in), quant_type, blocksize, double_quant, nested_blocksize

The kind "qlinear" (bottom) runs the pair for such a spec. The LoRA and DoRA kinds read their W0
through ``frozen_weight`` and keep it in their caches through ``hold_4bit``, so the same kinds
run on a float base (LoRA) and on a 4-bit base (QLoRA): no kind per combination.
"""
from __future__ import annotations

from dataclasses import dataclass

from minilora.nn.backend import xp
from minilora.nn.linears import LinearKind, register
from minilora.adapters.quant_dq import DQState
from minilora.adapters.quant_fast import dequantize_fast
from minilora.adapters.quant_tensor import QuantizedTensor

QUANT_ROLES = ("codes", "absmax", "nested_absmax", "nested_offset")   # the parts of a 4-bit weight
QUANT_OPTIONS = ("shape", "quant_type", "blocksize", "double_quant", "nested_blocksize")   # its static facts


# --------------------------------------------------------------------------- the pure pair
def _check(x, qweight) -> None:
    if not isinstance(qweight, QuantizedTensor):
        raise TypeError(f"qweight must be a QuantizedTensor (quantize the weight first), got {type(qweight).__name__}")
    if len(qweight.shape) != 2:
        raise ValueError(f"a linear layer needs a 2-D weight (d_out, d_in); the quantized tensor has shape "
                         f"{qweight.shape}. Quantize the (d_out, d_in) matrix, not a reshaped copy")
    if x.shape[-1] != qweight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects d_in = {qweight.shape[1]} "
                         f"(weight shape {qweight.shape} is (d_out, d_in))")


def qlinear_forward(x, qweight: QuantizedTensor, b=None):
    """y = x @ dequant(W).T + b, with W dequantized once, in x's dtype.

    x (..., d_in), qweight (d_out, d_in) 4-bit, b (d_out,) or None  ->  y (..., d_out);
    cache = (qweight, x's shape, x's dtype): the 4-bit weight, not the dequantized one.
    """
    _check(x, qweight)
    W = dequantize_fast(qweight, x.dtype)                         # (d_out, d_in), compute dtype of x
    y = (x.reshape(-1, x.shape[-1]) @ W.T).reshape(*x.shape[:-1], W.shape[0])
    if b is not None:
        y += b
    return y, (qweight, x.shape, x.dtype)


def qlinear_backward(dy, cache):
    """dy (..., d_out) -> dx (..., d_in). No dW and no db: the 4-bit weight and its bias are frozen."""
    qweight, x_shape, dtype = cache
    W = dequantize_fast(qweight, dtype)                           # dequantized again, as bitsandbytes' backward
    dx = dy.reshape(-1, dy.shape[-1]) @ W                         # forward: y = x @ W.T  ->  dx = dy @ W
    return dx.reshape(x_shape)


# --------------------------------------------------------------------------- a 4-bit weight as data
def storage_tensors(qweight: QuantizedTensor) -> dict:
    """The arrays of a QuantizedTensor by role (module docstring): what ``model.params`` holds for it."""
    if qweight.nested is None:
        return {"codes": qweight.packed, "absmax": qweight.absmax}
    state = qweight.nested
    return {"codes": qweight.packed, "absmax": state.qabsmax, "nested_absmax": state.absmax2,
            "nested_offset": xp.asarray([state.offset], dtype=xp.float32)}


def quant_options(qweight: QuantizedTensor) -> dict:
    """The static facts of a QuantizedTensor as a spec's options (plain numbers, a tuple and a string)."""
    options = {"shape": tuple(qweight.shape), "quant_type": qweight.quant_type, "blocksize": qweight.blocksize,
               "double_quant": qweight.nested is not None}
    if qweight.nested is not None:
        options["nested_blocksize"] = qweight.nested.blocksize
    return options


def from_storage(t: dict, *, shape, quant_type, blocksize, double_quant, nested_blocksize=256) -> QuantizedTensor:
    """The QuantizedTensor a spec's tensors ``t`` (by role) and options describe; no array is copied."""
    if not double_quant:
        return QuantizedTensor(t["codes"], t["absmax"], shape, blocksize, quant_type)
    nested = DQState(qabsmax=t["absmax"], absmax2=t["nested_absmax"], offset=float(t["nested_offset"][0]),
                     blocksize=nested_blocksize)
    return QuantizedTensor(t["codes"], None, shape, blocksize, quant_type, nested)


def frozen_weight(dtype, t: dict, quant: dict):
    """W0 (d_out, d_in) for one product: t["weight"] on a float base, else the 4-bit weight dequantized in ``dtype``.

    ``quant``: the spec's quantization options (empty for a float base).
    """
    return dequantize_fast(from_storage(t, **quant), dtype) if quant else t["weight"]


@dataclass(frozen=True)
class Held4bit:
    """A frozen 4-bit weight kept in a layer's cache instead of its float copy (QLoRA's memory saving)."""
    qweight: QuantizedTensor
    dtype: object

    def dequantize(self):
        return dequantize_fast(self.qweight, self.dtype)


def hold_4bit(cache: tuple, W, t: dict, quant: dict) -> tuple:
    """``cache`` with the dequantized W (found by identity) replaced by a Held4bit; unchanged on a float base.

    So a pair written for a float W0 (``lora_forward``, ``dora_forward``) keeps only 4 bits per
    weight between its forward and its backward; ``reload_4bit`` dequantizes again for the backward.
    """
    if not quant:
        return cache
    held = Held4bit(from_storage(t, **quant), W.dtype)
    return tuple(held if item is W else item for item in cache)


def reload_4bit(cache: tuple) -> tuple:
    """The inverse of ``hold_4bit``: each Held4bit dequantized (once) for the backward's product."""
    return tuple(item.dequantize() if isinstance(item, Held4bit) else item for item in cache)


def refuse_training_the_4bit_weight(needs, kind: str) -> None:
    """A 4-bit weight has no gradient (QLoRA eq. 6): refuse a spec that marks one of its parts trainable."""
    wrong = sorted(set(needs) & set(QUANT_ROLES + ("weight",)))
    if wrong:
        raise RuntimeError(f"the frozen 4-bit weight of a {kind!r} layer was marked trainable ({wrong}), but a "
                           f"4-bit weight gets no gradient; freeze it again, or dequantize the model "
                           f"(merge_and_unload) and train the float weights")


# --------------------------------------------------------------------------- the registry entry
def _qlinear_kind_forward(x, t, *, training=False, rng=None, **quant):
    """The "qlinear" kind: qlinear_forward on the QuantizedTensor the spec's roles and options describe."""
    return qlinear_forward(x, from_storage(t, **quant), t.get("bias"))


def _qlinear_kind_backward(dy, cache, needs):
    """dx always; db when the bias trains (BitFit on a 4-bit base); never a gradient for the 4-bit weight."""
    refuse_training_the_4bit_weight(needs, "qlinear")
    grads = {"bias": dy.reshape(-1, dy.shape[-1]).sum(axis=0)} if "bias" in needs else {}
    return qlinear_backward(dy, cache), grads


QLINEAR = register(LinearKind("qlinear", QUANT_ROLES + ("bias",), _qlinear_kind_forward, _qlinear_kind_backward))
