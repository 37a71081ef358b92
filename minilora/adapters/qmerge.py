"""Merging a LoRA update into a 4-bit base, and why QLoRA users merge into float weights instead.

LoRA merges exactly: W = W0 + s B A, and unmerging gives W0 back up to float rounding (Hu et al.
2021, §4.1). With W0 stored in 4 bits the merged weight must be stored in 4 bits again:

    W_merged = quantize(dequant(W0) + s B A)          dequantize -> add -> re-quantize

and re-quantizing rounds every weight to the nearest of 16 levels of its block. A small update,
one that moves a weight by less than half a level, mostly rounds away: the merged 4-bit model
is not the model that was trained (PEFT warns of it: "Merge lora module to 4-bit linear may get
different generations due to rounding errors"). ``update_survival`` measures how much of an
update ΔW = s B A survives the round trip; ``merge_and_unload`` on a 4-bit base therefore gives a
float32 model W = dequant(W0) + s B A by default (exactly the trained model), and re-quantizes
only when asked (``requantize=True``).

An in-place ``merge_adapter`` on a 4-bit base is refused: there is no float W0 to add the update
to, and after re-quantization unmerging could not give the 4-bit W0 back.
"""
from __future__ import annotations

import numpy as np

from minilora.nn import backend
from minilora.nn.linears import get_kind
from minilora.nn.model import GPT
from minilora.adapters.qbase import dequantize_base, install_4bit, quantized_weights
from minilora.adapters.qlinear import from_storage, quant_options, storage_tensors
from minilora.adapters.quant import unpack_4bit
from minilora.adapters.quant_tensor import QuantizedTensor

IN_PLACE_MERGE_REFUSED = (
    "merge_adapter() cannot merge into a 4-bit base in place: there is no float W0 to add s B A to, and a "
    "re-quantized weight could not be unmerged. Use merge_and_unload() for a float32 model "
    "(W = dequant(W0) + s B A, what QLoRA users do) or merge_and_unload(requantize=True) for a 4-bit one "
    "(which loses part of a small update: minilora.adapters.qmerge.update_survival measures how much)")


# --------------------------------------------------------------------------- one weight
def merge_into_4bit(qweight: QuantizedTensor, delta) -> QuantizedTensor:
    """quantize(dequant(W0) + delta) with W0's settings: qweight (d_out, d_in), delta (d_out, d_in) float."""
    merged = qweight.dequantize(np.float32) + backend.asarray(delta, dtype=np.float32)
    return QuantizedTensor.quantize(merged, qweight.quant_type, qweight.blocksize, qweight.nested is not None)


def update_survival(qweight: QuantizedTensor, delta) -> dict:
    """How much of the update ``delta`` (d_out, d_in) a merge into the 4-bit ``qweight`` keeps.

    kept = dequant(merge_into_4bit(qweight, delta)) - dequant(qweight), the update the 4-bit model
    really received. Returns (all floats, computed in float64):
        kept_fraction   <kept, delta> / <delta, delta>: the share of the update along its own direction
                        (1: all of it; 0: none)
        error           ||kept - delta|| / ||delta||: the merge's error relative to the update
        codes_kept      share of weights whose 4-bit code did not change (their value may still move a
                        little: the block scales are recomputed from the merged weights)
        relative_size   ||delta|| / ||dequant(W0)||: how small the update is
    """
    merged = merge_into_4bit(qweight, delta)
    W0 = backend.to_numpy(qweight.dequantize(np.float32)).astype(np.float64)
    after = backend.to_numpy(merged.dequantize(np.float32)).astype(np.float64)
    d = backend.to_numpy(delta).astype(np.float64)
    kept = after - W0
    dd = float((d * d).sum())
    if dd == 0.0:
        raise ValueError("the update is zero: there is nothing to keep or lose (train the adapter first)")
    return {"kept_fraction": float((kept * d).sum()) / dd,
            "error": float(np.linalg.norm(kept - d) / np.sqrt(dd)),
            "codes_kept": float((unpack_4bit(merged.packed, merged.numel) ==
                                 unpack_4bit(qweight.packed, qweight.numel)).mean()),
            "relative_size": float(np.sqrt(dd) / np.linalg.norm(W0))}


# --------------------------------------------------------------------------- a whole adapted model
def merged_float_weights(host) -> dict:
    """Module -> W = dequant(W0) + update (float, d_out x d_in) for every adapted layer of the active adapter."""
    name = host._require_active("merge")
    out = {}
    for module, spec in host.layouts[name].items():
        kind = get_kind(spec.kind)
        if kind.name in ("linear", "qlinear"):
            continue
        if kind.merge is None:
            raise ValueError(f"{module} is a {kind.name!r} layer, which cannot be folded into one weight matrix; "
                             f"only linear updates (LoRA and its variants) merge")
        out[module], _ = kind.merge(host._tensors(spec), **spec.options)
    return out


def update_survival_by_module(host) -> dict:
    """Module -> ``update_survival`` of the active adapter's update s B A into that module's 4-bit W0."""
    quantized = quantized_weights(host.model, host.base_linears)
    out = {}
    for module, W in merged_float_weights(host).items():
        W0 = quantized[module].dequantize(W.dtype)
        out[module] = update_survival(quantized[module], W - W0)             # the update: W - dequant(W0)
    return out


def merge_and_unload_4bit(host, *, requantize: bool = False) -> GPT:
    """``AdaptedModel.merge_and_unload`` on a 4-bit base: a float32 GPT, or with ``requantize`` a 4-bit one.

    Float: every adapted weight is dequant(W0) + s B A and every other 4-bit weight is dequantized,
    so the model computes exactly what the adapted 4-bit model computed. Re-quantized: the adapted
    weights go through ``merge_into_4bit``; the others keep their codes bit for bit.
    """
    base = host.model
    if not base.weight_parts:
        raise ValueError("requantize=True re-quantizes merged weights of a 4-bit base, and this base is float; "
                         "merge_and_unload() and then quantize_base() the result if a 4-bit model is wanted")
    name = host._require_active("merge")
    merged = merged_float_weights(host)
    plain = dequantize_base(base)
    for p in host.saved[name]:                                # the adapter's trained copies (head, biases)
        plain.params[p] = host.model.params[host.param_name(p, name)].copy()
    for module, W in merged.items():
        plain.params[f"{module}.weight"] = backend.asarray(W, dtype=plain.dtype).copy()
    if requantize:
        for module, qweight in quantized_weights(base, host.base_linears).items():
            W = merged.get(module)
            install_4bit(plain, module, _copy(qweight) if W is None else
                         QuantizedTensor.quantize(W, qweight.quant_type, qweight.blocksize, qweight.nested is not None))
    plain.freeze()
    return plain


def _copy(qweight: QuantizedTensor) -> QuantizedTensor:
    """The same 4-bit weight in fresh arrays (the unmerged model keeps its own)."""
    return from_storage({r: a.copy() for r, a in storage_tensors(qweight).items()}, **quant_options(qweight))
