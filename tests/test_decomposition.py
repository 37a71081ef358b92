"""Specification of the weight-decomposition analysis (DoRA §3.2, eq. 2-4), on hand-made weights."""
import numpy as np
import pytest

from minilora.adapters.decomposition import decomposition_trend, magnitude_and_direction, weight_decomposition_change
from minilora.adapters.dora import dora_merge


def test_magnitude_times_direction_rebuilds_the_weight(rng):
    """Eq. 2: W = m * D with unit rows D and m the row norms over d_in."""
    W = rng.standard_normal((4, 6))
    m, D = magnitude_and_direction(W)
    assert m.shape == (4,) and np.allclose(np.linalg.norm(D, axis=1), 1.0, rtol=1e-14), (m.shape, D)
    assert np.allclose(m[:, None] * D, W, atol=1e-14)


def test_zero_row_has_zero_magnitude_and_zero_direction():
    """A zero row decomposes into m = 0 and D = 0, never NaN."""
    m, D = magnitude_and_direction(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert m.tolist() == [5.0, 0.0] and D.tolist() == [[0.6, 0.8], [0.0, 0.0]], (m, D)


def test_rescaling_rows_changes_magnitude_only():
    """W_j = c_j W0_j with c_j > 0: Delta D = 0 and Delta M = mean |c_j - 1| ||W0_j||."""
    W0 = np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0]])           # row norms 5 and 1
    W = np.array([[1.2], [0.5]]) * W0                          # |c - 1| ||W0_j|| = 1.0 and 0.5
    delta_m, delta_d = weight_decomposition_change(W0, W)
    assert delta_m == pytest.approx(0.75, rel=1e-14), f"expected Delta M = (1.0 + 0.5) / 2, got {delta_m}"
    assert abs(delta_d) < 1e-15, f"expected Delta D = 0, got {delta_d}"


def test_rotating_rows_changes_direction_only():
    """W0 = I, W = a cyclic permutation: norms kept (Delta M = 0), every row orthogonal (Delta D = 1)."""
    W0 = np.eye(3)
    W = W0[[1, 2, 0]]
    assert weight_decomposition_change(W0, W) == (0.0, 1.0)


def test_reversed_and_kept_rows_average_to_delta_d_one():
    """One row reversed (1 - cos = 2), one kept (0): Delta D = 1, Delta M = 0."""
    W0 = np.array([[1.0, 2.0], [2.0, -1.0]])
    W = np.array([[-1.0, -2.0], [2.0, -1.0]])
    delta_m, delta_d = weight_decomposition_change(W0, W)
    assert (delta_m, delta_d) == (0.0, pytest.approx(1.0, rel=1e-15)), (delta_m, delta_d)


def test_dora_merged_weight_has_the_learned_magnitude(rng):
    """For DoRA, Delta M from the merged weight equals mean |m - ||W0|| | for a positive trained m."""
    W0, A, B_ = rng.standard_normal((5, 7)), rng.standard_normal((2, 7)), rng.standard_normal((5, 2))
    m = np.linalg.norm(W0, axis=1) * (1 + 0.2 * rng.random(5))
    W, _ = dora_merge(W0, A, B_, m, 0.5)
    delta_m, _ = weight_decomposition_change(W0, W)
    expected = np.mean(np.abs(m - np.linalg.norm(W0, axis=1)))
    assert delta_m == pytest.approx(expected, rel=1e-13), f"expected {expected}, got {delta_m}"


def test_shapes_must_agree():
    """W0 and W of different shapes are refused with both shapes named."""
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        weight_decomposition_change(np.ones((2, 3)), np.ones((3, 2)))


def test_trend_recovers_slope_and_sign_of_a_line():
    """Points on Delta M = 2 - 3 Delta D give slope -3, intercept 2, correlation -1 (Fig. 2's reading)."""
    d = [0.1, 0.2, 0.4, 0.5]
    trend = decomposition_trend(d, [2 - 3 * v for v in d])
    assert trend["slope"] == pytest.approx(-3.0, rel=1e-12), trend
    assert trend["intercept"] == pytest.approx(2.0, rel=1e-12), trend
    assert trend["corr"] == pytest.approx(-1.0, rel=1e-12) and trend["points"] == 4, trend


def test_trend_correlation_of_hand_computed_points():
    """(0, 0), (1, 1), (2, 0), (3, 3): slope 0.8, Pearson r = 4 / sqrt(5 * 6) by hand."""
    trend = decomposition_trend([0, 1, 2, 3], [0, 1, 0, 3])
    assert trend["slope"] == pytest.approx(0.8, rel=1e-12), trend
    assert trend["corr"] == pytest.approx(4 / 30 ** 0.5, rel=1e-12), trend


def test_trend_needs_three_points_that_vary():
    """Fewer than 3 points, or a constant coordinate, is a clear error."""
    with pytest.raises(ValueError, match=">= 3"):
        decomposition_trend([0.1, 0.2], [1.0, 2.0])
    with pytest.raises(ValueError, match="constant"):
        decomposition_trend([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])
