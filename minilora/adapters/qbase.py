"""QLoRA's frozen base: the block linears of a GPT stored in 4 bits (Dettmers et al. 2023, §3).

``quantize_base(model, "nf4", double_quant=True)`` replaces the float weight W (d_out, d_in) of
every block linear (wq, wk, wv, wo, fc, proj of each block) by its 4-bit form, in place, and
returns the model. The float weight is dropped: that is the saving. What stays:

    params["blocks.0.attn.wq.weight.codes"]           (d_out d_in / 2,) uint8  two 4-bit codes per byte
    params["blocks.0.attn.wq.weight.absmax"]          (nb,) one scale per block of 64 (uint8 codes with DQ)
    params["blocks.0.attn.wq.weight.nested_absmax"]   (nb2,) float32, double quantization only
    params["blocks.0.attn.wq.weight.nested_offset"]   (1,) float32, double quantization only
    linears["blocks.0.attn.wq"] = LinearSpec("qlinear", {role: param name}, {shape, quant_type, blocksize, ...})

and ``model.weight_parts`` records which params hold each weight. The bias stays float32, and the
token embedding (also the tied LM head), the positions and the layer norms stay float32 too:
QLoRA quantizes the linear layers of the transformer blocks and keeps embeddings and norms in
higher precision, where they are few parameters and the output layer is sensitive to rounding
(QLoRA §3; PEFT and bitsandbytes leave ``lm_head`` unquantized by default).

Every frozen weight is still read for every product, forward and backward, on the device that
computes: the 4-bit form is dequantized to float32 for each matrix product (``qlinear``) and the
float copy is freed right after. Nothing is moved to another device.

A ``LoraModel`` built on such a model is QLoRA: LoRA's A and B (float32) train on top of the 4-bit
W0, and no gradient is ever formed for W0 (``minilora.adapters.lora``). Saving and loading:
``minilora.adapters.qfiles``.
"""
from __future__ import annotations

from minilora.nn.linears import LinearSpec
from minilora.nn.model import GPT
from minilora.adapters.qlinear import QUANT_OPTIONS, QUANT_ROLES, from_storage, quant_options, storage_tensors
from minilora.adapters.quant import check_blocksize
from minilora.adapters.quant_codes import QUANT_TYPES
from minilora.adapters.quant_tensor import QuantizedTensor


def quantize_base(model: GPT, quant_type: str = "nf4", double_quant: bool = True, block_size: int = 64) -> GPT:
    """Store every block linear's weight of ``model`` in 4 bits, in place; returns ``model``.

    quant_type: "nf4" (QLoRA's), "fp4" or "int4"; double_quant: the block scales in 8 bits too
    (QLoRA's recipe: NF4 with double quantization, 4.127 bits per weight); block_size: weights
    per scale (64 in QLoRA). Quantize a bare GPT, before adding adapters.
    """
    _check_quantizable(model, quant_type, double_quant, block_size)
    for name in model.config.linear_names():
        qweight = QuantizedTensor.quantize(model.params[f"{name}.weight"], quant_type, block_size, double_quant)
        install_4bit(model, name, qweight)
    return model


def install_4bit(model: GPT, name: str, qweight: QuantizedTensor) -> None:
    """Make linear ``name`` of ``model`` a frozen 4-bit layer holding ``qweight``; its float weight is dropped."""
    weight = f"{name}.weight"
    if tuple(qweight.shape) != model.weight_shape(name):
        raise ValueError(f"{name} needs a weight of shape {model.weight_shape(name)}, the 4-bit tensor has "
                         f"{tuple(qweight.shape)}")
    parts = {role: f"{weight}.{role}" for role in storage_tensors(qweight)}
    for role, array in storage_tensors(qweight).items():
        model.params[parts[role]] = array
    model.params.pop(weight, None)                            # the float weight is gone: that is the saving
    model.trainable -= {weight, *parts.values()}
    model.weight_parts[weight] = list(parts.values())
    bias = {r: p for r, p in model.linears[name].tensors.items() if r == "bias"}
    model.linears[name] = LinearSpec("qlinear", {**parts, **bias}, quant_options(qweight))


def _check_quantizable(model, quant_type, double_quant, block_size) -> None:
    """Refuse what quantize_base cannot do, before anything changes."""
    if not isinstance(model, GPT):
        raise TypeError(f"quantize_base takes a GPT (the bare base model), got {type(model).__name__}: quantize the "
                        f"base first, then add adapters (LoraModel(quantize_base(base), config))")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"unknown quant_type {quant_type!r}: choose one of {QUANT_TYPES} (QLoRA uses 'nf4')")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}")
    check_blocksize(block_size)
    if model.weight_parts:
        raise ValueError(f"this model is quantized already ({quantization_config(model)}); quantize the float "
                         f"base once (dequantize_base gives a float copy of this one)")
    names = model.config.linear_names()
    changed = sorted(n for n in names if model.linears[n].kind != "linear")
    if changed:
        raise ValueError(f"layers {changed[:3]} are not plain linear layers (kinds "
                         f"{sorted({model.linears[n].kind for n in changed})}): an adapter is on this model. "
                         f"Quantize the base first, then add adapters")


# --------------------------------------------------------------------------- reading a quantized model
def quantized_weights(model: GPT, linears: dict | None = None) -> dict[str, QuantizedTensor]:
    """Module name -> its 4-bit weight, for every quantized linear of ``model`` (views, no copies).

    ``linears``: the specs to read (default ``model.linears``; an adapter host passes its base specs).
    """
    specs = linears if linears is not None else model.linears
    out = {}
    for name, spec in specs.items():
        if "codes" in spec.tensors:
            t = {role: model.params[p] for role, p in spec.tensors.items() if role in QUANT_ROLES}
            out[name] = from_storage(t, **{k: v for k, v in spec.options.items() if k in QUANT_OPTIONS})
    return out


def quantization_config(model: GPT, linears: dict | None = None) -> dict | None:
    """How ``model``'s base is quantized, as plain data for a config file; None for a float model.

    {"quant_type", "double_quant", "block_size", "modules": [quantized linears]}; one setting for
    all (``quantize_base`` quantizes every block linear alike).
    """
    weights = quantized_weights(model, linears)
    if not weights:
        return None
    settings = {(q.quant_type, q.nested is not None, q.blocksize) for q in weights.values()}
    if len(settings) != 1:
        raise ValueError(f"the quantized layers use different settings {sorted(settings)}; minilora writes one "
                         f"setting per model")
    quant_type, double_quant, block_size = settings.pop()
    return {"quant_type": quant_type, "double_quant": double_quant, "block_size": block_size,
            "modules": sorted(weights)}


def dequantize_base(model: GPT) -> GPT:
    """A float32 copy of a quantized GPT: every 4-bit weight dequantized, every other tensor copied.

    What QLoRA users do to merge an adapter into float weights (``merge_and_unload`` calls this
    path); the copy equals the 4-bit model's outputs exactly (the same float32 weights).
    """
    params = {k: model.params[k].copy() for k in model.own_param_names() if k not in _all_parts(model)}
    for name, qweight in quantized_weights(model).items():
        params[f"{name}.weight"] = qweight.dequantize()
    plain = GPT(model.config, params)
    plain.freeze()
    return plain


def _all_parts(model: GPT) -> set:
    return {p for parts in model.weight_parts.values() for p in parts}
