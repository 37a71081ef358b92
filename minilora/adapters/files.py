"""Adapter files: adapter_model.safetensors (the adapter's tensors by file key) + adapter_config.json.

The tensors use PEFT's key names (``blocks.0.attn.wq.lora_A.weight``, ``head.weight``); the config
holds the adapter config's fields, its type ("peft_type") and a fingerprint of the base model's
weights, so an adapter is never loaded onto a base it was not trained on. Each file is written
atomically (``minilora.io``).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from minilora import io
from minilora.nn import backend


CONFIG_TYPES: dict[str, type] = {}      # "peft_type" in a file -> its config class


def register_config(cls):
    """Class decorator: lets ``load_adapter`` rebuild configs of this type from their files."""
    CONFIG_TYPES[cls.peft_type] = cls
    return cls


def save_adapter(host, directory, name: str) -> Path:
    """Write adapter ``name`` of ``host`` (an AdaptedModel) into ``directory``."""
    directory = Path(directory)
    io.save_tensors(directory / "adapter_model.safetensors", host.adapter_state(name))
    config = host.adapters[name]
    io.write_json(directory / "adapter_config.json", {
        "format": "minilora.adapter", "version": 1, "peft_type": config.peft_type, "adapter_name": name,
        **config.to_dict(), "base_model_fingerprint": host.base_fingerprint,
        "base_model_config": asdict(host.model.config)})
    return directory


def load_adapter(host, directory, adapter_name: str | None = None, *, set_active: bool = True) -> str:
    """Add the adapter saved in ``directory`` to ``host``; returns its name. Nothing is left on failure."""
    directory = Path(directory)
    meta = io.read_json(directory / "adapter_config.json")
    if meta.get("format") != "minilora.adapter":
        raise io.CheckpointError(f"{directory / 'adapter_config.json'} is not a minilora adapter config")
    if meta.get("base_model_fingerprint") != host.base_fingerprint:
        raise io.CheckpointError(
            f"the adapter in {directory} was trained on a different base model (fingerprint "
            f"{meta.get('base_model_fingerprint')} vs this base {host.base_fingerprint}); load it onto "
            f"the base it was made for (and unmerge any merged adapter first)")
    kind = meta.get("peft_type", "LORA")
    if kind not in CONFIG_TYPES:
        raise io.CheckpointError(f"{directory}: unknown adapter type {kind!r}; known: {sorted(CONFIG_TYPES)}")
    name = adapter_name or meta.get("adapter_name", "default")
    config = CONFIG_TYPES[kind].from_dict(meta)
    tensors, _ = io.load_tensors(directory / "adapter_model.safetensors")
    was_active = host.active_adapter
    host.add_adapter(name, config)
    try:
        _fill(host, name, tensors, directory)
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
