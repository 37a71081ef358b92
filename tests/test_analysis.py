"""Rank analyses on matrices whose answers are known in closed form (minilora.experiments.analysis).

Tests whose names contain "subspace_similarity" grade exercise step 9 (minilora.classroom.exercises.STEPS):
each of them calls ``subspace_similarity`` and fails while it is a stub. The input checks sit
outside the exercise region, so the tests of the error messages are named without it.
"""
import numpy as np
import pytest

from minilora.experiments.analysis import (amplification, effective_rank, energy_rank, lora_delta, lora_factors,
                               random_baseline, right_singular_basis, spectrum, subspace_similarity,
                               subspace_similarity_grid)
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT, GPTConfig


def orthonormal(rng, n, k):
    """(n, k) with orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def adapter_with_rows(basis, scales):
    """A (r, d) whose right singular vectors are the columns of ``basis`` (d, r), in that order."""
    return np.diag(scales) @ basis.T


# --------------------------------------------------------------------------- right singular basis
def test_right_singular_basis_is_orthonormal_and_spans_the_rows_of_A(rng):
    """U (d_in, r) has orthonormal columns and U U^T projects every row of A onto itself."""
    A = rng.standard_normal((5, 20))
    U = right_singular_basis(A)
    assert U.shape == (20, 5), f"expected shape (20, 5), got {U.shape}"
    err = np.abs(U.T @ U - np.eye(5)).max()
    assert err < 1e-12, f"U^T U should be I (max error < 1e-12), got {err:.2e}"
    err = np.abs(A @ U @ U.T - A).max()
    assert err < 1e-12, f"A U U^T should equal A (max error < 1e-12), got {err:.2e}"


def test_right_singular_basis_rejects_rank_above_d_in(rng):
    """A with more rows than columns has no r right singular directions: a clear ValueError."""
    with pytest.raises(ValueError, match="exceeds d_in"):
        right_singular_basis(rng.standard_normal((9, 4)))


# --------------------------------------------------------------------------- subspace similarity (step 9)
def test_subspace_similarity_of_identical_subspaces_is_one_on_the_diagonal(rng):
    """Two adapters with the same right singular vectors (any scales) give phi(i, i) = 1 for all i."""
    basis = orthonormal(rng, 32, 6)
    A1 = adapter_with_rows(basis, [6, 5, 4, 3, 2, 1])
    A2 = 0.1 * adapter_with_rows(basis, [12, 10, 7, 5, 3, 2])           # same order of directions
    for i in range(1, 7):
        phi = subspace_similarity(A1, A2, i, i)
        assert abs(phi - 1) < 1e-12, f"phi(A, A', {i}, {i}): expected 1, got {phi}"


def test_subspace_similarity_of_orthogonal_subspaces_is_zero(rng):
    """Rows spanning orthogonal subspaces share no direction: phi = 0 for every i, j."""
    basis = orthonormal(rng, 24, 8)
    A1, A2 = adapter_with_rows(basis[:, :3], [3, 2, 1]), adapter_with_rows(basis[:, 3:], [5, 4, 3, 2, 1])
    for i in range(1, 4):
        for j in range(1, 6):
            phi = subspace_similarity(A1, A2, i, j)
            assert abs(phi) < 1e-12, f"phi({i}, {j}) of orthogonal subspaces: expected 0, got {phi}"


def test_subspace_similarity_is_one_when_the_smaller_subspace_is_contained(rng):
    """A1's 2 directions are among A2's top 5 (not its top 1): phi(2, 5) = 1 (the min(i, j)
    normalisation) and phi(2, 1) = 0."""
    basis = orthonormal(rng, 40, 6)
    A1 = adapter_with_rows(basis[:, :2], [2, 1])
    A2 = adapter_with_rows(basis[:, [4, 0, 3, 1, 2, 5]], [6, 5, 4, 3, 2, 1])
    for j, expected in [(5, 1.0), (1, 0.0)]:
        phi = subspace_similarity(A1, A2, 2, j)
        assert abs(phi - expected) < 1e-12, f"phi(2, {j}): expected {expected}, got {phi}"


def test_subspace_similarity_is_symmetric_under_swapping_the_adapters(rng):
    """phi(A1, A2, i, j) = phi(A2, A1, j, i) for every i, j."""
    A1, A2 = rng.standard_normal((4, 16)), rng.standard_normal((7, 16))
    for i in range(1, 5):
        for j in range(1, 8):
            a, b = subspace_similarity(A1, A2, i, j), subspace_similarity(A2, A1, j, i)
            assert abs(a - b) < 1e-12, f"phi(A1, A2, {i}, {j}) = {a} but phi(A2, A1, {j}, {i}) = {b}"


def test_subspace_similarity_lies_in_zero_one(rng):
    """phi is a normalised squared overlap: 0 <= phi <= 1 (up to 1e-12 rounding)."""
    A1, A2 = rng.standard_normal((6, 10)), rng.standard_normal((8, 10))
    values = [subspace_similarity(A1, A2, i, j) for i in range(1, 7) for j in range(1, 9)]
    assert -1e-12 <= min(values) and max(values) <= 1 + 1e-12, f"phi outside [0, 1]: {min(values)}, {max(values)}"


def test_subspace_similarity_of_random_subspaces_averages_max_i_j_over_d(rng):
    """Over 400 pairs of Gaussian A (rotation-invariant rows), mean phi = max(i, j) / d within 4 standard errors."""
    d, n = 32, 400
    for i, j in [(1, 1), (2, 5), (6, 3)]:
        phis = np.array([subspace_similarity(rng.standard_normal((6, d)), rng.standard_normal((6, d)), i, j)
                         for _ in range(n)])
        expected, se = random_baseline(i, j, d), phis.std(ddof=1) / np.sqrt(n)
        assert abs(phis.mean() - expected) < 4 * se, (
            f"i={i}, j={j}: expected mean {expected:.4f} +- {4 * se:.4f} (4 SE), got {phis.mean():.4f}")


def test_subspace_similarity_grid_matches_pointwise_calls(rng):
    """Every entry grid[i-1, j-1] equals subspace_similarity(A1, A2, i, j) to 1e-12."""
    A1, A2 = rng.standard_normal((5, 20)), rng.standard_normal((8, 20))
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (5, 8), f"expected a (5, 8) grid, got {grid.shape}"
    pointwise = np.array([[subspace_similarity(A1, A2, i, j) for j in range(1, 9)] for i in range(1, 6)])
    err = np.abs(grid - pointwise).max()
    assert err < 1e-12, f"grid vs pointwise: max difference {err:.2e} (expected < 1e-12)"


def test_subspace_similarity_accepts_float32_adapters_like_the_model_stores(rng):
    """float32 A (as LoraModel stores them) give the float64 answer to float32 precision."""
    A1, A2 = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    a = subspace_similarity(A1.astype(np.float32), A2.astype(np.float32), 3, 4)
    b = subspace_similarity(A1, A2, 3, 4)
    assert abs(a - b) < 1e-5, f"float32 {a} vs float64 {b}"


# --------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("i, j, bad", [(0, 1, "i = 0"), (4, 1, "i = 4"), (1, 0, "j = 0"), (1, 6, "j = 6")])
def test_phi_rejects_indices_outside_one_to_r_with_the_valid_range(rng, i, j, bad):
    """i must be in 1..r1 and j in 1..r2; the message names the value and the range."""
    A1, A2 = rng.standard_normal((3, 10)), rng.standard_normal((5, 10))
    valid = "1..3" if bad.startswith("i") else "1..5"
    with pytest.raises(ValueError) as err:
        subspace_similarity(A1, A2, i, j)
    assert bad in str(err.value) and valid in str(err.value), f"expected {bad!r} and {valid!r} in: {err.value}"


def test_phi_rejects_adapters_of_different_input_sizes(rng):
    """A1 (r, 10) and A2 (r, 12) belong to different weights: the message names both d_in."""
    with pytest.raises(ValueError, match="d_in = 10 vs 12"):
        subspace_similarity(rng.standard_normal((2, 10)), rng.standard_normal((2, 12)), 1, 1)
    with pytest.raises(ValueError, match="d_in = 10 vs 12"):
        subspace_similarity_grid(rng.standard_normal((2, 10)), rng.standard_normal((2, 12)))


def test_phi_rejects_non_integer_and_non_finite_input(rng):
    """i = 1.5 and an A with NaN are refused with ValueError, not silently rounded or propagated."""
    A = rng.standard_normal((3, 8))
    with pytest.raises(ValueError, match="integer"):
        subspace_similarity(A, A, 1.5, 1)
    bad = A.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        subspace_similarity(bad, A, 1, 1)


def test_random_baseline_is_max_over_d():
    """random_baseline(i, j, d) = max(i, j) / d, and i > d is refused."""
    assert random_baseline(2, 8, 128) == 8 / 128, f"expected {8 / 128}, got {random_baseline(2, 8, 128)}"
    with pytest.raises(ValueError, match="1..4"):
        random_baseline(5, 1, 4)


# --------------------------------------------------------------------------- amplification (Table 7)
def test_amplification_of_top_singular_pair_of_W_recovers_sigma_1(rng):
    """dW = u1 v1^T (W's top singular pair): ||U^T W V||_F = sigma_1 = the W's-own-directions value."""
    W = rng.standard_normal((12, 9))
    U, S, Vh = np.linalg.svd(W)
    out = amplification(0.3 * np.outer(U[:, 0], Vh[0]), W, 1)
    assert abs(out["proj_dW"] - S[0]) < 1e-10, f"expected sigma_1 = {S[0]}, got {out['proj_dW']}"
    assert abs(out["proj_W"] - S[0]) < 1e-10, f"expected proj_W = sigma_1 = {S[0]}, got {out['proj_W']}"
    assert abs(out["amplification_factor"] - 0.3 / S[0]) < 1e-10, (
        f"expected factor ||dW|| / sigma_1 = {0.3 / S[0]}, got {out['amplification_factor']}")


def test_amplification_of_update_outside_W_row_and_column_spaces_is_zero(rng):
    """W of rank 3 and dW in the orthogonal complements of its column and row spaces: proj = 0."""
    Qo, Qi = orthonormal(rng, 10, 10), orthonormal(rng, 8, 8)
    W = Qo[:, :3] @ np.diag([5.0, 3.0, 1.0]) @ Qi[:, :3].T              # (10, 8), rank 3
    dW = Qo[:, 3:5] @ np.diag([2.0, 1.0]) @ Qi[:, 3:5].T                # orthogonal to both spaces
    out = amplification(dW, W, 2)
    assert out["proj_dW"] < 1e-12, f"expected ||U^T W V|| = 0, got {out['proj_dW']}"
    # ||dW|| / (a rounding-sized number): huge, or inf when the projection is exactly 0
    assert out["amplification_factor"] > 1e12, f"expected a factor > 1e12, got {out['amplification_factor']}"


def test_amplification_reports_w_own_directions_and_norms(rng):
    """proj_W = sqrt(sum of W's top-r sigma^2); norms are the Frobenius norms of W and dW."""
    W, dW = rng.standard_normal((16, 16)), rng.standard_normal((16, 3)) @ rng.standard_normal((3, 16))
    out = amplification(dW, W, 3)
    S = np.linalg.svd(W, compute_uv=False)
    checks = {"proj_W": np.sqrt(np.sum(S[:3] ** 2)), "norm_W": np.linalg.norm(W), "norm_dW": np.linalg.norm(dW),
              "random_baseline": 3 * np.linalg.norm(W) / 16}
    for key, expected in checks.items():
        assert abs(out[key] - expected) < 1e-10, f"{key}: expected {expected}, got {out[key]}"
    assert out["proj_dW"] <= out["proj_W"] + 1e-10, "no r-dim projection of W exceeds its top-r directions"


def test_amplification_of_random_directions_matches_its_analytic_size(rng):
    """Mean ||U^T W V||_F over random orthonormal U, V is near r ||W||_F / sqrt(d k) (within 15%)."""
    W = rng.standard_normal((64, 48))
    out = amplification(rng.standard_normal((64, 48)), W, 4, n_random=200)
    ratio = out["proj_random"] / out["random_baseline"]
    # E||X||_F <= sqrt(E||X||_F^2) = the baseline; with r^2 = 16 terms the gap is a few percent
    assert 0.85 < ratio < 1.02, f"expected random / baseline in (0.85, 1.02), got {ratio:.3f}"


def test_amplification_rejects_mismatched_shapes_and_bad_rank(rng):
    """dW and W of different shapes, and r outside 1..min(d, k), raise ValueError naming them."""
    with pytest.raises(ValueError, match="same shape"):
        amplification(np.ones((3, 4)), np.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="1..3"):
        amplification(np.ones((3, 4)), np.ones((3, 4)), 4)


# --------------------------------------------------------------------------- spectra
def test_spectrum_of_rank_k_matrix_has_exactly_k_nonzero_values(rng):
    """A (20, 15) product of rank 4 has 4 singular values above 1e-10 * sigma_1, the rest below."""
    X = rng.standard_normal((20, 4)) @ rng.standard_normal((4, 15))
    s = spectrum(X)
    nonzero = int(np.sum(s > 1e-10 * s[0]))
    assert s.shape == (15,) and nonzero == 4, f"expected 15 values with 4 nonzero, got {s.shape}, {nonzero}"


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99, 1.0])
def test_energy_rank_of_rank_k_matrix_is_at_most_k(rng, fraction):
    """A rank-5 matrix needs at most 5 directions for any energy fraction (float rounding ignored)."""
    X = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 25))
    k = energy_rank(spectrum(X), fraction)
    assert 1 <= k <= 5, f"fraction {fraction}: expected energy rank in 1..5, got {k}"


