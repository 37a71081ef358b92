"""A 4-bit base model on disk: model.safetensors (codes and constants) + config.json (what they are).

The folder is a minilora model checkpoint (``minilora.nn.checkpoint``) whose config also records
the quantization, and whose 4-bit weights are written in the layout bitsandbytes and transformers
use for a 4-bit state dict (``QuantizedTensor.to_tensors``):

    blocks.0.attn.wq.weight                    packed codes (d_out d_in / 2, 1) uint8
    blocks.0.attn.wq.weight.absmax             block scales (or their 8-bit codes)
    blocks.0.attn.wq.weight.nested_absmax      ... (double quantization)
    blocks.0.attn.wq.weight.quant_state.bitsandbytes__nf4    JSON: quant_type, blocksize, shape, ...
    wte.weight, blocks.0.attn.wq.bias, ...     the float tensors, as in a float checkpoint

    config.json  {"format": "minilora.model", "version": 2, "config": {...GPTConfig...},
                  "quantization": {"quant_type": "nf4", "double_quant": true, "block_size": 64,
                                   "modules": [...]}, "extra": {...}, "fingerprint": ...}

As for a float checkpoint, the folder is one save (``minilora.io.atomic_folder``) and the
fingerprint binds config.json, the quantization included, to the tensors. ``load_quantized``
refuses a folder whose tensors disagree with its config (another quant type, block size or shape,
a missing or extra tensor, an edited field), and ``minilora.nn.checkpoint.load_model`` refuses a
quantized folder with a pointer here. Nothing is pickled.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from minilora import checks, io
from minilora.nn import backend
from minilora.nn.checkpoint import FILES, FORMAT, VERSION, check_envelope
from minilora.nn.model import GPT, GPTConfig, param_shapes
from minilora.adapters.qbase import install_4bit, quantization_config, quantized_weights
from minilora.adapters.quant_codes import QUANT_TYPES
from minilora.adapters.quant_tensor import QuantizedTensor

_ENVELOPE = ("format", "version", "config", "quantization", "extra", "fingerprint")
_QUANT_FIELDS = {"quant_type": str, "double_quant": bool, "block_size": int, "modules": list}


def _described(config: dict, quant: dict, extra: dict) -> dict:
    """What the fingerprint covers besides the tensors (as JSON reads it back)."""
    return json.loads(json.dumps({"format": FORMAT, "version": VERSION, "config": config, "quantization": quant,
                                  "extra": extra}))


def save_quantized(model: GPT, directory, *, extra: dict | None = None) -> Path:
    """Write a quantized GPT (``quantize_base``) into ``directory``, as one save: model.safetensors + config.json."""
    quant = quantization_config(model)
    if quant is None:
        raise ValueError("this model has no 4-bit weights; save it with minilora.nn.checkpoint.save_model "
                         "(or quantize_base it first)")
    parts = {p for ps in model.weight_parts.values() for p in ps}
    tensors = {k: model.params[k] for k in model.own_param_names() if k not in parts}
    for name, qweight in quantized_weights(model).items():
        tensors.update(qweight.to_tensors(f"{name}.weight"))
    described = _described(asdict(model.config), quant, extra or {})
    with io.atomic_folder(directory, FILES) as tmp:
        io.save_tensors(tmp / "model.safetensors", tensors)
        io.write_json(tmp / "config.json", {**described, "fingerprint": io.fingerprint(tensors, described)})
    return Path(directory)


def _read_meta(directory) -> tuple[GPTConfig, dict, dict, str]:
    """(GPTConfig, quantization, extra, fingerprint) from a 4-bit model's config.json, every field checked."""
    path = io.saved_folder(directory) / "config.json"
    meta = io.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise io.CheckpointError(f"{path} is not a version {VERSION} minilora model config (found {found}); "
                                 f"was it written by save_quantized?")
    if "quantization" not in meta:
        raise io.CheckpointError(f"{directory} holds a float model (its config records no quantization); load it "
                                 f"with minilora.nn.checkpoint.load_model, then quantize_base it")
    config = check_envelope(meta, path, _ENVELOPE)
    quant = meta["quantization"]
    bad = [k for k, kind in _QUANT_FIELDS.items() if not isinstance(quant.get(k), kind)
           or (kind is int and isinstance(quant.get(k), bool))] if isinstance(quant, dict) else list(_QUANT_FIELDS)
    if bad or set(quant) != set(_QUANT_FIELDS) or quant["quant_type"] not in QUANT_TYPES:
        raise io.CheckpointError(f"{path}: 'quantization' must hold exactly {list(_QUANT_FIELDS)} (quant_type one "
                                 f"of {QUANT_TYPES}), got {quant!r}")
    return config, quant, meta["extra"], meta["fingerprint"]


