"""Model checkpoints: a folder with model.safetensors (the tensors) and config.json (what they are).

Only the model's own parameters are saved (the base and any task head, ``GPT.own_param_names``);
tensors that adapters added live in adapter files (``minilora.adapters``). The folder is one save
(``minilora.io.atomic_folder``): after a crash it holds the complete old or the complete new save.

config.json says what the tensors are, and loading believes nothing it cannot check:

    {"format": "minilora.model", "version": 2, "config": {GPTConfig fields}, "extra": {...},
     "fingerprint": hash of the tensors AND of format, version, config and extra}

Every GPTConfig field must be there with its type; the fingerprint binds the config to the tensors,
so an edit that no shape reveals (n_head 4 -> 8 changes the logits, n_layer 4 -> 2 drops blocks)
is refused; the tensors must be exactly those the config names (no missing, no extra ones).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from minilora import checks, io
from minilora.nn import backend
from minilora.nn.model import GPT, GPTConfig, param_shapes

FORMAT, VERSION = "minilora.model", 2
FILES = ("config.json", "model.safetensors")          # the files of one model save
_ENVELOPE = ("format", "version", "config", "extra", "fingerprint")


def base_params(model: GPT) -> dict:
    """The model's own parameters by name (the base and any task head; no adapter tensors)."""
    return {k: model.params[k] for k in model.own_param_names()}


def _described(config: dict, extra: dict) -> dict:
    """What the fingerprint covers besides the tensors (as JSON reads it back: tuples become lists)."""
    return json.loads(json.dumps({"format": FORMAT, "version": VERSION, "config": config, "extra": extra}))


def save_model(model: GPT, directory, *, extra: dict | None = None) -> Path:
    """Write model.safetensors + config.json into ``directory``, as one save (all or nothing)."""
    with io.atomic_folder(directory, FILES) as tmp:
        write_model(model, tmp, extra=extra)
    return Path(directory)


def write_model(model: GPT, folder, *, extra: dict | None = None) -> None:
    """The two files of a model save, written into ``folder`` (a fresh folder of an atomic save)."""
    if model.weight_parts:
        raise ValueError("this model keeps weights in 4 bits; save it with minilora.adapters.qfiles.save_quantized, "
                         "which writes its codes and constants with the quantization in config.json")
    params = base_params(model)
    described = _described(asdict(model.config), extra or {})
    io.save_tensors(Path(folder) / "model.safetensors", params)
    io.write_json(Path(folder) / "config.json", {**described, "fingerprint": io.fingerprint(params, described)})


def read_config(directory) -> tuple[GPTConfig, dict, str]:
    """(GPTConfig, extra, fingerprint) from a model folder's config.json, every field checked."""
    path = io.saved_folder(directory) / "config.json"
    meta = io.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise io.CheckpointError(f"{path} is not a minilora model config (format = {found!r}); "
                                 f"was it written by save_model?")
    if meta.get("version") != VERSION:
        raise io.CheckpointError(
            f"{path} has format version {meta.get('version')!r}; this minilora reads version {VERSION}, whose "
            f"fingerprint binds config.json to the tensors. For a version 1 folder you trust, convert it once "
            f"with minilora.nn.checkpoint.upgrade_v1({str(directory)!r})")
    if "quantization" in meta:
        raise io.CheckpointError(f"{path} describes a 4-bit model ({meta['quantization']}); "
                                 f"load it with minilora.adapters.qfiles.load_quantized")
    config = check_envelope(meta, path, _ENVELOPE)
    return config, meta["extra"], meta["fingerprint"]


def check_envelope(meta: dict, path, envelope) -> GPTConfig:
    """The checks every model config.json shares (float or 4-bit): exactly the ``envelope`` fields,
    'extra' a JSON object, and 'config' a GPTConfig with every field present and of its type.
    Returns the GPTConfig; raises io.CheckpointError naming the field otherwise."""
    fields = sorted(set(meta) ^ set(envelope))
    if fields:
        raise io.CheckpointError(f"{path}: unexpected or missing top-level fields {fields}; "
                                 f"expected exactly {list(envelope)}")
    if not isinstance(meta["extra"], dict):
        raise io.CheckpointError(f"{path}: field 'extra' must be a JSON object, got {meta['extra']!r}")
    try:
        return checks.from_fields(GPTConfig, meta["config"], f"{path} (config)")
    except ValueError as e:
        raise io.CheckpointError(str(e)) from None


def _check_tensors(directory, config: GPTConfig, tensors: dict) -> None:
    """The tensors must be exactly the config's parameters (and a task head, if any), with their shapes."""
    expected = param_shapes(config)
    if "head.weight" in tensors or "head.bias" in tensors:
        K = tensors["head.weight"].shape[0] if "head.weight" in tensors else -1
        expected.update({"head.weight": (K, config.n_embd), "head.bias": (K,)})
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise io.CheckpointError(f"{directory}: model.safetensors does not hold the parameters its config names "
                                 f"(missing {missing[:4]}, unexpected {extra[:4]}); the two files do not match")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise io.CheckpointError(
                f"{directory}: parameter {name} should have shape {shape} for config {config}, found "
                f"{tuple(tensors[name].shape)}; the checkpoint and its config do not match")


def load_model(directory, *, dtype=None) -> tuple[GPT, dict]:
    """Read a model saved by ``save_model``; returns (model, extra). Checks fields, fingerprint, tensors."""
    dtype = checks.float_dtype(dtype or backend.default_dtype())
    folder = io.saved_folder(directory)
    config, extra, stored = read_config(folder)
    tensors, _ = io.load_tensors(folder / "model.safetensors")
    _check_tensors(directory, config, tensors)           # the telling message first, then the binding
    if io.fingerprint(tensors, _described(asdict(config), extra)) != stored:
        raise io.CheckpointError(
            f"{directory}: config.json does not describe model.safetensors (fingerprint differs): one of the "
            f"files was edited or comes from another save. Restore both files from the same save")
    params = {k: backend.asarray(v, dtype=dtype) for k, v in tensors.items()}
    return GPT(config, params), extra


def upgrade_v1(directory) -> Path:
    """Rewrite a version 1 model folder (unbound config) as version 2, after every check v1 allows.

    Version 1 hashed the tensors only, so an edited config.json could not be detected; call this
    only for a folder whose config.json you trust. It refuses a folder v1 itself would refuse.
    """
    folder = io.saved_folder(directory)
    meta = io.read_json(folder / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != 1:
        raise io.CheckpointError(f"{folder / 'config.json'} is not a version 1 minilora model config")
    config = checks.from_fields(GPTConfig, meta.get("config"), f"{folder / 'config.json'} (config)")
    tensors, _ = io.load_tensors(folder / "model.safetensors")
    if io.fingerprint(tensors) != meta.get("fingerprint"):
        raise io.CheckpointError(f"{folder}: model.safetensors does not match its version 1 config.json")
    _check_tensors(directory, config, tensors)
    save_model(GPT(config, {k: v for k, v in tensors.items()}), directory, extra=meta.get("extra") or {})
    return Path(directory)
