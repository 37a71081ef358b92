"""Rank analyses of LoRA updates (Hu et al. 2021, §7.2, §7.3, Appendix G, H), as pure functions.

NumPy arrays in, floats or NumPy arrays out; every computation runs in float64 on the CPU (the
matrices are at most C x 4C, and SVDs want the precision). The training experiments that produce
the matrices live in ``minilora.experiments.sweeps``; this module only measures them.

Shape letters: r rank of an adapter (r1, r2 for two of them), d_in = k input features,
d_out = d output features. Matrices are stored as the paper writes them: W0 and dW (d_out, d_in),
A (r, d_in), B (d_out, r), dW = s B A with s = lora_alpha / r.

    subspace similarity   eq. (4): how much of A1's top-i right singular directions lie in A2's top-j
    amplification         Table 7: how strongly dW amplifies directions of W
    spectra               how many directions a full fine-tuning update dW really uses
"""
from __future__ import annotations

import math
import operator

import numpy as np

from minilora.nn.backend import to_numpy


# --------------------------------------------------------------------------- checks
def _matrix(X, name: str) -> np.ndarray:
    """X as a finite 2-D float64 NumPy array, or a ValueError naming ``name``."""
    X = np.asarray(to_numpy(X), dtype=np.float64)
    if X.ndim != 2 or 0 in X.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf; the adapter or weights are broken")
    return X


def _index(value, name: str, hi: int, what: str) -> int:
    """An integer in 1..hi, or a ValueError that names the value and the valid range."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer in 1..{hi}, got {value!r}") from None
    if not 1 <= value <= hi:
        raise ValueError(f"{name} = {value} is out of range for {what}: {name} must be in 1..{hi}")
    return value


# --------------------------------------------------------------------------- subspace similarity
def right_singular_basis(A) -> np.ndarray:
    """U (d_in, r): the right singular vectors of A (r, d_in), columns ordered by singular value.

    A = U_A S V^T with V (d_in, r); the paper (§7.2) calls V "the right-singular unitary matrix
    U_A" and compares the subspaces spanned by its first i columns. Needs r <= d_in.
    """
    A = _matrix(A, "A")
    r, d_in = A.shape
    if r > d_in:
        raise ValueError(f"A has shape ({r}, {d_in}): rank r = {r} exceeds d_in = {d_in}, so A has "
                         f"no r right singular directions; expected A of shape (r, d_in) with r <= d_in")
    return np.linalg.svd(A, full_matrices=False)[2].T                     # (d_in, r)


def _check_pair(A1, A2) -> tuple[np.ndarray, np.ndarray]:
    A1, A2 = _matrix(A1, "A1"), _matrix(A2, "A2")
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A1 {A1.shape} and A2 {A2.shape} act on different input sizes d_in = "
                         f"{A1.shape[1]} vs {A2.shape[1]}; compare adapters of the same weight matrix")
    return A1, A2


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j), in [0, 1] (Hu et al. 2021, §7.2, eq. 4).

    A1 (r1, d_in), A2 (r2, d_in): two adapters' A matrices for the same weight matrix.
    U1_i (d_in, i): the first i right singular vectors of A1 (``right_singular_basis``);
    U2_j (d_in, j): the first j of A2. 1 means one subspace contains the other, 0 that they are
    orthogonal. Independent random subspaces give max(i, j) / d_in on average (``random_baseline``).
    """
    A1, A2 = _check_pair(A1, A2)
    i = _index(i, "i", A1.shape[0], f"A1 of shape {A1.shape} (r1 = {A1.shape[0]})")
    j = _index(j, "j", A2.shape[0], f"A2 of shape {A2.shape} (r2 = {A2.shape[0]})")
    ### BEGIN SOLUTION
    U1 = right_singular_basis(A1)[:, :i]                                  # (d_in, i)
    U2 = right_singular_basis(A2)[:, :j]                                  # (d_in, j)
    overlap = U1.T @ U2                                                   # (i, j): cosines between directions
    return float(np.sum(overlap ** 2) / min(i, j))
    ### END SOLUTION


