"""A frozen linear layer whose weight is stored in 4 bits: the base layer of QLoRA (Dettmers et al. 2023, §3).

QLoRA eq. 5:  Y = X doubleDequant(c1, c2, W^NF4) + b    (the LoRA term X L1 L2 is added by the adapter)

    x (..., d_in), qweight a ``QuantizedTensor`` of shape (d_out, d_in), b (d_out,) or None -> y (..., d_out)

The weight is dequantized on every call, in the activation dtype, and never kept: between the
forward and the backward only the 4-bit weight is held, which is where QLoRA's memory saving
comes from. bitsandbytes does the same (``MatMul4Bit``: the forward dequantizes and multiplies,
the backward dequantizes again for ``grad_A = grad_output @ W``).

The backward returns dx only. The 4-bit weight is frozen, so no gradient for it exists (QLoRA
eq. 6: only dE/dL_i for the adapters is needed; dE/dX flows through the dequantized W). The bias
is frozen with it.
"""
from __future__ import annotations

from minilora.adapters.quant_tensor import QuantizedTensor


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
    W = qweight.dequantize(dtype=x.dtype)                         # (d_out, d_in), compute dtype of x
    y = (x.reshape(-1, x.shape[-1]) @ W.T).reshape(*x.shape[:-1], W.shape[0])
    if b is not None:
        y += b
    return y, (qweight, x.shape, x.dtype)


def qlinear_backward(dy, cache):
    """dy (..., d_out) -> dx (..., d_in). No dW and no db: the 4-bit weight and its bias are frozen."""
    qweight, x_shape, dtype = cache
    W = qweight.dequantize(dtype=dtype)                           # dequantized again, as bitsandbytes' backward
    dx = dy.reshape(-1, dy.shape[-1]) @ W                         # forward: y = x @ W.T  ->  dx = dy @ W
    return dx.reshape(x_shape)
