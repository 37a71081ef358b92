"""Specification of the gradient checker itself: it must accept right gradients and reject wrong ones."""
import numpy as np
import pytest

from minilora.nn.gradcheck import check_gradient, check_layer, numerical_gradient, rel_error


def test_rel_error_is_zero_for_identical_and_one_for_opposite_tensors():
    """rel_error(a, a) = 0 and rel_error(a, -a) = 1 (the measure is ||a-b|| / (||a||+||b||))."""
    a = np.arange(1.0, 7.0)
    assert rel_error(a, a) == 0.0
    assert rel_error(a, -a) == pytest.approx(1.0)


def test_numerical_gradient_of_a_quadratic_is_exact(rng):
    """For f(x) = sum(x^2) central differences give 2x up to rounding (the O(h^2) term vanishes)."""
    x = rng.standard_normal((3, 4))
    grad, _ = numerical_gradient(lambda: float((x ** 2).sum()), x)
    assert np.allclose(grad, 2 * x, atol=1e-8), f"expected 2x, max diff {np.abs(grad - 2 * x).max():.2e}"


def test_numerical_gradient_restores_the_input(rng):
    """Perturbing in place must leave x exactly as it was."""
    x = rng.standard_normal(5)
    before = x.copy()
    numerical_gradient(lambda: float(np.sin(x).sum()), x)
    assert np.array_equal(x, before)


def test_check_gradient_rejects_a_wrong_gradient(rng):
    """A gradient off by 1% must fail the 1e-7 check: the checker can fail."""
    x = rng.standard_normal(6)
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(lambda: float((x ** 3).sum()), x, 3 * x ** 2 * 1.01)


def test_sparse_check_samples_the_requested_number_of_entries(rng):
    """With max_entries=k only k entries are estimated; the rest stay NaN."""
    x = rng.standard_normal((10, 10))
    grad, idx = numerical_gradient(lambda: float(x.sum()), x, max_entries=7)
    assert len(idx) == 7 and np.isfinite(grad).sum() == 7


def test_check_layer_refuses_float32_inputs(rng):
    """float32 rounding would hide real errors, so check_layer insists on float64."""
    x = rng.standard_normal(3).astype(np.float32)
    with pytest.raises(TypeError, match="float64"):
        check_layer(lambda x: (2 * x, None), lambda d, c: (2 * d,), [x])


# --------------------------------------------------------------------------- messages that teach
def test_a_transposed_gradient_is_reported_as_a_shape_mismatch(rng):
    """dA (d_in, r) for A (r, d_in) fails with a sentence about shapes, not a relative error."""
    A = rng.standard_normal((2, 5))
    with pytest.raises(AssertionError, match=r"gradient of A has shape \(5, 2\), but A has shape \(2, 5\).*transpose"):
        check_gradient(lambda: float((A ** 2).sum()), A, (2 * A).T, name="A")


def test_a_gradient_off_by_a_constant_factor_names_the_factor(rng):
    """A gradient 4 times too small (a missing scale s = 4) is reported with its factor 0.25."""
    x = rng.standard_normal(6)
    with pytest.raises(AssertionError, match=r"exactly 0\.25 times the right gradient.*scale"):
        check_gradient(lambda: float((4 * x ** 2).sum()), x, 2 * x, name="x")


def test_a_gradient_with_the_wrong_sign_is_reported_as_such(rng):
    """-g instead of g: the message says the sign is flipped."""
    x = rng.standard_normal(6)
    with pytest.raises(AssertionError, match="sign is flipped"):
        check_gradient(lambda: float((x ** 2).sum()), x, -2 * x, name="x")


def test_a_non_zero_gradient_where_the_loss_is_flat_points_at_a_zero_partner(rng):
    """With B = 0 the loss cannot depend on A: a non-zero dA is reported with that reason."""
    A, B_ = rng.standard_normal((2, 5)), np.zeros((3, 2))
    with pytest.raises(AssertionError, match=r"does not depend on A.*non-zero values"):
        check_gradient(lambda: float((B_ @ A).sum()), A, np.ones_like(A), name="A")