def subspace_similarity_grid(A1, A2) -> np.ndarray:
    """phi (r1, r2): phi[i-1, j-1] = subspace_similarity(A1, A2, i, j) for every i, j (Figures 3, 4).

    A1 (r1, d_in), A2 (r2, d_in). Eq. (4) for all (i, j) at once, with one SVD per matrix.
    ### BEGIN HINT
    With M = (U1^T U2)^2 elementwise (r1, r2), ||U1_i^T U2_j||_F^2 = sum of M[:i, :j], a 2-D prefix sum.
    ### END HINT
    """
    A1, A2 = _check_pair(A1, A2)
    ### BEGIN SOLUTION
    M = (right_singular_basis(A1).T @ right_singular_basis(A2)) ** 2     # (r1, r2)
    prefix = M.cumsum(axis=0).cumsum(axis=1)                              # (r1, r2): sum of M[:i, :j]
    i = np.arange(1, A1.shape[0] + 1)[:, None]                            # (r1, 1)
    j = np.arange(1, A2.shape[0] + 1)[None, :]                            # (1, r2)
    ### END SOLUTION
    return prefix / np.minimum(i, j)


def random_baseline(i: int, j: int, d: int) -> float:
    """E[phi] = max(i, j) / d for independent, uniformly random subspaces of R^d of dimensions i, j.

    For orthonormal U1 (d, i) and U2 (d, j), independent and rotation-invariant,
    E (u^T v)^2 = 1/d for each of the i j pairs of columns, so E||U1^T U2||_F^2 = i j / d and
    E[phi] = i j / (d min(i, j)) = max(i, j) / d. Every measured phi is read against this number.
    """
    d = operator.index(d)
    if d < 1:
        raise ValueError(f"d must be a positive integer, got {d}")
    i, j = _index(i, "i", d, f"subspaces of R^{d}"), _index(j, "j", d, f"subspaces of R^{d}")
    return max(i, j) / d


