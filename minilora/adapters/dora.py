"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al. 2024, arXiv 2402.09353).

DoRA splits each weight into a magnitude and a direction (§3.2, eq. 2) and lets LoRA move only
the direction, while the magnitude trains as its own small vector (§4.1, eq. 5):

    V  = W0 + s B A                      # the LoRA-updated weight, (d_out, d_in)
    W' = m * V / ||V||                   # m (d_out,), the norm taken per OUTPUT row over d_in

The paper writes W as (d, k) and normalises "each column"; with minilora's (d_out, d_in) layout
that is each row, and m has d_out entries: the axis PEFT's ``DoraLinearLayer`` uses and the shape
its files store (``lora_magnitude_vector``). At init m = ||W0|| row-wise and B = 0, so W' = W0:
the adapted model starts equal to the base, as LoRA does (§4.1).

Shapes: N rows (all batch and time positions, N = B*T), d_in / d_out the layer's widths, r rank.
The matrix B is written ``B_`` in code. g = m / ||V|| (d_out,) is "the DoRA factor" below.

Three choices, each documented where it is made:
  * the backward: the paper's memory trick (§4.3, ``detach_norm=True``, PEFT's behaviour) or the
    exact gradient (eq. 6); see ``dora_backward``;
  * dropout exactly as PEFT applies it (the dropped part of x bypasses the DoRA factor); see
    ``dora_forward``;
  * a row whose norm is zero gets the factor 0 (the direction of a zero vector is taken to be
    zero), never a NaN; see ``dora_factor``.
The bias is added after the factor (PEFT subtracts it before rescaling), so its gradient is the
plain linear layer's ``db = dy summed over rows``; ``dora_backward`` leaves it to the caller,
like ``lora_backward``.

