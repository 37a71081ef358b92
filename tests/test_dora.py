"""Specification of the DoRA layer (Liu et al. 2024, eq. 5-7 and §4.3) as pure functions."""
import math

import numpy as np
import pytest

from minilora.adapters.dora import (dora_backward, dora_factor, dora_forward, dora_magnitude_init, dora_merge,
                                    dora_unmerge)
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.nn.gradcheck import check_gradient, check_layer, rel_error

from helpers import tiny_float64_base

S = 0.7  # the scale s = alpha / r of every case below


def row_norms(M):
    """||M_j|| over the input axis, written out: the test's own norm."""
    return np.sqrt(np.einsum("ij,ij->i", M, M))


def make_case(rng, d_out=5, d_in=7, r=3, rows=(2, 4), dropout=False):
    """x, W0, b, A, B (random, NOT zero: B = 0 would hide a wrong dA), a trained-looking m, a mask."""
    x = rng.standard_normal((*rows, d_in))
    W0, b = rng.standard_normal((d_out, d_in)), rng.standard_normal(d_out)
    A, B_ = rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))
    m = row_norms(W0 + S * B_ @ A) * (1 + 0.3 * rng.standard_normal(d_out))  # not the norm: factor != 1
    mask = (rng.random((*rows, d_in)) > 0.25) / 0.75 if dropout else None
    return x, W0, b, A, B_, m, mask


def textbook_output(x, W0, b, A, B_, m, scale=S):
    """Eq. 5 written out: y = x W'^T + b with W' = m V / ||V||, V = W0 + s B A."""
    V = W0 + scale * B_ @ A
    return x @ (m[:, None] * V / row_norms(V)[:, None]).T + b


# --------------------------------------------------------------------------- forward
def test_dora_equals_base_layer_at_init(rng):
    """m = ||W0|| row-wise and B = 0 give W' = W0: the adapted layer is the base layer (§4.1)."""
    x, W0, b, A, _, _, _ = make_case(rng)
    B0 = np.zeros((5, 3))
    y, _ = dora_forward(x, W0, b, A, B0, dora_magnitude_init(W0, A, B0, S), S)
    err = np.abs(y - (x @ W0.T + b)).max()
    assert err < 1e-14, f"expected the base layer's output, max diff {err:.2e}"


def test_magnitude_has_one_entry_per_output_row(rng):
    """m has d_out entries, the norm of each row of W0 over d_in (PEFT's axis, not the paper's '1 x k')."""
    W0 = rng.standard_normal((5, 7))
    m = dora_magnitude_init(W0, np.zeros((2, 7)), np.zeros((5, 2)), S)
    assert m.shape == (5,), f"expected shape (d_out,) = (5,), got {m.shape}"
    assert np.allclose(m, [math.sqrt(sum(v * v for v in row)) for row in W0], rtol=1e-14), m


def test_magnitude_init_includes_a_nonzero_BA(rng):
    """With B A != 0 at init (PiSSA), m = ||W0 + s B A||, so the factor is 1 and y = x V^T + b."""
    x, W0, b, A, B_, _, _ = make_case(rng)
    m = dora_magnitude_init(W0, A, B_, S)
    y, _ = dora_forward(x, W0, b, A, B_, m, S)
    expected = x @ (W0 + S * B_ @ A).T + b
    assert np.allclose(y, expected, atol=1e-13), f"max diff {np.abs(y - expected).max():.2e}"


def test_dora_forward_matches_eq5(rng):
    """y = x (m V / ||V||)^T + b with a trained magnitude and random B, on a non-square W0."""
    x, W0, b, A, B_, m, _ = make_case(rng)
    y, _ = dora_forward(x, W0, b, A, B_, m, S)
    expected = textbook_output(x, W0, b, A, B_, m)
    assert np.allclose(y, expected, atol=1e-13), f"max diff {np.abs(y - expected).max():.2e}"


