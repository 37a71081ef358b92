"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv 2106.09685).

A frozen pre-trained weight W0 (d_out, d_in) is adapted by a low-rank update (§4.1, eq. 3):

    h = W0 x + (alpha / r) B A x,    A (r, d_in) random,  B (d_out, r) zero at init,

so dW = B A has W0's shape and rank at most r, and the adapted model equals the base model at
step 0. Only A and B train; W0 gets no gradient and no optimizer state.

Shapes: B batch, T time, C channels, r rank, N = B*T rows. (B the batch size and B the matrix
never meet in one formula below: the matrix is written ``B_``/``lora_B`` in code.)

This module holds the math of the layer, as pure functions: ``lora_forward`` / ``lora_backward``,
``merge_weights`` / ``unmerge_weights`` (W0 + s B A and back), ``init_lora_pair`` and ``lora_scale``
(the factor s, the paper's or rsLoRA's); and its entry
"lora" in the registry of linear kinds (``minilora.nn.linears``), through which the model runs an
adapted layer. ``minilora.adapters.config.LoraConfig`` says which layers to adapt, and
``minilora.adapters.lora_model.LoraModel`` puts adapters on a ``GPT``. On a base stored in 4 bits
(``minilora.adapters.qbase.quantize_base``) the same kind is QLoRA (Dettmers et al. 2023): its
registry entry dequantizes W0 for each product and hands the textbook pair a float W0.
"""
from __future__ import annotations

import math

import numpy as np

from minilora.nn import backend
from minilora.nn.layers import linear_forward
from minilora.nn.linears import LinearKind, register
from minilora.adapters.qlinear import frozen_weight, hold_4bit, refuse_training_the_4bit_weight, reload_4bit

INITS = ("gaussian", "peft_gaussian", "kaiming", "reversed", "zeros")


# --------------------------------------------------------------------------- the layer
def lora_forward(x, W0, b, A, B_, scale, dropout_mask=None):
    """h = x W0^T + b + s (x A^T) B^T, the LoRA linear layer (Hu et al. 2021, eq. 3).

    x (..., d_in), W0 (d_out, d_in), b (d_out,) or None, A (r, d_in), B_ (d_out, r),
    scale s = alpha / r, dropout_mask (..., d_in) or None (scaled keep-mask on the A path only,
    as loralib and PEFT)  ->  h (..., d_out);
    cache = (x2, xa, W0, A, B_, u, scale, dropout_mask, shape of x).
    B A is never formed: (x A^T) is (N, r), a thin matrix, so the extra cost is 2 N r (d_in + d_out).
    """
    ### BEGIN SOLUTION
    h, _ = linear_forward(x, W0, b)                           # frozen path: x W0^T + b
    x2 = x.reshape(-1, x.shape[-1])                           # (N, d_in)
    xa = x2 if dropout_mask is None else x2 * dropout_mask.reshape(x2.shape)
    u = xa @ A.T                                              # (N, r): down-projection
    h += ((scale * u) @ B_.T).reshape(h.shape)                # (N, d_out): up-projection, times alpha/r
                                                              # (scaling the thin (N, r) u is cheaper)
    ### END SOLUTION
    return h, (x2, xa, W0, A, B_, u, scale, dropout_mask, x.shape)


def lora_backward(dh, cache):
    """dh (..., d_out) -> dx (..., d_in), dA (r, d_in), dB (d_out, r). No dW0: W0 is frozen.

    ### BEGIN HINT
    With u = x A^T and h = x W0^T + s u B^T (docs/lora_math.md):
        dB = s dh^T u,   du = s dh B,   dA = du^T x,   dx = dh W0 + du A.
    At init B = 0, so du = 0 and dA = 0: only B moves in the first step.
    ### END HINT
    """
    x2, xa, W0, A, B_, u, scale, dropout_mask, x_shape = cache
    ### BEGIN SOLUTION
    dh2 = dh.reshape(-1, dh.shape[-1])                        # (N, d_out)
    dB = scale * (dh2.T @ u)                                  # forward: h += s u B^T   -> dB = s dh^T u
    du = scale * (dh2 @ B_)                                   # (N, r)                  -> du = s dh B
    dA = du.T @ xa                                            # forward: u = xa A^T     -> dA = du^T xa
    dxa = du @ A                                              # (N, d_in)               -> dxa = du A
    if dropout_mask is not None:
        dxa *= dropout_mask.reshape(dxa.shape)                # forward: xa = x * mask
    dx = dh2 @ W0                                             # forward: h = x W0^T + ... -> dh W0
    dx += dxa
    ### END SOLUTION
    return dx.reshape(x_shape), dA, dB


def merge_weights(W0, A, B_, scale):
    """W = W0 + s B A: the merged weight, same shape as W0 (§4.1, "No Additional Inference Latency")."""
    ### BEGIN SOLUTION
    return W0 + scale * (B_ @ A)
    ### END SOLUTION


def unmerge_weights(W, A, B_, scale):
    """W0 = W - s B A: undo ``merge_weights`` (up to float rounding)."""
    ### BEGIN SOLUTION
    return W - scale * (B_ @ A)
    ### END SOLUTION


def init_lora_pair(d_out, d_in, r, *, init="gaussian", std=None, rng=None, dtype=None):
    """A (r, d_in) and B (d_out, r) as the paper starts them: A random, B = 0, so B A = 0 (§4.1).

    init = "gaussian":      A ~ N(0, std^2), std = 1/sqrt(d_in) unless given. minilora's default: the
                            paper says "random Gaussian" without a sigma; 1/sqrt(d_in) does not depend
                            on r, like loralib's kaiming init, so with the alpha/r scale the size of an
                            update stays the same when r changes, which is what §4.1 relies on;
           "peft_gaussian": A ~ N(0, (1/r)^2), exactly PEFT's init_lora_weights="gaussian" (for parity;
                            note the update then shrinks like 1/r^2 with the alpha/r scale);
           "kaiming":       A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (loralib and PEFT's default: kaiming-uniform
                            with a = sqrt(5));
           "reversed":      A = 0, B ~ N(0, std^2) (an ablation: dW = 0 too, but now A moves first);
           "zeros":         A = 0 and B = 0 (an ablation: every gradient stays 0, nothing ever moves).
    """
    if init not in INITS:
        raise ValueError(f"unknown init_lora_weights {init!r}; choose one of {INITS}")
    rng = rng if rng is not None else backend.rng(0)
    dtype = dtype or backend.default_dtype()
    ### BEGIN SOLUTION
    if std is None:
        std = 1.0 / r if init == "peft_gaussian" else 1.0 / math.sqrt(d_in)
    A, B_ = np.zeros((r, d_in)), np.zeros((d_out, r))        # drawn on the CPU, moved below
    if init in ("gaussian", "peft_gaussian"):
        A = rng.normal(0.0, std, (r, d_in))
    elif init == "kaiming":
        bound = 1.0 / math.sqrt(d_in)                        # kaiming-uniform with a = sqrt(5)
        A = rng.uniform(-bound, bound, (r, d_in))
    elif init == "reversed":
        B_ = rng.normal(0.0, std, (d_out, r))
    ### END SOLUTION
    return backend.asarray(A, dtype=dtype), backend.asarray(B_, dtype=dtype)


def lora_scale(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor s in h = W0 x + s B A x: Hu et al. 2021's (§4.1), or rsLoRA's (Kalajdzievski 2023).

    lora_alpha: the constant alpha (§4.1: set once, "to the first r we try", and not tuned);
    r:          the rank, an integer >= 1;
    use_rslora: the rank-stabilised scale, under which the size of s B A x no longer shrinks as r grows.
    ### BEGIN HINT
    s = alpha / r (§4.1), or with rsLoRA s = alpha / sqrt(r) (Kalajdzievski 2023, Theorem 3.2).
    ### END HINT
    """
    if isinstance(r, bool) or int(r) != r or r < 1:
        raise ValueError(f"rank r must be a positive integer, got {r!r}")
    ### BEGIN SOLUTION
    return lora_alpha / (math.sqrt(r) if use_rslora else r)
    ### END SOLUTION


