"""Model checkpoints: a folder with model.safetensors (the tensors) and config.json (what they are).

Only the model's own parameters are saved (the base and any task head, ``GPT.own_param_names``);
tensors that adapters added live in adapter files (``minilora.adapters``). Loading checks the
config against the tensors and a fingerprint of their values.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from minilora import io
from minilora.nn import backend
from minilora.nn.model import GPT, GPTConfig, param_shapes


def base_params(model: GPT) -> dict:
    """The model's own parameters by name (the base and any task head; no adapter tensors)."""
    return {k: model.params[k] for k in model.own_param_names()}


def save_model(model: GPT, directory, *, extra: dict | None = None) -> Path:
    """Write model.safetensors + config.json into ``directory`` (each file atomically)."""
    directory = Path(directory)
    params = base_params(model)
    io.save_tensors(directory / "model.safetensors", params)
    io.write_json(directory / "config.json", {
        "format": "minilora.model", "version": 1, "config": asdict(model.config),
        "fingerprint": io.fingerprint(params), "extra": extra or {}})
    return directory


def load_model(directory, *, dtype=None) -> tuple[GPT, dict]:
    """Read a model saved by ``save_model``; returns (model, extra). Checks shapes and fingerprint."""
    directory = Path(directory)
    meta = io.read_json(directory / "config.json")
    if meta.get("format") != "minilora.model":
        raise io.CheckpointError(f"{directory / 'config.json'} is not a minilora model config "
                                 f"(format = {meta.get('format')!r}); was it written by save_model?")
    config = GPTConfig(**meta["config"])
    tensors, _ = io.load_tensors(directory / "model.safetensors")
    if io.fingerprint(tensors) != meta.get("fingerprint"):
        raise io.CheckpointError(f"{directory}: model.safetensors does not match config.json "
                                 f"(fingerprint differs); the two files come from different saves")
    expected = param_shapes(config)
    if "head.weight" in tensors:
        expected.update({"head.weight": tensors["head.weight"].shape, "head.bias": tensors["head.bias"].shape})
    for name, shape in expected.items():
        got = tensors.get(name)
        if got is None or tuple(got.shape) != tuple(shape):
            raise io.CheckpointError(
                f"{directory}: parameter {name} should have shape {shape} for config {config}, "
                f"found {None if got is None else tuple(got.shape)}; the checkpoint and its config do not match")
    dtype = dtype or backend.default_dtype()
    params = {k: backend.asarray(v, dtype=dtype) for k, v in tensors.items()}
    return GPT(config, params), meta.get("extra", {})