def test_dora_dropout_matches_peft_training_formula(rng):
    """y = x W0^T + b + (g - 1) x~ W0^T + g s x~ A^T B^T, x~ = x * mask, g = m / ||V|| (PEFT's form)."""
    x, W0, b, A, B_, m, mask = make_case(rng, dropout=True)
    y, _ = dora_forward(x, W0, b, A, B_, m, S, mask)
    g = m / row_norms(W0 + S * B_ @ A)
    xd = x * mask
    expected = x @ W0.T + b + (g - 1) * (xd @ W0.T) + g * (S * (xd @ A.T) @ B_.T)
    assert np.allclose(y, expected, atol=1e-13), f"max diff {np.abs(y - expected).max():.2e}"


def test_rslora_scale_composes_with_dora(rng):
    """DoRA with rsLoRA's scale (1.5 for alpha = 3, r = 4) equals DoRA with the same plain scale (alpha' = 6)."""
    r, alpha = 4, 3.0
    rs = resolve_targets(tiny_float64_base(), LoraConfig(r=r, lora_alpha=alpha, use_rslora=True))
    plain = resolve_targets(tiny_float64_base(), LoraConfig(r=r, lora_alpha=6.0))      # 6 / 4 = 1.5
    s_rs, s_plain = rs["blocks.0.attn.wq"][1], plain["blocks.0.attn.wq"][1]
    assert s_rs == pytest.approx(1.5, rel=1e-15), f"expected rsLoRA's scale 1.5, got {s_rs}"
    x, W0, b, A, B_, m, _ = make_case(rng, r=r)
    y_rs, _ = dora_forward(x, W0, b, A, B_, m, s_rs)
    y_plain, _ = dora_forward(x, W0, b, A, B_, m, s_plain)
    assert np.allclose(y_rs, y_plain, atol=1e-14), f"max diff {np.abs(y_rs - y_plain).max():.2e}"
    assert np.allclose(y_rs, textbook_output(x, W0, b, A, B_, m, s_rs), atol=1e-13)


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("dropout", [False, True])
def test_exact_backward_matches_numerical_gradient_of_the_true_loss(rng, dropout):
    """detach_norm=False: dx, dA, dB, dm are the gradients of eq. 5 itself (eq. 6-7), float64."""
    x, W0, b, A, B_, m, mask = make_case(rng, dropout=dropout)
    errors = check_layer(lambda x, A, B_, m: dora_forward(x, W0, b, A, B_, m, S, mask),
                         lambda dy, c: dora_backward(dy, c, detach_norm=False),
                         [x, A, B_, m], names=["x", "A", "B", "m"])
    assert max(errors.values()) < 1e-7, errors


def _true_and_fixed_norm_losses(x, W0, b, A, B_, m, mask, dy):
    """L(A, B, m, x) of eq. 5, and the same loss with C = ||V|| frozen at its current value (§4.3)."""
    C0 = row_norms(W0 + S * B_ @ A).copy()

    def true_loss():
        return float((dora_forward(x, W0, b, A, B_, m, S, mask)[0] * dy).sum())

    def fixed_norm_loss():
        xd = x if mask is None else x * mask
        y = (x - xd) @ W0.T + (m / C0) * (xd @ (W0 + S * B_ @ A).T) + b
        return float((y * dy).sum())
    return true_loss, fixed_norm_loss


@pytest.mark.parametrize("dropout", [False, True])
def test_detached_backward_gives_exact_dx_and_dm(rng, dropout):
    """§4.3: with the norm detached, dm (eq. 7) and dx are still the true loss's gradients."""
    x, W0, b, A, B_, m, mask = make_case(rng, dropout=dropout)
    y, cache = dora_forward(x, W0, b, A, B_, m, S, mask)
    dy = rng.standard_normal(y.shape)
    dx, _, _, dm = dora_backward(dy, cache, detach_norm=True)
    true_loss, _ = _true_and_fixed_norm_losses(x, W0, b, A, B_, m, mask, dy)
    for name, arr, grad in (("x", x, dx), ("m", m, dm)):
        err = check_gradient(true_loss, arr, grad, name=name)
        assert err < 1e-7, f"d{name}: relative error {err:.2e} against the true loss"


