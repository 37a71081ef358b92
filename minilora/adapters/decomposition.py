"""Weight-decomposition analysis (Liu et al. 2024, DoRA §3.2, eq. 2-4 and Fig. 2).

Any weight splits into a magnitude and a direction per output row (eq. 2, in minilora's
(d_out, d_in) layout, where the paper's "column" is a row):

    W = m * D,   m_j = ||W_j||,   D_j = W_j / ||W_j||        m (d_out,), D (d_out, d_in)

For a trained W and the pre-trained W0 the paper measures, per layer and checkpoint (eq. 3-4):

    Delta M = mean_j | m_j - m0_j |                 how much the magnitudes moved
    Delta D = mean_j (1 - cos(W_j, W0_j))           how much the directions turned

and plots Delta M against Delta D over layers and checkpoints (Fig. 2): full fine-tuning and DoRA
show a negative slope (large direction changes come with small magnitude changes, or the reverse),
LoRA a positive one (both move together). The same functions serve every method: pass the trained
W of full fine-tuning, the merged W0 + s B A of LoRA, or DoRA's merged m V / ||V|| (whose row
norms are exactly m when m > 0, so this equals using DoRA's m and V directly).
"""
from __future__ import annotations

from minilora.nn.backend import xp


# --------------------------------------------------------------------------- eq. 2
def magnitude_and_direction(W):
    """W (d_out, d_in) -> m (d_out,) row norms and D (d_out, d_in) unit rows, W = m[:, None] * D.

    A zero row has m = 0 and a zero direction (no NaN), the convention of ``dora.dora_factor``.
    """
    m = xp.sqrt((W * W).sum(axis=1))                          # (d_out,)
    live = (m > 0)[:, None]
    D = xp.where(live, W / xp.where(live, m[:, None], 1.0), 0.0)
    return m, D


# --------------------------------------------------------------------------- eq. 3-4
def weight_decomposition_change(W0, W) -> tuple[float, float]:
    """(Delta M, Delta D) between the pre-trained W0 and a trained W, both (d_out, d_in) (eq. 3-4).

    Delta M = mean over rows of |m_j - m0_j| (in the weights' units); Delta D = mean over rows of
    1 - cos(W_j, W0_j), in [0, 2]: 0 for unchanged directions, 1 for orthogonal, 2 for reversed.
    """
    if W0.shape != W.shape:
        raise ValueError(f"W0 and W must have one shape, got {tuple(W0.shape)} and {tuple(W.shape)}")
    m0, D0 = magnitude_and_direction(W0)
    m, D = magnitude_and_direction(W)
    delta_m = xp.abs(m - m0).mean()                           # eq. 3
    delta_d = (1.0 - (D * D0).sum(axis=1)).mean()             # eq. 4: cos = D_j . D0_j
    return float(delta_m), float(delta_d)


# --------------------------------------------------------------------------- Fig. 2
def decomposition_trend(delta_d, delta_m) -> dict:
    """Least-squares slope of Delta M on Delta D and their Pearson correlation (Fig. 2's reading).

    delta_d, delta_m: sequences of equal length (one point per layer and checkpoint), at least 3
    points -> {"slope": float, "intercept": float, "corr": float, "points": int}. The paper reads
    the sign: negative for full fine-tuning and DoRA, positive for LoRA.
    """
    d = [float(v) for v in delta_d]
    mm = [float(v) for v in delta_m]
    if len(d) != len(mm) or len(d) < 3:
        raise ValueError(f"need >= 3 (Delta D, Delta M) pairs of equal length, got {len(d)} and {len(mm)}")
    if min(d) == max(d) or min(mm) == max(mm):
        raise ValueError("Delta D or Delta M is constant over the points: slope and correlation are undefined")
    n = len(d)
    mean_d, mean_m = sum(d) / n, sum(mm) / n
    s_dd = sum((a - mean_d) ** 2 for a in d)
    s_mm = sum((b - mean_m) ** 2 for b in mm)
    s_dm = sum((a - mean_d) * (b - mean_m) for a, b in zip(d, mm))
    slope = s_dm / s_dd
    return {"slope": slope, "intercept": mean_m - slope * mean_d,
            "corr": s_dm / (s_dd * s_mm) ** 0.5, "points": n}
