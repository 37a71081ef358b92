"""Adapter files: adapter_model.safetensors (the adapter's tensors by file key) + adapter_config.json.

The tensors use PEFT's key names (``blocks.0.attn.wq.lora_A.weight``, ``head.weight``); the config
holds every field of the adapter config, its type ("peft_type"), a fingerprint of the base model's
weights (so an adapter is never loaded onto a base it was not trained on) and a fingerprint of the
tensors and the config together (so an edited field, lora_alpha 16 -> 8, is refused). The folder
is one save (``minilora.io.atomic_folder``): after a crash it holds the old or the new adapter.
A field missing from the file is an error, never the config's default.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from minilora import checks, io
from minilora.nn import backend


CONFIG_TYPES: dict[str, type] = {}      # "peft_type" in a file -> its config class


def register_config(cls):
    """Class decorator: lets ``load_adapter`` rebuild configs of this type from their files."""
    CONFIG_TYPES[cls.peft_type] = cls
    return cls


FORMAT, VERSION = "minilora.adapter", 2
FILES = ("adapter_config.json", "adapter_model.safetensors")     # the files of one adapter save
# the keys of adapter_config.json that describe the file, not the adapter config
ENVELOPE = ("format", "version", "peft_type", "adapter_name", "base_model_fingerprint", "base_model_config",
            "fingerprint")


def save_adapter(host, directory, name: str) -> Path:
    """Write adapter ``name`` of ``host`` (an AdaptedModel) into ``directory``, as one save."""
    with io.atomic_folder(directory, FILES) as tmp:
        write_adapter(host, tmp, name)
    return Path(directory)


def write_adapter(host, folder, name: str) -> None:
    """The two files of an adapter save, written into ``folder`` (a fresh folder of an atomic save)."""
    tensors = host.adapter_state(name)
    config = host.adapters[name]
    described = json.loads(json.dumps({
        "format": FORMAT, "version": VERSION, "peft_type": config.peft_type, "adapter_name": name,
        **config.to_dict(), "base_model_fingerprint": host.base_fingerprint,
        "base_model_config": asdict(host.model.config)}))
    io.save_tensors(Path(folder) / "adapter_model.safetensors", tensors)
    io.write_json(Path(folder) / "adapter_config.json",
                  {**described, "fingerprint": io.fingerprint(tensors, described)})


def read_adapter(directory, *, verify: bool = True) -> tuple[dict, object, dict]:
    """(the file's JSON, the adapter config it holds, its tensors), every field checked.

    ``verify``: also check the fingerprint that binds the config to the tensors (``load_adapter``
    checks it after the more telling checks: the base model, the tensors' names and shapes).
    """
    folder = io.saved_folder(directory)
    path = folder / "adapter_config.json"
    meta = io.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise io.CheckpointError(f"{path} is not a minilora adapter config; was it written by save_adapter?")
    if meta.get("version") != VERSION:
        raise io.CheckpointError(f"{path} has format version {meta.get('version')!r}; this minilora reads "
                                 f"version {VERSION} (its fingerprint binds the config to the tensors). "
                                 f"Save the adapter again with this version")
    missing = [k for k in ENVELOPE if k not in meta]
    if missing:
        raise io.CheckpointError(f"{path}: field {missing[0]!r} is missing (missing: {missing})")
    kind = meta["peft_type"]
    if kind not in CONFIG_TYPES:
        raise io.CheckpointError(f"{path}: unknown adapter type {kind!r}; known: {sorted(CONFIG_TYPES)}")
    try:
        config = checks.from_fields(CONFIG_TYPES[kind], meta, str(path), envelope=ENVELOPE)
    except ValueError as e:
        raise io.CheckpointError(str(e)) from None
    tensors, _ = io.load_tensors(folder / "adapter_model.safetensors")
    if verify:
        _check_bound(directory, meta, tensors)
    return meta, config, tensors


def _check_bound(directory, meta: dict, tensors: dict) -> None:
    described = {k: v for k, v in meta.items() if k != "fingerprint"}
    if io.fingerprint(tensors, described) != meta["fingerprint"]:
        raise io.CheckpointError(f"{directory}: adapter_config.json does not describe adapter_model.safetensors "
                                 f"(fingerprint differs): a file was edited or comes from another save")


def load_adapter(host, directory, adapter_name: str | None = None, *, set_active: bool = True) -> str:
    """Add the adapter saved in ``directory`` to ``host``; returns its name. Nothing is left on failure."""
    meta, config, tensors = read_adapter(directory, verify=False)
    if meta["base_model_fingerprint"] != host.base_fingerprint:
        raise io.CheckpointError(
            f"the adapter in {directory} was trained on a different base model (fingerprint "
            f"{meta['base_model_fingerprint']} vs this base {host.base_fingerprint}); load it onto "
            f"the base it was made for (and unmerge any merged adapter first)")
    name = adapter_name or meta["adapter_name"]
    was_active = host.active_adapter
    host.add_adapter(name, config)
    try:
        _fill(host, name, tensors, directory)
        _check_bound(directory, meta, tensors)
    except Exception:
        host.delete_adapter(name)
        if was_active is not None:
            host.set_adapter(was_active)
        raise
    host.set_adapter(name if set_active or was_active is None else was_active)
    return name


def _fill(host, name, tensors, directory):
    """Copy the file's tensors into the freshly built adapter, checking names and shapes."""
    expected = set(host.own_keys[name])
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise io.CheckpointError(f"{directory}: adapter tensors do not match its config "
                                 f"(missing {missing[:4]}, unexpected {extra[:4]})")
    for key, value in tensors.items():
        target = host.model.params[host.param_name(key, name)]
        if tuple(value.shape) != tuple(target.shape):
            raise io.CheckpointError(f"{directory}: {key} has shape {tuple(value.shape)} but this model "
                                     f"needs {tuple(target.shape)}; the adapter was made for another model")
        target[...] = backend.asarray(value, dtype=host.dtype)
