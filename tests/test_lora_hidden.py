"""Hidden spec of minilora.adapters.lora.lora_forward: eq. (3) written out as a formula.

This file holds a reference implementation, so it is not handed out: the student workspace lacks
it, and a teacher grades with it through ``--tests-from`` (docs/teachers.md).
"""
import numpy as np

from minilora.adapters.lora import lora_forward


def test_lora_forward_matches_its_closed_form(rng):
    """eq. (3) written out: h = x W0^T + b + (alpha/r) (x A^T) B^T, dropout on the A path only."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = rng.standard_normal((3, 6)), rng.standard_normal((5, 3))
    mask = (rng.random((2, 4, 6)) > 0.5) * 2.0
    h, _ = lora_forward(x, W0, b, A, B_, 0.75, mask)
    expected = x @ W0.T + b + 0.75 * ((x * mask) @ A.T) @ B_.T
    assert np.allclose(h, expected, atol=1e-12), f"max diff {np.abs(h - expected).max():.2e}"