@pytest.mark.parametrize("dropout", [False, True])
def test_detached_backward_gives_dA_dB_of_the_loss_with_the_norm_held_fixed(rng, dropout):
    """§4.3: dA, dB match the loss with ||V|| a constant, and differ from the true loss's gradient."""
    x, W0, b, A, B_, m, mask = make_case(rng, dropout=dropout)
    y, cache = dora_forward(x, W0, b, A, B_, m, S, mask)
    dy = rng.standard_normal(y.shape)
    _, dA, dB, _ = dora_backward(dy, cache, detach_norm=True)
    _, dA_exact, dB_exact, _ = dora_backward(dy, cache, detach_norm=False)
    true_loss, fixed_norm_loss = _true_and_fixed_norm_losses(x, W0, b, A, B_, m, mask, dy)
    for name, arr, grad, exact in (("A", A, dA, dA_exact), ("B", B_, dB, dB_exact)):
        err = check_gradient(fixed_norm_loss, arr, grad, name=name)
        assert err < 1e-7, f"d{name}: relative error {err:.2e} against the fixed-norm loss"
        with pytest.raises(AssertionError, match="is wrong"):   # the trick really changes them
            check_gradient(true_loss, arr, grad, name=name)
        gap = rel_error(grad, exact)
        assert gap > 1e-2, f"d{name}: detached and exact gradients should differ, relative gap {gap:.2e}"


def test_detach_changes_only_the_gradients_of_A_and_B(rng):
    """Both modes return the same dx and dm to rounding; only dA and dB change."""
    x, W0, b, A, B_, m, _ = make_case(rng)
    y, cache = dora_forward(x, W0, b, A, B_, m, S)
    dy = rng.standard_normal(y.shape)
    detached, exact = dora_backward(dy, cache), dora_backward(dy, cache, detach_norm=False)
    for name, i in (("dx", 0), ("dm", 3)):
        assert np.array_equal(detached[i], exact[i]), f"{name} differs between the two modes"


def test_only_B_and_m_get_a_gradient_at_init(rng):
    """B = 0 at init: dA = s (dz B)^T x~ = 0, while dB and dm are not zero (in both modes)."""
    x, W0, b, A, _, _, _ = make_case(rng)
    B0 = np.zeros((5, 3))
    y, cache = dora_forward(x, W0, b, A, B0, dora_magnitude_init(W0, A, B0, S), S)
    for detach in (True, False):
        _, dA, dB, dm = dora_backward(rng.standard_normal(y.shape), cache, detach_norm=detach)
        assert not dA.any() and np.abs(dB).max() > 0 and np.abs(dm).max() > 0, (detach, dA, dB, dm)


# --------------------------------------------------------------------------- merge / unmerge
def test_merged_forward_matches_unmerged_forward_in_float32(rng):
    """x W'^T + b with W' = dora_merge(...) equals the unmerged layer to float32 rounding."""
    x, W0, b, A, B_, m, _ = (a if a is None else a.astype(np.float32) for a in make_case(rng, 24, 40, 4))
    y, _ = dora_forward(x, W0, b, A, B_, m, np.float32(S))
    W, _ = dora_merge(W0, A, B_, m, np.float32(S))
    y_merged = x @ W.T + b
    rel = np.abs(y_merged - y).max() / np.abs(y).max()
    assert W.dtype == np.float32 and rel < 1e-5, f"merged vs unmerged: relative diff {rel:.2e} ({W.dtype})"


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5)])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_merge_then_unmerge_restores_w0_with_a_trained_magnitude(rng, shape, dtype, tol):
    """W0 comes back with m != ||V|| (factor != 1) on square and non-square W0 (PEFT bug #3531)."""
    _, W0, _, A, B_, m, _ = (a if a is None else a.astype(dtype) for a in make_case(rng, *shape))
    W, norm = dora_merge(W0, A, B_, m, dtype(S))
    factor = m / norm
    assert np.abs(factor - 1).max() > 0.1, f"the magnitude should look trained, factor {factor}"
    back = dora_unmerge(W, A, B_, m, dtype(S), norm)
    rel = np.abs(back - W0).max() / np.abs(W0).max()
    assert rel < tol, f"unmerge({shape}, {dtype.__name__}): relative error {rel:.2e} >= {tol:.0e}"