def load_quantized(directory, *, dtype=None) -> tuple[GPT, dict]:
    """Read a folder written by ``save_quantized``; returns (model, extra). Refuses any mismatch."""
    dtype = checks.float_dtype(dtype or backend.default_dtype())
    folder = io.saved_folder(directory)
    config, quant, extra, stored = _read_meta(folder)
    tensors, _ = io.load_tensors(folder / "model.safetensors")
    qweights = {m: _read_4bit(tensors, m, quant, config, directory) for m in quant["modules"]}
    used = {k for m in qweights for k in tensors if k == f"{m}.weight" or k.startswith(f"{m}.weight.")}
    floats = {k: v for k, v in tensors.items() if k not in used}
    expected = {k: s for k, s in param_shapes(config).items() if k[:-len(".weight")] not in qweights}
    if "head.weight" in floats and "head.bias" in floats:
        expected.update({"head.weight": floats["head.weight"].shape, "head.bias": floats["head.bias"].shape})
    wrong = sorted(k for k in set(floats) | set(expected)
                   if k not in floats or k not in expected or tuple(floats[k].shape) != tuple(expected[k]))
    if wrong:
        raise io.CheckpointError(f"{directory}: float tensors {wrong[:4]} do not match config {config} with "
                                 f"{len(qweights)} quantized modules; the checkpoint and its config do not match")
    if io.fingerprint(tensors, _described(asdict(config), quant, extra)) != stored:
        raise io.CheckpointError(f"{directory}: config.json does not describe model.safetensors (fingerprint "
                                 f"differs): one of the files was edited or comes from another save")
    model = GPT(config, {k: backend.asarray(v, dtype=dtype) for k, v in floats.items()})
    for name, qweight in qweights.items():
        install_4bit(model, name, qweight)
    model.freeze()
    return model, extra


def _read_4bit(tensors: dict, module: str, quant: dict, config: GPTConfig, directory) -> QuantizedTensor:
    """The 4-bit weight of ``module`` from the file, checked against the recorded quantization and shape."""
    weight = f"{module}.weight"
    if weight not in param_shapes(config):
        raise io.CheckpointError(f"{directory}: config.json names {module} as quantized, but the model of config "
                                 f"{config} has no such layer")
    try:
        qweight = QuantizedTensor.from_tensors(tensors, weight)
    except (KeyError, ValueError) as e:
        raise io.CheckpointError(f"{directory}: cannot read the 4-bit weight {weight}: {e}") from e
    found = {"quant_type": qweight.quant_type, "double_quant": qweight.nested is not None,
             "block_size": qweight.blocksize, "shape": tuple(qweight.shape)}
    wanted = {"quant_type": quant["quant_type"], "double_quant": quant["double_quant"],
              "block_size": quant["block_size"], "shape": tuple(param_shapes(config)[weight])}
    if found != wanted:
        diff = {k: (wanted[k], found[k]) for k in wanted if wanted[k] != found[k]}
        raise io.CheckpointError(f"{directory}: {weight} is stored as {found} but config.json says {wanted} "
                                 f"(config vs file: {diff}); the checkpoint and its config do not match")
    return qweight
