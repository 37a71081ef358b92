"""Specification of adapter combination (PEFT's add_weighted_adapter: cat, linear, svd) for one layer."""
import numpy as np
import pytest

from minilora.adapters.combine import combine_adapters, combine_cat, combine_linear, combine_svd, weighted_delta

D_OUT, D_IN = 6, 8


def adapter(rng, r, s):
    """(A (r, d_in), B (d_out, r), s) with random non-zero factors."""
    return rng.standard_normal((r, D_IN)), rng.standard_normal((D_OUT, r)), s


def fro(M):
    return float(np.sqrt((M * M).sum()))


def test_weighted_delta_is_the_sum_of_scaled_updates(rng):
    """dW = sum_i w_i s_i B_i A_i, written out for two adapters."""
    (A1, B1, s1), (A2, B2, s2) = adapters = [adapter(rng, 2, 0.5), adapter(rng, 3, 2.0)]
    expected = 0.7 * s1 * B1 @ A1 - 0.4 * s2 * B2 @ A2
    assert np.allclose(weighted_delta(adapters, [0.7, -0.4]), expected, atol=1e-14)


def test_cat_equals_the_weighted_sum_of_updates_exactly(rng):
    """'cat' with ranks 2 and 3 and a negative weight: s B A = dW to rounding, rank 5, scale 1."""
    adapters, weights = [adapter(rng, 2, 0.5), adapter(rng, 3, 2.0)], [0.7, -0.4]
    out = combine_cat(adapters, weights)
    assert out.A.shape == (5, D_IN) and out.B.shape == (D_OUT, 5) and out.scale == 1.0, (out.A.shape, out.scale)
    diff = np.abs(out.scale * out.B @ out.A - weighted_delta(adapters, weights)).max()
    assert diff < 1e-14 and out.relative_error < 1e-15, f"cat should be exact: max diff {diff:.2e}"


def test_cat_puts_weight_and_scale_into_A_only(rng):
    """PEFT's layout: A_cat = [w_i s_i A_i], B_cat = [B_i] unchanged."""
    (A1, B1, s1), (A2, B2, s2) = adapters = [adapter(rng, 2, 0.5), adapter(rng, 1, 2.0)]
    out = combine_cat(adapters, [3.0, -1.0])
    assert np.array_equal(out.B, np.concatenate([B1, B2], axis=1))
    assert np.allclose(out.A, np.concatenate([1.5 * A1, -2.0 * A2]), rtol=1e-15)


def test_linear_refuses_unequal_ranks(rng):
    """'linear' averages factors, so ranks must agree; the error names the ranks and the alternatives."""
    with pytest.raises(ValueError, match=r"ranks \[2, 3\]; use 'cat'"):
        combine_linear([adapter(rng, 2, 1.0), adapter(rng, 3, 1.0)], [0.5, 0.5])


def test_linear_mixes_factors_with_square_roots_of_the_weights(rng):
    """B A = (sum sqrt|w s| B_i)(sum sign sqrt|w s| A_i), cross terms included, written out by hand."""
    (A1, B1, s1), (A2, B2, s2) = adapters = [adapter(rng, 2, 0.5), adapter(rng, 2, 2.0)]
    out = combine_linear(adapters, [0.5, -2.0])                 # w s = 0.25 and -4.0
    expected = (0.5 * B1 + 2.0 * B2) @ (0.5 * A1 - 2.0 * A2)
    assert np.allclose(out.B @ out.A, expected, atol=1e-13)
    cross = fro(0.5 * 2.0 * (-(B1 @ A2)) + 2.0 * 0.5 * (B2 @ A1))
    assert out.error == pytest.approx(cross, rel=1e-12), f"error should be the cross terms' norm {cross}"


def test_linear_of_one_adapter_with_negative_weight_is_exact(rng):
    """One adapter, w = -1: the sign goes to A once, so B A = -s B_1 A_1 exactly."""
    A1, B1, s1 = one = adapter(rng, 3, 0.5)
    out = combine_adapters([one], [-1.0], "cat")                # PEFT uses 'linear' for one adapter
    assert out.A.shape == (3, D_IN), out.A.shape
    assert np.allclose(out.B @ out.A, -s1 * B1 @ A1, atol=1e-14) and out.relative_error < 1e-15


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_svd_error_equals_the_tail_singular_values(rng, rank):
    """||dW - B A||_F = sqrt(sum_{k > r} S_k^2) of dW's singular values (Eckart-Young)."""
    adapters, weights = [adapter(rng, 2, 0.5), adapter(rng, 3, 2.0)], [1.0, 0.3]
    S = np.linalg.svd(weighted_delta(adapters, weights), compute_uv=False)
    out = combine_svd(adapters, weights, rank)
    tail = float(np.sqrt((S[rank:] ** 2).sum()))
    assert out.A.shape == (rank, D_IN) and out.B.shape == (D_OUT, rank), (out.A.shape, out.B.shape)
    assert out.error == pytest.approx(tail, rel=1e-10), f"expected tail {tail:.6e}, got {out.error:.6e}"


def test_svd_at_the_summed_rank_is_exact(rng):
    """dW of two adapters has rank <= 5, so svd at rank 5 reproduces it."""
    adapters = [adapter(rng, 2, 0.5), adapter(rng, 3, 2.0)]
    out = combine_adapters(adapters, [1.0, 1.0], "svd", svd_rank=5)
    assert out.relative_error < 1e-13, f"relative error {out.relative_error:.2e}"


def test_svd_default_rank_is_the_largest_input_rank_and_beats_linear(rng):
    """svd without a rank keeps max r_i, and at equal rank it is at least as close as 'linear'."""
    adapters, weights = [adapter(rng, 2, 0.5), adapter(rng, 2, 2.0)], [0.6, 0.6]
    svd, linear = combine_svd(adapters, weights), combine_linear(adapters, weights)
    assert svd.A.shape[0] == 2, svd.A.shape
    assert svd.error <= linear.error, f"svd {svd.error:.3e} should not exceed linear {linear.error:.3e}"


def test_bad_arguments_are_clear_errors(rng):
    """Unknown kind, weight count, mismatched layers and out-of-range svd rank are refused."""
    two = [adapter(rng, 2, 1.0), adapter(rng, 2, 1.0)]
    with pytest.raises(ValueError, match="unknown combination_type 'ties'"):
        combine_adapters(two, [1.0, 1.0], "ties")
    with pytest.raises(ValueError, match="one weight per adapter"):
        combine_cat(two, [1.0])
    with pytest.raises(ValueError, match="adapter 1 has A"):
        combine_cat([two[0], (np.ones((2, 3)), np.ones((D_OUT, 2)), 1.0)], [1.0, 1.0])
    with pytest.raises(ValueError, match="svd rank 7 is out of range"):
        combine_svd(two, [1.0, 1.0], 7)