# --------------------------------------------------------------------------- the registry entry
def dropout_mask(rng, shape, p: float, dtype):
    """A scaled keep-mask (shape) for inverted dropout: 1/(1-p) with probability 1-p, else 0.

    Drawn on the CPU with the model's NumPy generator, so NumPy and CuPy runs draw the same masks.
    """
    keep = rng.random(shape) >= p
    return backend.asarray(keep / (1.0 - p), dtype=dtype)


def _lora_linear_forward(x, t, *, scale, dropout=0.0, training=False, rng=None, **quant):
    """The "lora" kind: lora_forward on the spec's tensors; dropout on the A path in training only.

    On a 4-bit base (QLoRA, Dettmers et al. 2023, eq. 5: the spec's roles are the weight's parts and
    ``quant`` its quantization options, ``minilora.adapters.qlinear``) W0 is dequantized for the
    product, and the cache keeps the 4-bit weight instead of the float copy.
    """
    mask = dropout_mask(rng, x.shape, dropout, x.dtype) if training and dropout > 0.0 else None
    W0 = frozen_weight(x.dtype, t, quant)                     # (d_out, d_in)
    y, cache = lora_forward(x, W0, t.get("bias"), t["lora_A"], t["lora_B"], scale, mask)
    return y, hold_4bit(cache, W0, t, quant)


def _lora_linear_backward(dh, cache, needs):
    """lora_backward, keeping the gradients the model asks for; W0 never gets one (§4.1)."""
    if "weight" in needs:
        raise RuntimeError("the frozen W0 of a LoRA layer was marked trainable, but LoRA computes no dW0; "
                           "freeze it again, or merge_and_unload() and train the plain model")
    refuse_training_the_4bit_weight(needs, "lora")
    dx, dA, dB = lora_backward(dh, reload_4bit(cache))        # QLoRA eq. 6: dX through the dequantized W0
    grads = {"lora_A": dA, "lora_B": dB}
    if "bias" in needs:                                       # bias="all" or "lora_only" (a copy per adapter)
        grads["bias"] = dh.reshape(-1, dh.shape[-1]).sum(axis=0)
    return dx, {role: g for role, g in grads.items() if role in needs}


def _lora_merge(t, *, scale, dropout=0.0, **quant):
    """W0 + s B A as a float matrix (on a 4-bit base: the dequantized W0 + s B A, not re-quantized)."""
    return merge_weights(frozen_weight(t["lora_A"].dtype, t, quant), t["lora_A"], t["lora_B"], scale), None


def _lora_unmerge(W, t, state, *, scale, dropout=0.0, **quant):
    return unmerge_weights(W, t["lora_A"], t["lora_B"], scale)


LORA = register(LinearKind("lora", ("weight", "bias", "lora_A", "lora_B"), _lora_linear_forward,
                           _lora_linear_backward, merge=_lora_merge, unmerge=_lora_unmerge,
                           stochastic=lambda options: options.get("dropout", 0.0) > 0.0))