The registry entry "dora" (bottom of this module) runs these functions for a model: roles weight,
bias, lora_A, lora_B and lora_magnitude (m, saved under PEFT's name ``lora_magnitude_vector``),
options scale, dropout and detach_norm; ``LoraConfig(use_dora=True)`` builds such layers. Between
forward and backward it keeps a leaner cache than ``dora_forward`` returns: V (a float array the
size of the weight) is dropped, and the exact mode rebuilds it from W0 in the backward.

On a base stored in 4 bits (``minilora.adapters.qbase.quantize_base``) the same kind is QDoRA
(DoRA on QLoRA's base, as PEFT's ``use_dora=True`` on a bitsandbytes model): W0 is dequantized
once per product (``qlinear.frozen_weight``), the cache holds the 4-bit weight, never a float
copy (``qlinear.hold_4bit``), and m starts as the row norms of the dequantized W0.
"""
from __future__ import annotations

from minilora.adapters.lora import dropout_mask
from minilora.adapters.qlinear import frozen_weight, hold_4bit, refuse_training_the_4bit_weight, reload_4bit
from minilora.nn.backend import xp
from minilora.nn.linears import LinearKind, register

MAGNITUDE = "lora_magnitude_vector"      # m's file key under its module, PEFT's name: "{module}.lora_magnitude_vector"


# --------------------------------------------------------------------------- magnitude and factor
def adapted_weight_and_norm(W0, A, B_, scale):
    """V = W0 + s B A (d_out, d_in) and its row norms C = ||V|| (d_out,), the norm over d_in."""
    V = W0 + scale * (B_ @ A)                                 # (d_out, d_in)
    return V, xp.sqrt((V * V).sum(axis=1))                    # (d_out,)


def dora_magnitude_init(W0, A, B_, scale):
    """m (d_out,) = ||W0 + s B A|| row-wise, so that W' = V at init and the model is the base.

    With LoRA's init (B = 0) this is ||W0||, as the paper says (§4.1). PEFT's
    ``DoraLinearLayer.update_layer`` takes the norm of W0 + s B A, so an init where B A is not
    zero (PiSSA's, with W0 the residual) also starts exactly at the base model.
    """
    return adapted_weight_and_norm(W0, A, B_, scale)[1]


def dora_factor(m, C):
    """g = m / C (d_out,), with g = 0 on rows where C = 0.

    A row with C = 0 is a zero vector V_j, whose direction V_j / ||V_j|| is undefined; minilora
    takes it to be the zero vector (as torch's F.normalize does), so W'_j = 0 whatever m_j is, the
    output there is the bias, and no inf or NaN appears. At init such a row has m_j = C_j = 0, so
    this is also the limit of an epsilon floor m / max(C, eps). Such a row stays zero: the factor
    0 blocks B's gradient there and dm_j = 0 while V_j = 0 (plain LoRA could revive it).
    PEFT 0.21 has no guard and returns inf/NaN here (peft#2049: 511 zero rows in Llama-3.1-8B's
    o_proj made DoRA NaN at step 0).
    """
    live = C > 0
    return xp.where(live, m / xp.where(live, C, 1.0), 0.0)


# --------------------------------------------------------------------------- the layer
def dora_forward(x, W0, b, A, B_, m, scale, dropout_mask=None):
    """y = (m / ||V||) * (x V^T) + b with V = W0 + s B A (eq. 5), without forming V for the output.

    x (..., d_in), W0 (d_out, d_in) frozen, b (d_out,) or None, A (r, d_in), B_ (d_out, r),
    m (d_out,), scale s (``lora_scale``: the paper's or rsLoRA's), dropout_mask (..., d_in) or
    None (a scaled keep-mask; None in eval)  ->  y (..., d_out);
    cache = (x2, xd, W0, A, B_, V, C, g, u, zv, scale, dropout_mask, shape of x).

    Dropout as PEFT's ``DoraLinearVariant.forward`` in training: the frozen path sees x, the DoRA
    parts see x~ = x * mask:
        y = x W0^T + b + (g - 1) * (x~ W0^T) + g * s (x~ A^T) B^T
          = (x - x~) W0^T + g * (x~ V^T) + b,
    i.e. the part of x that dropout removed goes through W0 untouched and the rest through W'.
    Without a mask x~ = x and y = x W'^T + b: in eval the layer equals the merged one.
    V itself is needed for its norm only; the output uses x W0^T + s (x A^T) B^T, as LoRA does.
    """
    ### BEGIN SOLUTION
    x2 = x.reshape(-1, x.shape[-1])                           # (N, d_in)
    xd = x2 if dropout_mask is None else x2 * dropout_mask.reshape(x2.shape)
    V, C = adapted_weight_and_norm(W0, A, B_, scale)          # (d_out, d_in), (d_out,)
    g = dora_factor(m, C)                                     # (d_out,) eq. 5: m / ||W0 + s B A||
    u = xd @ A.T                                              # (N, r)
    zv = xd @ W0.T + (scale * u) @ B_.T                       # (N, d_out) = x~ V^T
    y = g * zv                                                # (N, d_out) = x~ W'^T
    if dropout_mask is not None:
        y += (x2 - xd) @ W0.T                                 # PEFT: the dropped part skips the factor
    if b is not None:
        y += b                                                # after the factor, as PEFT adds it
    ### END SOLUTION
    cache = (x2, xd, W0, A, B_, V, C, g, u, zv, scale, dropout_mask, x.shape)
    return y.reshape(*x.shape[:-1], W0.shape[0]), cache


def dora_backward(dy, cache, *, detach_norm=True):
    """dy (..., d_out) -> dx (..., d_in), dA (r, d_in), dB (d_out, r), dm (d_out,). No dW0.

    detach_norm=True (default; the paper's memory trick, used in all its experiments, and PEFT's
    behaviour): C = ||V|| is treated as a constant, so A and B get the gradient of the loss with C
    held fixed, not of the true loss; the trick drops the term of eq. 6 that projects the gradient
    away from V. dm and dx are exact in both modes: C depends on neither m nor x.
    detach_norm=False: the exact gradient of eq. 5. It needs V itself (the cache's V; the registry
    entry, which does not keep V, rebuilds it from W0 for this mode) and two thin products; the
    detached mode never reads V. The memory the §4.3 trick saves in the paper is what autograd
    keeps to differentiate through the norm.
    Rows with C = 0 have g = 0 (``dora_factor``): their dm and correction are 0.
    The bias gradient, if the bias trains, is dy summed over rows (the caller's, as for LoRA).
    ### BEGIN HINT
    G = dL/dW' is never formed; per row j the paper's gradients are
        eq. 7:  dm_j = G_j . V_j / C_j                         (the same in both modes)
        eq. 6:  dV_j = g_j (G_j - (dm_j / C_j) V_j)            (detach_norm=False: exact)
        §4.3:   dV_j = g_j G_j                                 (detach_norm=True: C a constant)
    and dA = s B^T dV, dB = s dV A^T, because V = W0 + s B A. The exact mode's extra term is
    -k_j V_j with k = g dm / C, added to dB and dA through V A^T and B^T V, so G is still not needed.
    ### END HINT
    """
    x2, xd, W0, A, B_, V, C, g, u, zv, scale, dropout_mask, x_shape = cache
    ### BEGIN SOLUTION
    dy2 = dy.reshape(-1, dy.shape[-1])                        # (N, d_out)
    live = C > 0
    dm = xp.where(live, (dy2 * zv).sum(axis=0) / xp.where(live, C, 1.0), 0.0)
                                                              # forward: y = (m / C) zv -> dm = sum(dy zv) / C
    dzv = dy2 * g                                             # forward: y = g * zv      -> dzv = g dy
    dB = scale * (dzv.T @ u)                                  # forward: zv += s u B^T   -> dB = s dzv^T u
    du = scale * (dzv @ B_)                                   # (N, r)                   -> du = s dzv B
    dA = du.T @ xd                                            # forward: u = x~ A^T      -> dA = du^T x~
    dxd = dzv @ W0 + du @ A                                   # forward: zv = x~ W0^T + ... -> dx~
    if dropout_mask is None:
        dx = dxd
    else:
        base = dy2 @ W0                                       # forward: y += (x - x~) W0^T
        dx = base + dropout_mask.reshape(dxd.shape) * (dxd - base)   # forward: x~ = x * mask
    if not detach_norm:
        # forward: g = m / C, C = ||V||  ->  dC = -g dm,  dV += dC V / C = -(g dm / C) V   (eq. 6)
        k = xp.where(live, g * dm / xp.where(live, C, 1.0), 0.0)   # (d_out,)
        dB -= scale * (k[:, None] * (V @ A.T))                # s (-k V) A^T, (d_out, r)
        dA -= scale * ((B_ * k[:, None]).T @ V)               # s B^T (-k V), (r, d_in)
    ### END SOLUTION
    return dx.reshape(x_shape), dA, dB, dm


# --------------------------------------------------------------------------- merge / unmerge
def dora_merge(W0, A, B_, m, scale):
    """W' = (m / ||V||) * V with V = W0 + s B A (eq. 5): the merged weight, and the norm used.

    W0 (d_out, d_in), A (r, d_in), B_ (d_out, r), m (d_out,)  ->  W' (d_out, d_in),
    weight_norm (d_out,). Keep weight_norm to unmerge: as PEFT's ``merge_safe`` caches it, the
    norm "has to be based on the original weights" and cannot be recomputed from W'.
    ``merge_and_unload`` is this W' with the adapter dropped.
    """
    V, weight_norm = adapted_weight_and_norm(W0, A, B_, scale)     # (d_out, d_in), (d_out,)
    return dora_factor(m, weight_norm)[:, None] * V, weight_norm


def dora_unmerge(W, A, B_, m, scale, weight_norm):
    """W0 = W' / (m / weight_norm) - s B A: undo ``dora_merge`` with the norm it returned.

    W (d_out, d_in) merged, A (r, d_in), B_ (d_out, r), m (d_out,), weight_norm (d_out,)
    ->  W0 (d_out, d_in), up to float rounding. A row with weight_norm = 0 had V_j = 0, so
    W0_j = -s (B A)_j. A row with m_j = 0 but weight_norm > 0 was merged to zero and its W0
    cannot be recovered: that is refused.
    """
    lost = (weight_norm > 0) & (m == 0)
    if bool(lost.any()):
        rows = [int(i) for i in xp.nonzero(lost)[0][:8]]
        raise ValueError(f"cannot unmerge DoRA: rows {rows} have magnitude 0, so the merged weight is zero "
                         f"there and W0 is lost; keep an unmerged copy of the layer instead")
    g = dora_factor(m, weight_norm)                           # (d_out,)
    live = (weight_norm > 0)[:, None]
    V = W / xp.where(live, g[:, None], 1.0)                   # merged: W' = g V
    return xp.where(live, V, 0.0) - scale * (B_ @ A)


# --------------------------------------------------------------------------- the registry entry
def drop_V(cache):
    """``dora_forward``'s cache without V (d_out, d_in): a float array the size of the weight, which
    the detached backward never reads, and which on a 4-bit base would undo QLoRA's saving."""
    x2, xd, W0, A, B_, V, C, g, u, zv, scale, dropout_mask, x_shape = cache
    return (x2, xd, W0, A, B_, None, C, g, u, zv, scale, dropout_mask, x_shape)


def rebuild_V(cache):
    """The cache with V = W0 + s B A again, from the cache's (reloaded) W0: what the exact backward reads.

    The same operations as the forward's ``adapted_weight_and_norm`` on the same W0, so the same V.
    """
    x2, xd, W0, A, B_, _, C, g, u, zv, scale, dropout_mask, x_shape = cache
    V = W0 + scale * (B_ @ A)                                 # (d_out, d_in)
    return (x2, xd, W0, A, B_, V, C, g, u, zv, scale, dropout_mask, x_shape)


def _dora_linear_forward(x, t, *, scale, dropout=0.0, detach_norm=True, training=False, rng=None, **quant):
    """The "dora" kind: dora_forward on the spec's tensors; dropout on the DoRA path in training only.

    On a 4-bit base (QDoRA; ``quant`` holds the weight's quantization options) W0 is dequantized
    for this product and the cache keeps the 4-bit weight; on any base the cache drops V.
    """
    mask = dropout_mask(rng, x.shape, dropout, x.dtype) if training and dropout > 0.0 else None
    W0 = frozen_weight(x.dtype, t, quant)                     # (d_out, d_in)
    y, cache = dora_forward(x, W0, t.get("bias"), t["lora_A"], t["lora_B"], t["lora_magnitude"], scale, mask)
    return y, (hold_4bit(drop_V(cache), W0, t, quant), detach_norm)


def _dora_linear_backward(dy, outer, needs):
    """dora_backward in the spec's mode, keeping the gradients the model asks for; W0 gets none."""
    cache, detach_norm = outer
    if "weight" in needs:
        raise RuntimeError("the frozen W0 of a DoRA layer was marked trainable, but DoRA computes no dW0; "
                           "freeze it again, or merge_and_unload() and train the plain model")
    refuse_training_the_4bit_weight(needs, "dora")
    cache = reload_4bit(cache)                                # W0 dequantized once, for dx = dy W0 (QLoRA eq. 6)
    exact = not detach_norm                                   # eq. 6 projects the gradient away from V,
    cache = rebuild_V(cache) if exact else cache              # so only the exact mode reads V
    dx, dA, dB, dm = dora_backward(dy, cache, detach_norm=detach_norm)
    grads = {"lora_A": dA, "lora_B": dB, "lora_magnitude": dm}
    if "bias" in needs:                                       # added after the factor: db = dy summed over rows
        grads["bias"] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    return dx, {role: g for role, g in grads.items() if role in needs}


def _dora_merge(t, *, scale, dropout=0.0, detach_norm=True, **quant):
    """(W', the norm ||V|| as the state unmerge needs), as PEFT caches "{adapter}-weight_norm".

    On a 4-bit base W0 is the dequantized weight and W' a float matrix (not re-quantized).
    """
    W0 = frozen_weight(t["lora_A"].dtype, t, quant)
    return dora_merge(W0, t["lora_A"], t["lora_B"], t["lora_magnitude"], scale)


def _dora_unmerge(W, t, state, *, scale, dropout=0.0, detach_norm=True, **quant):
    return dora_unmerge(W, t["lora_A"], t["lora_B"], t["lora_magnitude"], scale, state)


DORA = register(LinearKind("dora", ("weight", "bias", "lora_A", "lora_B", "lora_magnitude"), _dora_linear_forward,
                           _dora_linear_backward, merge=_dora_merge, unmerge=_dora_unmerge,
                           stochastic=lambda options: options.get("dropout", 0.0) > 0.0))
