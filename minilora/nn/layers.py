"""Layers as pure forward/backward pairs (cs231n style).

Shape letters, used in every docstring of minilora:
    B batch, T time (sequence length), C channels (n_embd), V vocabulary size,
    NH attention heads, HS head size (C // NH), r LoRA rank, K classes.
A weight W is stored (d_out, d_in), as the LoRA paper and PyTorch write it, and applied as x @ W.T.

Each ``*_forward`` returns (out, cache); the matching ``*_backward(dout, cache)`` unpacks the
cache on its first line and returns the gradients of the forward's inputs, in order.
Backward passes return fresh arrays and never keep state between calls.

These are the textbook forms, written as the formulas read. ``minilora.fast.kernels`` holds
optimised forms of layer norm, GELU and attention (in-place arithmetic, row sums through BLAS),
tested equal to these in float64; the training loop switches them on.
"""
from __future__ import annotations

import math

from minilora.nn.backend import xp


# --------------------------------------------------------------------------- linear
def linear_forward(x, W, b):
    """y = x @ W.T + b.

    x (..., d_in), W (d_out, d_in), b (d_out,) or None  ->  y (..., d_out);
    cache = (x, W, has_bias).
    """
    # One 2-D matrix product over all B*T rows: a single large BLAS call is fastest.
    y = (x.reshape(-1, x.shape[-1]) @ W.T).reshape(*x.shape[:-1], W.shape[0])
    if b is not None:
        y += b
    return y, (x, W, b is not None)


def linear_backward(dy, cache, *, weight_grad: bool = True):
    """Gradients of y = x @ W.T + b.

    dy (..., d_out) -> dx (..., d_in), dW (d_out, d_in), db (d_out,).
    With ``weight_grad=False`` (a frozen weight) dW and db are not computed and come back None:
    this skipped product is exactly the work LoRA saves.
    """
    x, W, has_bias = cache
    ### BEGIN SOLUTION
    dy2 = dy.reshape(-1, dy.shape[-1])                    # (N, d_out), N = B*T
    dx = (dy2 @ W).reshape(x.shape)                       # forward: y = x @ W.T  ->  dx = dy @ W
    if not weight_grad:
        return dx, None, None
    dW = dy2.T @ x.reshape(-1, x.shape[-1])               # (d_out, d_in): dW = dy.T @ x
    db = dy2.sum(axis=0) if has_bias else None            # b was broadcast over N rows
    ### END SOLUTION
    return dx, dW, db


# --------------------------------------------------------------------------- embedding
def embedding_forward(idx, W):
    """out = W[idx]: look up one row per token.

    idx (B, T) integer, W (V, C)  ->  out (B, T, C);  cache = (idx, V).
    """
    return W[idx], (idx, W.shape[0])


def embedding_backward(dout, cache):
    """dW (V, C): row v sums dout over every position where token v appeared.

    A token can appear many times, so a plain ``dW[idx] = dout`` would keep only one of the
    contributions; a scatter-add keeps them all.
    """
    idx, V = cache
    C = dout.shape[-1]
    dW = xp.zeros((V, C), dtype=dout.dtype)
    xp.add.at(dW, idx.reshape(-1), dout.reshape(-1, C))
    return dW


# --------------------------------------------------------------------------- layer norm
def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Layer normalisation over the last axis (Ba et al. 2016; GPT-2 uses eps = 1e-5):

        y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta      (mean, biased var over C)

    x (..., C), gamma (C,), beta (C,)  ->  y (..., C);  cache = (xhat, gamma, rstd), with
    xhat (..., C) the normalised input and rstd (..., 1) = 1 / sqrt(var + eps).
    """
    mean = x.mean(axis=-1, keepdims=True)                 # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (..., 1) biased, as PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean) * rstd                              # (..., C)
    return xhat * gamma + beta, (xhat, gamma, rstd)


def layernorm_backward(dy, cache, *, param_grads: bool = True):
    """dy (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).

    With ``param_grads=False`` (frozen gamma and beta) dgamma and dbeta come back None.
    """
    xhat, gamma, rstd = cache
    ### BEGIN SOLUTION
    C = dy.shape[-1]
    dgamma = dbeta = None
    if param_grads:
        dgamma = (dy * xhat).reshape(-1, C).sum(axis=0)   # forward: y = xhat * gamma + beta
        dbeta = dy.reshape(-1, C).sum(axis=0)
    g = dy * gamma                                        # dL/dxhat
    # The three paths from x to xhat (directly, through the mean, through the variance) collapse to
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), all means over C.
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    ### END SOLUTION
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- GELU
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GELU, tanh approximation as in GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    x (...)  ->  y (...);  cache = (x, t) with t the tanh term.
    """
    t = xp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    """dy (...) -> dx (...), by the product rule on 0.5 x (1 + t(x)), with tanh' = 1 - tanh^2:

        dGELU/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    """
    x, t = cache
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x))


# --------------------------------------------------------------------------- softmax cross-entropy
def log_softmax(logits):
    """Numerically stable log-softmax over the last axis (subtract the max first)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, targets, mask=None):
    """Mean negative log-likelihood of ``targets`` over the positions where ``mask`` is 1.

    logits (..., V), targets (...) integer, mask (...) of 0/1 or None (all positions count).
    Returns (loss: float, cache). The mask lets a task train on its answer tokens only.
    """
    V = logits.shape[-1]
    logp = log_softmax(logits).reshape(-1, V)             # (N, V)
    t = targets.reshape(-1)
    w = xp.ones(t.shape, dtype=logits.dtype) if mask is None else mask.reshape(-1).astype(logits.dtype)
    n = float(w.sum())
    if n == 0:
        raise ValueError("cross_entropy_forward: the mask selects no position; nothing to learn from")
    nll = -logp[xp.arange(t.shape[0]), t]                 # (N,)
    loss = float((nll * w).sum()) / n
    return loss, (logp, t, w, n, logits.shape)


def cross_entropy_backward(cache, dloss: float = 1.0):
    """dlogits (..., V): the gradient of ``dloss`` times the loss with respect to the logits.

    ### BEGIN HINT
    dlogits = (softmax - onehot(target)) * mask / n_masked, times dloss.
    ### END HINT
    """
    logp, t, w, n, shape = cache
    ### BEGIN SOLUTION
    dlogits = xp.exp(logp)                                # softmax probabilities (N, V)
    dlogits[xp.arange(t.shape[0]), t] -= 1.0              # forward: -log p[target]
    dlogits *= (w * (dloss / n))[:, None]                 # forward: mean over masked positions
    ### END SOLUTION
    return dlogits.reshape(shape)
