"""Combining LoRA adapters into one, as PEFT's ``add_weighted_adapter`` does (cat, linear, svd).

Each adapter i adds s_i B_i A_i to the same W0. Given weights w_i, the target update is

    dW = sum_i w_i s_i B_i A_i                                   (d_out, d_in)

("task arithmetic"; a negative w_i subtracts a task). Three ways to write it as one adapter:

  * ``cat``:    A = [w_1 s_1 A_1 ; w_2 s_2 A_2 ; ...], B = [B_1 | B_2 | ...]: rank sum r_i, and
                B A = dW EXACTLY (the weight and scale go into A only, as in PEFT).
  * ``linear``: A = sum_i sign_i sqrt|w_i s_i| A_i, B = sum_i sqrt|w_i s_i| B_i (sign_i of w_i s_i on
                A only). Needs equal ranks, keeps rank r, and is only an approximation: B A has
                the cross terms B_i A_j (i != j); PEFT's documentation calls it "a very rough
                approximation".
  * ``svd``:    dW = U S V^T, B = U_r S_r, A = V_r^T: the best rank-r adapter (Eckart-Young); the
                truncation error is ||dW - B A||_F = sqrt(sum_{k > r} S_k^2). PEFT's default r is
                the largest input rank.

The combined adapter has scale 1 (PEFT writes lora_alpha = r for it); its file must say
use_rslora = false, or rsLoRA's scale applies to it instead (PEFT 0.21 copied use_rslora from the
first adapter and so overscaled rsLoRA combinations; fixed in PEFT PR #3449).

Every result reports ``error = ||dW - B A||_F`` and ``relative_error = error / ||dW||_F``, so
the three kinds can be compared on the same footing.
Shapes: adapter i has A_i (r_i, d_in), B_i (d_out, r_i); the matrix B is written ``B_`` in code.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from minilora.nn.backend import xp


class CombinedAdapter(NamedTuple):
    """One adapter standing for several: A (r, d_in), B (d_out, r), its scale (1.0), and how far
    s B A is from the weighted sum of the inputs' updates (Frobenius, absolute and relative)."""
    A: object
    B: object
    scale: float
    error: float
    relative_error: float


def _check(adapters: Sequence, weights: Sequence[float]) -> None:
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"need one weight per adapter and at least one adapter, got {len(adapters)} "
                         f"adapters and {len(weights)} weights")
    shape = (adapters[0][1].shape[0], adapters[0][0].shape[1])
    for i, (A, B_, _) in enumerate(adapters):
        if (B_.shape[0], A.shape[1]) != shape or A.shape[0] != B_.shape[1]:
            raise ValueError(f"adapter {i} has A {tuple(A.shape)} and B {tuple(B_.shape)}, which do not "
                             f"form a (d_out, d_in) = {shape} update like adapter 0's")


def weighted_delta(adapters: Sequence, weights: Sequence[float]):
    """dW = sum_i w_i s_i B_i A_i (d_out, d_in), the update every combination aims at.

    adapters: [(A_i, B_i, s_i), ...]; weights: [w_i, ...].
    """
    _check(adapters, weights)
    return sum(w * s * (B_ @ A) for (A, B_, s), w in zip(adapters, weights))


def _result(A, B_, target) -> CombinedAdapter:
    """Package (A, B) with scale 1 and its distance to the target update."""
    norm = float(xp.sqrt((target * target).sum()))
    error = float(xp.sqrt(((target - B_ @ A) ** 2).sum()))
    return CombinedAdapter(A, B_, 1.0, error, error / norm if norm > 0 else 0.0)


# --------------------------------------------------------------------------- the three kinds
def combine_cat(adapters: Sequence, weights: Sequence[float]) -> CombinedAdapter:
    """Concatenate ranks: A = [w_i s_i A_i] stacked (sum r_i, d_in), B = [B_i] side by side. Exact."""
    _check(adapters, weights)
    A = xp.concatenate([w * s * A_i for (A_i, _, s), w in zip(adapters, weights)], axis=0)
    B_ = xp.concatenate([B_i for (_, B_i, _) in adapters], axis=1)
    return _result(A, B_, weighted_delta(adapters, weights))


def combine_linear(adapters: Sequence, weights: Sequence[float]) -> CombinedAdapter:
    """Average the factors: A = sum sign_i sqrt|w_i s_i| A_i, B = sum sqrt|w_i s_i| B_i. Equal ranks only."""
    _check(adapters, weights)
    ranks = [A.shape[0] for A, _, _ in adapters]
    if len(set(ranks)) != 1:
        raise ValueError(f"combination 'linear' needs adapters of one rank, got ranks {ranks}; "
                         f"use 'cat' (exact, rank {sum(ranks)}) or 'svd' (rank of your choice)")
    A = sum(math.copysign(math.sqrt(abs(w * s)), w * s) * A_i for (A_i, _, s), w in zip(adapters, weights))
    B_ = sum(math.sqrt(abs(w * s)) * B_i for (_, B_i, s), w in zip(adapters, weights))
    return _result(A, B_, weighted_delta(adapters, weights))


def combine_svd(adapters: Sequence, weights: Sequence[float], rank: int | None = None) -> CombinedAdapter:
    """Truncate dW to rank r: B = U_r S_r (d_out, r), A = V_r^T (r, d_in); r = max r_i by default.

    The error is sqrt(sum of the squared singular values past r), the least any rank-r adapter
    can reach (Eckart-Young).
    """
    target = weighted_delta(adapters, weights)
    r = rank if rank is not None else max(A.shape[0] for A, _, _ in adapters)
    if not 1 <= r <= min(target.shape):
        raise ValueError(f"svd rank {r} is out of range: choose 1 <= rank <= min(d_out, d_in) = {min(target.shape)}")
    U, S, Vh = xp.linalg.svd(target, full_matrices=False)
    return _result(Vh[:r].copy(), U[:, :r] * S[None, :r], target)


COMBINATIONS = {"cat": combine_cat, "linear": combine_linear, "svd": combine_svd}


def combine_adapters(adapters: Sequence, weights: Sequence[float], combination_type: str = "svd",
                     svd_rank: int | None = None) -> CombinedAdapter:
    """PEFT's ``add_weighted_adapter`` for one layer: combination_type 'cat', 'linear' or 'svd'.

    As in PEFT, a single adapter is always combined with 'linear' (exact for one adapter: the
    result is w s B A at the adapter's own rank).
    """
    if combination_type not in COMBINATIONS:
        raise ValueError(f"unknown combination_type {combination_type!r}; choose one of {sorted(COMBINATIONS)}")
    if len(adapters) == 1:
        return combine_linear(adapters, weights)
    if combination_type == "svd":
        return combine_svd(adapters, weights, svd_rank)
    if svd_rank is not None:
        raise ValueError(f"svd_rank applies to combination_type 'svd' only, not {combination_type!r}")
    return COMBINATIONS[combination_type](adapters, weights)
