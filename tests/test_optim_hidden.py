"""Hidden spec of minilora.nn.optim.adamw_update: AdamW against a plain re-implementation.

This file holds a reference implementation, so it is not handed out: the student workspace lacks
it, and a teacher grades with it through ``--tests-from`` (docs/teachers.md).
"""
import numpy as np

from minilora.nn.optim import AdamW

from test_optim import TRAINABLE, _grads, _params


def _reference_adamw(params, grad_steps, lr, b1, b2, eps, wd, no_decay):
    """AdamW written out directly, one new array per line, global step count."""
    p = {n: a.copy() for n, a in params.items()}
    m = {n: np.zeros_like(p[n]) for n in TRAINABLE}
    v = {n: np.zeros_like(p[n]) for n in TRAINABLE}
    for t, grads in enumerate(grad_steps, start=1):
        for n, g in grads.items():
            decay = 0.0 if no_decay(n) else wd
            p[n] = p[n] * (1 - lr * decay)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g**2
            m_hat = m[n] / (1 - b1**t)
            v_hat = v[n] / (1 - b2**t)
            p[n] = p[n] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adamw_matches_direct_reimplementation_over_five_steps():
    """In float64, 5 steps with weight decay agree with a plain NumPy AdamW to 1e-12."""
    lr, betas, eps, wd = 0.05, (0.8, 0.95), 1e-8, 0.1
    params = _params()
    grad_steps = [_grads(params, seed=s) for s in range(5)]
    expected = _reference_adamw(params, grad_steps, lr, *betas, eps, wd,
                                no_decay=lambda n: n.endswith("bias"))
    opt = AdamW(lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for grads in grad_steps:
        opt.step(params, grads)
    for n in params:
        err = np.max(np.abs(params[n] - expected[n]))
        assert err < 1e-12, f"{n}: expected reference values, max abs error {err:.3e}"
