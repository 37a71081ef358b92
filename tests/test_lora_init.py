"""Specification of PiSSA / OLoRA initialisation and their conversion back to plain LoRA."""

import numpy as np
import pytest

from minilora.adapters.dora import dora_forward, dora_magnitude_init
from minilora.adapters.lora import lora_forward, lora_scale, merge_weights
from minilora.adapters.lora_init import converted_lora_alpha, olora_init, pissa_init, to_plain_lora

from helpers import TINY_LORA_BASE, tiny_float64_base

INITS = {"pissa": pissa_init, "olora": olora_init}
SHAPES = [(6, 6), (5, 9), (9, 5)]


def trained(A0, B0, rng, size=0.3):
    """A0, B0 moved by a random step: what a few training steps make of them."""
    return A0 + size * rng.standard_normal(A0.shape), B0 + size * rng.standard_normal(B0.shape)


# --------------------------------------------------------------------------- init
@pytest.mark.parametrize("name", INITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_residual_plus_adapter_equals_w0(rng, name, shape):
    """W_res + s B0 A0 = W0: the model equals the base at init, on square and non-square W0."""
    W0 = rng.standard_normal(shape)
    A0, B0, W_res = INITS[name](W0, 3, 0.5)
    assert A0.shape == (3, shape[1]) and B0.shape == (shape[0], 3), (A0.shape, B0.shape)
    err = np.abs(W_res + 0.5 * B0 @ A0 - W0).max()
    assert err < 1e-13, f"{name}: W_res + s B0 A0 differs from W0 by {err:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_pissa_adapter_is_the_principal_rank_r_part(rng, shape):
    """s B0 A0 = U_r S_r V_r^T: W_res keeps exactly the singular values S[r:] (PiSSA §3)."""
    W0 = rng.standard_normal(shape)
    S = np.linalg.svd(W0, compute_uv=False)
    A0, B0, W_res = pissa_init(W0, 2, 4.0)
    got = np.linalg.svd(W_res, compute_uv=False)[: len(S) - 2]
    assert np.allclose(got, S[2:], atol=1e-12), f"residual singular values {got} vs tail {S[2:]}"
    assert np.allclose(np.linalg.svd(4.0 * B0 @ A0, compute_uv=False)[:2], S[:2], rtol=1e-12)


def test_pissa_factors_split_the_singular_values_evenly(rng):
    """A0 A0^T = B0^T B0 = diag(S_r / s): both factors carry sqrt(S_r / s)."""
    W0 = rng.standard_normal((7, 5))
    S = np.linalg.svd(W0, compute_uv=False)
    A0, B0, _ = pissa_init(W0, 3, 2.0)
    expected = np.diag(S[:3] / 2.0)
    assert np.allclose(A0 @ A0.T, expected, atol=1e-12), A0 @ A0.T
    assert np.allclose(B0.T @ B0, expected, atol=1e-12), B0.T @ B0


def test_olora_B_is_orthonormal_and_A_upper_triangular(rng):
    """OLoRA: B0 = Q[:, :r] has orthonormal columns, A0 = R[:r] is upper triangular."""
    A0, B0, _ = olora_init(rng.standard_normal((8, 6)), 4, 2.0)
    assert np.allclose(B0.T @ B0, np.eye(4), atol=1e-14), B0.T @ B0
    assert np.allclose(np.tril(A0, -1), 0.0), A0


@pytest.mark.parametrize("name", INITS)
def test_rank_out_of_range_is_a_clear_error(rng, name):
    """r > min(d_out, d_in) is refused with the bound in the message."""
    with pytest.raises(ValueError, match=r"rank r = 6 .* min\(d_out, d_in\) = 5"):
        INITS[name](rng.standard_normal((5, 8)), 6, 1.0)


def test_dora_on_pissa_starts_at_the_base_layer(rng):
    """DoRA's magnitude from W_res + s B0 A0 = W0 makes a PiSSA-initialised DoRA layer the base layer."""
    W0, b, x = rng.standard_normal((6, 4)), rng.standard_normal(6), rng.standard_normal((3, 4))
    A0, B0, W_res = pissa_init(W0, 2, 0.5)
    m = dora_magnitude_init(W_res, A0, B0, 0.5)
    assert np.allclose(m, np.linalg.norm(W0, axis=1), rtol=1e-13), m
    y, _ = dora_forward(x, W_res, b, A0, B0, m, 0.5)
    assert np.allclose(y, x @ W0.T + b, atol=1e-13), f"max diff {np.abs(y - x @ W0.T - b).max():.2e}"


# --------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("name", INITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_converted_adapter_reproduces_the_trained_layer(rng, name, shape):
    """W0 + s B2 A2 = W_res + s B A, and the LoRA layer outputs agree, with a rank-2r adapter."""
    W0, b, x = rng.standard_normal(shape), rng.standard_normal(shape[0]), rng.standard_normal((2, 3, shape[1]))
    s = 0.75
    A0, B0, W_res = INITS[name](W0, 2, s)
    A, B_ = trained(A0, B0, rng)
    A2, B2 = to_plain_lora(A0, B0, A, B_)
    assert A2.shape == (4, shape[1]) and B2.shape == (shape[0], 4), (A2.shape, B2.shape)
    err = np.abs(merge_weights(W0, A2, B2, s) - merge_weights(W_res, A, B_, s)).max()
    assert err < 1e-13, f"merged weights differ by {err:.2e}"
    y_trained, _ = lora_forward(x, W_res, b, A, B_, s)
    y_plain, _ = lora_forward(x, W0, b, A2, B2, s)
    assert np.allclose(y_plain, y_trained, atol=1e-12), f"max diff {np.abs(y_plain - y_trained).max():.2e}"


@pytest.mark.parametrize("name", INITS)
def test_converted_adapters_reproduce_the_trained_models_logits(rng, name):
    """A GPT whose q and v use W_res + s B A gives the same logits as W0 + s B2 A2 (every block)."""
    trained_model, converted_model = tiny_float64_base(), tiny_float64_base()
    s = 2.0
    for i in range(TINY_LORA_BASE.n_layer):
        for kind in ("wq", "wv"):
            key = f"blocks.{i}.attn.{kind}.weight"
            W0 = converted_model.params[key].copy()
            A0, B0, W_res = INITS[name](W0, 2, s)
            A, B_ = trained(A0, B0, rng, size=0.05)
            A2, B2 = to_plain_lora(A0, B0, A, B_)
            trained_model.params[key][...] = merge_weights(W_res, A, B_, s)
            converted_model.params[key][...] = merge_weights(W0, A2, B2, s)
    idx = rng.integers(0, TINY_LORA_BASE.vocab_size, (2, 6))
    base_logits, _ = tiny_float64_base().forward(idx)
    logits, _ = trained_model.forward(idx)
    logits_plain, _ = converted_model.forward(idx)
    effect = np.abs(logits - base_logits).max()
    assert effect > 1e-3, f"the trained adapters should change the logits, max change {effect:.2e}"
    assert np.allclose(logits_plain, logits, atol=1e-12), f"max diff {np.abs(logits_plain - logits).max():.2e}"


def test_conversion_refuses_mismatched_shapes(rng):
    """A trained adapter of another rank than the initial one is refused, shapes named."""
    with pytest.raises(ValueError, match=r"A \(3, 4\)"):
        to_plain_lora(np.ones((2, 4)), np.ones((5, 2)), np.ones((3, 4)), np.ones((5, 3)))


@pytest.mark.parametrize("use_rslora, r, alpha, scale", [(False, 4, 8.0, 8.0 / 4), (True, 4, 8.0, 8.0 / 2)])
def test_converted_alpha_keeps_the_scale(use_rslora, r, alpha, scale):
    """2r and alpha' give the scale s that r and alpha gave, with the paper's scale and with rsLoRA's."""
    r2, alpha2 = converted_lora_alpha(r, alpha, use_rslora)
    got = lora_scale(alpha2, r2, use_rslora)
    assert r2 == 2 * r and got == pytest.approx(scale, rel=1e-15), f"expected scale {scale}, got {got} (r' = {r2})"
