"""Initialising A and B from W0 itself: PiSSA (SVD) and OLoRA (QR), and converting them back to LoRA.

LoRA starts with B = 0, so B A = 0 (Hu et al. 2021, §4.1). PiSSA (Meng et al. 2024, arXiv
2404.02948) and OLoRA (Büyükakyüz 2024, arXiv 2406.01775) instead start the adapter on a rank-r
piece of W0 and freeze the rest, the residual:

    W_res = W0 - s B0 A0          so that   W_res + s B0 A0 = W0   (the model is the base at init)

  * PiSSA, from the SVD W0 = U S V^T (§3): B0 = U_r sqrt(S_r / s), A0 = sqrt(S_r / s) V_r^T, so
    s B0 A0 = U_r S_r V_r^T, the principal rank-r part; W_res holds the other singular values.
  * OLoRA, from the QR decomposition W0 = Q R: B0 = Q[:, :r], A0 = R[:r] (orthonormal columns in
    B0, upper-triangular A0), and W_res = W0 - s B0 A0. As in PEFT, OLoRA does not divide by s.

Training then moves A, B on top of W_res. Such an adapter only works on its own residual, so it
cannot be switched off or shared with plain LoRA adapters on W0. ``to_plain_lora`` rewrites a trained
one as a plain LoRA adapter of rank 2r on the ORIGINAL W0, the conversion PEFT performs in
``save_pretrained(path_initial_model_for_weight_conversion=...)`` (``subtract_mutated_init``):

    W_res + s B A = W0 + s (B A - B0 A0) = W0 + s [B | -B0] [A ; A0]

Shapes: W0 (d_out, d_in), A (r, d_in), B (d_out, r); the matrix B is written ``B_`` in code.
"""
from __future__ import annotations

from minilora.adapters.lora import lora_scale
from minilora.nn.backend import xp


def _check_rank(W0, r: int) -> None:
    d_out, d_in = W0.shape
    if not 1 <= r <= min(d_out, d_in):
        raise ValueError(f"rank r = {r} is out of range for W0 of shape ({d_out}, {d_in}); "
                         f"choose 1 <= r <= min(d_out, d_in) = {min(d_out, d_in)}")


# --------------------------------------------------------------------------- PiSSA and OLoRA
def pissa_init(W0, r: int, scale: float):
    """A0 (r, d_in), B0 (d_out, r), W_res (d_out, d_in) from the SVD of W0 (PiSSA, §3).

    W0 = U S V^T;  A0 = sqrt(S_r / s) V_r^T,  B0 = U_r sqrt(S_r / s),  W_res = W0 - s B0 A0.
    Dividing S by s before the square root makes s B0 A0 = U_r S_r V_r^T whatever alpha and r are
    (PEFT's ``pissa_init`` does the same). The signs of singular vectors are whatever the SVD
    routine returns; B0 A0 and W_res do not depend on them.
    """
    _check_rank(W0, r)
    U, S, Vh = xp.linalg.svd(W0, full_matrices=False)         # (d_out, k), (k,), (k, d_in)
    root = xp.sqrt(S[:r] / scale)                             # (r,) sqrt(S_r / s)
    A0 = root[:, None] * Vh[:r]                               # (r, d_in)
    B0 = U[:, :r] * root[None, :]                             # (d_out, r)
    return A0, B0, W0 - scale * (B0 @ A0)


def olora_init(W0, r: int, scale: float):
    """A0 (r, d_in), B0 (d_out, r), W_res (d_out, d_in) from the QR decomposition of W0 (OLoRA).

    W0 = Q R (reduced: Q (d_out, k) orthonormal columns, R (k, d_in) upper triangular, k = min);
    B0 = Q[:, :r], A0 = R[:r], W_res = W0 - s B0 A0 (PEFT's ``olora_init``: no division by s).
    """
    _check_rank(W0, r)
    Q, R = xp.linalg.qr(W0)                                   # (d_out, k), (k, d_in)
    A0, B0 = R[:r].copy(), Q[:, :r].copy()
    return A0, B0, W0 - scale * (B0 @ A0)


# --------------------------------------------------------------------------- back to plain LoRA
def to_plain_lora(A0, B0, A, B_):
    """A trained PiSSA/OLoRA adapter as a plain LoRA adapter on the original W0, rank 2r.

    A0 (r, d_in), B0 (d_out, r): the adapter at init (saved before training);
    A (r, d_in), B_ (d_out, r): the trained adapter  ->  A2 (2r, d_in), B2 (d_out, 2r) with
        B2 A2 = B A - B0 A0,   A2 = [A ; A0],   B2 = [B | -B0]   (PEFT's ``subtract_mutated_init``).
    The scale stays s: use ``converted_lora_alpha`` for the new config's lora_alpha. Then
    W0 + s B2 A2 = W_res + s B A: the converted adapter reproduces the trained layer.
    """
    if A.shape != A0.shape or B_.shape != B0.shape:
        raise ValueError(f"the trained adapter (A {tuple(A.shape)}, B {tuple(B_.shape)}) must have the shapes "
                         f"of the initial one (A0 {tuple(A0.shape)}, B0 {tuple(B0.shape)})")
    return xp.concatenate([A, A0], axis=0), xp.concatenate([B_, -B0], axis=1)


def converted_lora_alpha(r: int, lora_alpha: float, use_rslora: bool = False) -> tuple[int, float]:
    """(2r, alpha') for the converted adapter, chosen so that its scale equals the original's.

    alpha' solves lora_scale(alpha', 2r) = lora_scale(alpha, r); both scales are proportional to alpha.
    (PEFT's ``save_pretrained`` writes the same r and lora_alpha into the converted config.)
    """
    return 2 * r, lora_alpha * lora_scale(1.0, r, use_rslora) / lora_scale(1.0, 2 * r, use_rslora)