# --------------------------------------------------------------------------- dW versus W
def _random_orthonormal(rng, n: int, r: int) -> np.ndarray:
    """(n, r) with orthonormal columns, uniformly distributed (QR of a Gaussian, signs fixed)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, r)))
    return Q * np.sign(np.diag(R))


def amplification(dW, W, r: int, *, seed: int = 0, n_random: int = 16) -> dict:
    """How strongly dW amplifies directions of W (Hu et al. 2021, §7.3, Table 7).

    dW, W (d_out, d_in); 1 <= r <= min(d_out, d_in). With U, S, V^T = svd(dW) and U_r (d_out, r),
    V_r (d_in, r) its top-r singular vectors, the paper projects W onto dW's r-dimensional
    subspace: proj = U_r^T W V_r (r, r), and reports ||proj||_F next to the same projection onto

      * W's own top-r directions: ||U_W^T W V_W||_F = sqrt(sum of W's top r singular values^2);
      * random orthonormal directions (mean over ``n_random`` seeded draws), whose expectation is
        about r ||W||_F / sqrt(d_out d_in) (E (u^T W v)^2 = ||W||_F^2 / (d_out d_in) per pair).

    amplification_factor = ||dW||_F / ||U_r^T W V_r||_F (paper: 21.5 at r = 4, 1.88 at r = 64).
    Returns a dict of floats with those numbers.
    """
    dW, W = _matrix(dW, "dW"), _matrix(W, "W")
    if dW.shape != W.shape:
        raise ValueError(f"dW {dW.shape} and W {W.shape} must have the same shape (d_out, d_in)")
    d_out, d_in = W.shape
    r = _index(r, "r", min(d_out, d_in), f"W of shape {W.shape}")
    U, _, Vh = np.linalg.svd(dW, full_matrices=False)
    proj = U[:, :r].T @ W @ Vh[:r].T                                      # (r, r)
    s_W = np.linalg.svd(W, compute_uv=False)
    rng = np.random.default_rng(seed)
    rand = [np.linalg.norm(_random_orthonormal(rng, d_out, r).T @ W @ _random_orthonormal(rng, d_in, r))
            for _ in range(n_random)]
    norm_proj, norm_W, norm_dW = float(np.linalg.norm(proj)), float(np.linalg.norm(W)), float(np.linalg.norm(dW))
    return {
        "r": r,
        "proj_dW": norm_proj,                                      # ||U^T W V^T||_F, U, V from dW
        "proj_W": float(np.sqrt(np.sum(s_W[:r] ** 2))),            # U, V from W itself
        "proj_random": float(np.mean(rand)),                       # U, V random (mean of n_random)
        "random_baseline": r * norm_W / math.sqrt(d_out * d_in),   # its analytic size
        "norm_W": norm_W,
        "norm_dW": norm_dW,
        "amplification_factor": norm_dW / norm_proj if norm_proj > 0 else math.inf,
    }


# --------------------------------------------------------------------------- spectra
def spectrum(dW) -> np.ndarray:
    """s (min(d_out, d_in),): the singular values of dW (d_out, d_in), largest first."""
    return np.linalg.svd(_matrix(dW, "dW"), compute_uv=False)


def _singular_values(s) -> np.ndarray:
    s = np.asarray(to_numpy(s), dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of singular values, got shape {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"singular values must be finite and >= 0, got min {s.min()} and max {s.max()}")
    if s.sum() == 0:
        raise ValueError("all singular values are 0: the matrix is zero and has no energy to measure")
    return s


def energy_rank(s, fraction: float = 0.9) -> int:
    """The smallest k with sum_{a<=k} s_a^2 >= fraction * sum_a s_a^2 (s sorted, largest first).

    s (n,): singular values (``spectrum``). The number of directions that carry ``fraction`` of the
    squared Frobenius norm of the matrix: a rank-k matrix has energy rank <= k for every fraction.
    """
    s = np.sort(_singular_values(s))[::-1]
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    cum = np.cumsum(s ** 2)                                               # (n,)
    # a relative 1e-12 slack so fraction = 1 does not count float rounding in the last sums as energy
    return int(np.argmax(cum >= fraction * cum[-1] * (1 - 1e-12))) + 1


def effective_rank(s) -> float:
    """exp(H(p)), p_a = s_a / sum_b s_b, H the Shannon entropy (Roy & Vetterli 2007).

    s (n,): singular values. Equals n for n equal singular values and 1 for a rank-1 matrix;
    terms with p_a = 0 contribute 0 (the limit of p log p).
    """
    s = _singular_values(s)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


# --------------------------------------------------------------------------- reading adapters
def lora_factors(lora_model, module: str, adapter: str | None = None):
    """(A (r, d_in), B (d_out, r), s) of ``adapter`` (default: the active one) on ``module``.

    module is the full name, e.g. "blocks.1.attn.wq". NumPy float64 copies; s = lora_alpha / r.
    """
    adapter = adapter if adapter is not None else lora_model.active_adapter
    if adapter not in lora_model.modules:
        raise KeyError(f"no adapter named {adapter!r}; have {sorted(lora_model.modules)}")
    modules = lora_model.modules[adapter]
    if module not in modules:
        raise KeyError(f"adapter {adapter!r} does not adapt {module!r}; it adapts {sorted(modules)}")
    A, B_, s = lora_model.lora_factors(module, adapter)
    return np.array(to_numpy(A), dtype=np.float64), np.array(to_numpy(B_), dtype=np.float64), float(s)


def lora_delta(lora_model, module: str, adapter: str | None = None) -> np.ndarray:
    """dW = s B A (d_out, d_in) of ``adapter`` on ``module``: the update LoRA adds to W0 (eq. 3)."""
    A, B_, s = lora_factors(lora_model, module, adapter)
    return s * (B_ @ A)
