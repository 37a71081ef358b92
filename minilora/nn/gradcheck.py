"""Numerical gradient checking: the proof that every hand-written backward pass is right.

The idea (cs231n, micrograd): for a scalar function f, the central difference
    (f(x + h e_i) - f(x - h e_i)) / (2 h)
approximates df/dx_i with error O(h^2). We compare it with the analytic gradient from a
layer's ``backward``. For a layer with output ``out`` we check the scalar
    L = sum(out * dout)
with a fixed random ``dout``, because dL/dinput is exactly what ``backward(dout, cache)`` returns.

Work in float64: with h ~ 1e-6 the rounding error of float32 (~1e-7 relative) swamps the
difference and checks stall near 1e-4 relative error; float64 checks reach ~1e-9 on smooth layers.

Students can call these helpers on their own layers::

    from minilora.nn.gradcheck import check_layer
    check_layer(linear_forward, linear_backward, [x, W, b])   # raises AssertionError if wrong
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from minilora.nn import backend

# Relative error we expect from a correct backward pass on a smooth layer in float64.
DEFAULT_TOL = 1e-7
# Absolute agreement that also counts as a pass. Some gradients are exactly zero by the math
# (the key bias: softmax ignores a shift shared by all scores), and then a relative error
# compares rounding noise (~1e-11) with rounding noise and means nothing.
DEFAULT_ATOL = 1e-9


# --------------------------------------------------------------------------- error measure
def rel_error(a, b) -> float:
    """Relative error ||a - b|| / (||a|| + ||b||) over the whole tensor (0 when both are 0).

    A norm-based measure: unlike an element-wise maximum, a few entries that are zero in both
    gradients (masked positions, unused vocabulary rows) cannot blow it up.
    """
    a = backend.to_numpy(a).astype(np.float64)
    b = backend.to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


# --------------------------------------------------------------------------- numerical gradients
def _entries(x, max_entries: int | None, rng: np.random.Generator):
    """The flat indices to perturb: all of them, or a random sample for large tensors."""
    if max_entries is None or x.size <= max_entries:
        return np.arange(x.size)
    return rng.choice(x.size, size=max_entries, replace=False)


def numerical_gradient(f: Callable[[], float], x, *, h: float = 1e-6,
                       max_entries: int | None = None, seed: int = 0):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``x`` is perturbed in place (and restored), so ``f`` must read ``x`` when called.
    With ``max_entries`` set, only that many randomly chosen entries are estimated (the sparse
    variant for large tensors); the others are returned as NaN. Returns (grad, checked_indices).
    """
    grad = np.full(x.size, np.nan)
    flat = x.reshape(-1)  # a view: writing flat[i] changes x
    if flat.base is None and flat is not x:
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")
    idx = _entries(x, max_entries, backend.rng(seed))
    for i in idx:
        i = int(i)
        old = flat[i].item()
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(x.shape), idx


def check_gradient(f: Callable[[], float], x, analytic, *, name: str = "x", h: float = 1e-6,
                   tol: float = DEFAULT_TOL, atol: float = DEFAULT_ATOL,
                   max_entries: int | None = None, seed: int = 0) -> float:
    """Assert that ``analytic`` is the gradient of ``f()`` with respect to ``x``; return the error.

    Passes when the relative error is below ``tol``, or when every entry agrees to ``atol``
    (for gradients that are zero by the math). Raises AssertionError naming the tensor, the
    error and the tolerance when the check fails.
    """
    _check_shape(analytic, x, name)
    numeric, idx = numerical_gradient(f, x, h=h, max_entries=max_entries, seed=seed)
    analytic = backend.to_numpy(analytic).reshape(-1)[idx]
    numeric = numeric.reshape(-1)[idx]
    err = rel_error(analytic, numeric)
    if np.abs(analytic - numeric).max(initial=0.0) < atol:
        return err
    assert err < tol, (
        f"gradient of {name} is wrong: relative error {err:.2e} >= tolerance {tol:.0e} "
        f"over {len(idx)} entries (analytic vs central differences){diagnose(analytic, numeric, name)}"
    )
    return err


# --------------------------------------------------------------------------- messages that teach
def _check_shape(analytic, x, name: str) -> None:
    """A gradient has the shape of its variable; say so before comparing any number."""
    got, want = tuple(getattr(analytic, "shape", ())), tuple(x.shape)
    if got == want:
        return
    why = (" It is the transpose of the right shape: check the order of the product (a gradient "
           "of W (d_out, d_in) is (d_out, d_in), like W)." if got == want[::-1] and len(want) == 2 else "")
    raise AssertionError(f"gradient of {name} has shape {got}, but {name} has shape {want}: "
                         f"a gradient always has the shape of its variable.{why}")


def diagnose(analytic, numeric, name: str = "x") -> str:
    """A sentence on how a wrong gradient is wrong, when the pattern is a common one; else "".

    analytic, numeric: flat float arrays of the same length (the checked entries).
    Recognised: a zero numerical gradient (the loss does not depend on the variable here, e.g. A
    while B = 0), a zero analytic gradient, and a constant factor (a scale forgotten or counted
    twice, a mean instead of a sum, a flipped sign).
    """
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    na, nn = np.linalg.norm(a), np.linalg.norm(n)
    if nn == 0:
        return (f". The loss does not depend on {name} at this point (numerical gradient 0) but the "
                f"analytic one is not 0. (If a partner factor is zero, as B is at LoRA's init, no check "
                f"can test {name}: use random non-zero values.)")
    if na == 0:
        return f". The analytic gradient is exactly 0: is the path from the output to {name} missing?"
    c = float(a @ n) / float(n @ n)                       # best c with analytic = c * numeric
    if a.size > 1 and np.linalg.norm(a - c * n) < 1e-6 * na and abs(c - 1) > 1e-3:   # one entry: always a factor
        kind = "the sign is flipped" if abs(c + 1) < 1e-3 else "a scale is missing or counted twice, " \
            "or a mean stands where a sum should (or the reverse)"
        return f". It is exactly {c:.6g} times the right gradient everywhere: {kind}."
    return ""


# --------------------------------------------------------------------------- whole layers
def check_layer(forward: Callable, backward: Callable, inputs: Sequence, *,
                wrt: Sequence[int] | None = None, names: Sequence[str] | None = None,
                tol: float = DEFAULT_TOL, h: float = 1e-6, max_entries: int | None = None,
                seed: int = 0) -> dict[str, float]:
    """Check a forward/backward pair against central differences; return the error per input.

    forward(*inputs) -> (out, cache);  backward(dout, cache) -> tuple of gradients, one for
    each input listed in ``wrt`` (default: every floating-point input, in order).
    The scalar checked is L = sum(out * dout) with a fixed random dout. Inputs must be float64.
    """
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if backend.is_array(a) and a.dtype.kind == "f"]
    names = list(names) if names is not None else [f"input{i}" for i in wrt]
    for i in wrt:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"check_layer needs float64 inputs (got {inputs[i].dtype} for "
                            f"{names[list(wrt).index(i)]}); float32 rounding hides real errors")
    out, cache = forward(*inputs)
    dout = backend.asarray(backend.rng(seed + 1).standard_normal(out.shape))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} inputs in wrt")

    def loss():
        return float((forward(*inputs)[0] * dout).sum())

    errors = {}
    for name, i, g in zip(names, wrt, grads):
        errors[name] = check_gradient(loss, inputs[i], g, name=name, h=h, tol=tol,
                                      max_entries=max_entries, seed=seed)
    return errors