def test_merged_weight_is_magnitude_times_unit_rows(rng):
    """merge_and_unload's W' has row norms exactly m: the direction is a unit vector per row."""
    _, W0, _, A, B_, m, _ = make_case(rng)
    W, _ = dora_merge(W0, A, B_, np.abs(m), S)
    assert np.allclose(row_norms(W), np.abs(m), rtol=1e-13), f"row norms {row_norms(W)} vs m {np.abs(m)}"


# --------------------------------------------------------------------------- zero rows
def _zero_row_case(rng):
    """A case where row 2 of W0 and of B is zero, so V_2 = 0 and the initial magnitude is 0 there."""
    x, W0, b, A, B_, _, mask = make_case(rng, dropout=True)
    W0[2], B_[2] = 0.0, 0.0
    return x, W0, b, A, B_, dora_magnitude_init(W0, A, B_, S), mask


def test_zero_norm_rows_give_no_nan_and_output_the_bias(rng):
    """A zero row has factor 0 (no inf/NaN): its output is its bias; forward, backward, merge stay finite."""
    x, W0, b, A, B_, m, mask = _zero_row_case(rng)
    assert m[2] == 0 and dora_factor(m, m)[2] == 0, f"expected m_2 = 0 and factor 0, got {m[2]}"
    y, cache = dora_forward(x, W0, b, A, B_, m, S, mask)
    assert np.all(np.isfinite(y)) and np.allclose(y[..., 2], b[2], atol=1e-15), y[..., 2]
    for detach in (True, False):
        grads = dora_backward(rng.standard_normal(y.shape), cache, detach_norm=detach)
        assert all(np.all(np.isfinite(g)) for g in grads), f"non-finite gradient (detach={detach})"
        assert not grads[2][2].any() and grads[3][2] == 0, "the zero row should get no dB and no dm"
    W, norm = dora_merge(W0, A, B_, m, S)
    back = dora_unmerge(W, A, B_, m, S, norm)
    assert np.all(np.isfinite(W)) and np.abs(back - W0).max() < 1e-13, "merge/unmerge of a zero row"


def test_zero_norm_rows_keep_the_gradient_check_exact(rng):
    """With a zero row the exact backward still matches central differences (the factor-0 rule is smooth)."""
    x, W0, b, A, B_, m, mask = _zero_row_case(rng)
    errors = check_layer(lambda x, A, B_, m: dora_forward(x, W0, b, A, B_, m, S, mask),
                         lambda dy, c: dora_backward(dy, c, detach_norm=False),
                         [x, A, B_, m], names=["x", "A", "B", "m"])
    assert max(errors.values()) < 1e-7, errors


def test_unmerge_refuses_rows_whose_magnitude_is_zero(rng):
    """m_j = 0 with ||V_j|| > 0 merges row j to zero; unmerging cannot recover W0 and says so."""
    _, W0, _, A, B_, m, _ = make_case(rng)
    m[1] = 0.0
    W, norm = dora_merge(W0, A, B_, m, S)
    with pytest.raises(ValueError, match=r"rows \[1\] have magnitude 0"):
        dora_unmerge(W, A, B_, m, S, norm)