def test_energy_rank_counts_the_directions_that_reach_the_fraction():
    """s = (3, 2, 1, 0): energies 9, 4, 1 of 14, so 0.6 -> 1, 0.9 -> 2, 0.95 -> 3."""
    s = np.array([3.0, 2.0, 1.0, 0.0])
    for fraction, expected in [(0.6, 1), (0.9, 2), (0.95, 3), (1.0, 3)]:
        got = energy_rank(s, fraction)
        assert got == expected, f"fraction {fraction}: expected {expected}, got {got}"


def test_effective_rank_of_equal_spectrum_is_its_length_and_of_rank_one_is_one():
    """n equal singular values give exp(log n) = n; (5, 0, 0) gives 1."""
    for n in (1, 7, 128):
        got = effective_rank(np.ones(n))
        assert abs(got - n) < 1e-9, f"identity spectrum of size {n}: expected {n}, got {got}"
    assert abs(effective_rank(np.array([5.0, 0, 0])) - 1) < 1e-12, "a rank-1 spectrum has effective rank 1"


def test_spectrum_measures_reject_bad_input():
    """Negative or all-zero singular values, a bad fraction and a 1-D dW raise ValueError."""
    for s, match in [(np.array([1.0, -1.0]), ">= 0"), (np.zeros(3), "all singular values are 0"),
                     (np.ones((2, 2)), "1-D")]:
        with pytest.raises(ValueError, match=match):
            effective_rank(s)
    with pytest.raises(ValueError, match="fraction"):
        energy_rank(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        spectrum(np.ones(4))


# --------------------------------------------------------------------------- reading adapters
def test_lora_delta_is_scale_times_B_A_of_the_named_module():
    """lora_delta = (alpha / r) B A for the adapter's own A and B, and errors name what exists."""
    gpt = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8), seed=0)
    lm = LoraModel(gpt, LoraConfig(r=2, lora_alpha=6, target_modules=("wq",)))
    gen = np.random.default_rng(0)
    lm.params[lm.param_name("blocks.1.attn.wq.lora_B.weight")][...] = gen.standard_normal((8, 2))
    A, B_, s = lora_factors(lm, "blocks.1.attn.wq")
    dW = lora_delta(lm, "blocks.1.attn.wq")
    assert s == 3.0, f"expected scale 6 / 2 = 3, got {s}"
    err = np.abs(dW - 3.0 * B_ @ A).max()
    assert dW.shape == (8, 8) and err < 1e-12, f"expected (8, 8) equal to s B A, got {dW.shape}, error {err}"
    with pytest.raises(KeyError, match="blocks.0.attn.wv"):
        lora_delta(lm, "blocks.0.attn.wv")
    with pytest.raises(KeyError, match="other"):
        lora_delta(lm, "blocks.0.attn.wq", adapter="other")
