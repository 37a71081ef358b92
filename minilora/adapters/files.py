"""Adapter files: adapter_model.safetensors (the adapter's tensors) + adapter_config.json.

A LoRA adapter is written in PEFT's format (``minilora.adapters.peft_format``), so
``peft.PeftModel.from_pretrained`` loads it, without a warning, onto any PyTorch module with
minilora's module names: tensor keys carry PEFT's ``base_model.model.`` prefix, adapter_config.json
holds only fields PEFT knows, and minilora's own facts travel in the safetensors header, which PEFT
does not read: the adapter's name, the config fields PEFT has not (the exact init, the seed), a
fingerprint of the base model's weights (so an adapter is never loaded onto a base it was not
trained on) and a fingerprint of the tensors, the config and these facts together (so an edited
field, lora_alpha 16 -> 8, is refused).

``load_adapter`` reads three kinds of folder:
  * minilora's PEFT-format folders: every field is required and checked, the fingerprints too;
  * PEFT's own, for a model with minilora's module names: PEFT's defaults hold for fields it left
    out, nothing binds its config to its tensors, so names and shapes are what is checked;
  * minilora's own format (FORMAT, VERSION in adapter_config.json, keys without the prefix), for
    what a PEFT folder cannot hold: adapter types PEFT has not (the bottleneck adapters) and adapters
    that keep their own copy of an adapted weight (``peft_format.peft_cannot_hold``).

The folder is one save (``minilora.io.atomic_folder``): after a crash it holds the old or the new
adapter. A field missing from a minilora file is an error, never the config's default.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from minilora import checks, io
from minilora.adapters import patterns, peft_format
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
PEFT_FOLDER = "peft"                    # read_adapter's meta["format"] for a folder in PEFT's format


# --------------------------------------------------------------------------- saving
def save_adapter(host, directory, name: str) -> Path:
    """Write adapter ``name`` of ``host`` (an AdaptedModel) into ``directory``, as one save."""
    with io.atomic_folder(directory, FILES) as tmp:
        write_adapter(host, tmp, name)
    return Path(directory)


def write_adapter(host, folder, name: str) -> None:
    """The two files of an adapter save, written into ``folder`` (a fresh folder of an atomic save):
    PEFT's format for LoRA, minilora's own for what PEFT's cannot hold."""
    tensors = host.adapter_state(name)
    config = host.adapters[name]
    facts = {"adapter_name": name, "base_model_fingerprint": host.base_fingerprint,
             "base_model_config": asdict(host.model.config)}
    if config.peft_type == "LORA" and not peft_format.peft_cannot_hold(config, tensors):
        peft_format.write_peft_files(folder, config, trained_ranks(config, tensors), tensors, facts=facts)
        return
    described = json.loads(json.dumps({"format": FORMAT, "version": VERSION, "peft_type": config.peft_type,
                                       **config.to_dict(), **facts}))
    io.save_tensors(Path(folder) / "adapter_model.safetensors", tensors)
    io.write_json(Path(folder) / "adapter_config.json",
                  {**described, "fingerprint": io.fingerprint(tensors, described)})


def trained_ranks(config, tensors: dict) -> dict[str, tuple[int, float]]:
    """module -> (r, lora_alpha) of every LoRA matrix among ``tensors``, as the config resolves them."""
    names = sorted(k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight"))
    resolved = patterns.resolve(names, config.r, config.lora_alpha, config.rank_pattern, config.alpha_pattern,
                                config.use_rslora)
    return {m: (r, alpha) for m, (r, alpha, _) in resolved.items()}


# --------------------------------------------------------------------------- reading
def read_adapter(directory, *, verify: bool = True) -> tuple[dict, object, dict]:
    """(what the folder says about the adapter, the adapter config, its tensors under minilora's names).

    The first is adapter_config.json for minilora's own format, and for PEFT's format
    {"format": PEFT_FOLDER, "adapter_config": ..., "facts": minilora's facts or None, and the facts'
    "adapter_name" and "base_model_fingerprint"}. ``verify``: also check the fingerprint that binds
    the config to the tensors (``load_adapter`` checks it after the more telling checks: the base
    model, the tensors' names and shapes).
    """
    folder = io.saved_folder(directory)
    path = folder / "adapter_config.json"
    meta = io.read_json(path)
    if isinstance(meta, dict) and meta.get("format") != FORMAT and "peft_type" in meta:
        meta, config, tensors = _read_peft(directory, path)
    else:
        meta, config, tensors = _read_own(folder, path, meta)
    if verify:
        _check_bound(directory, meta, tensors)
    return meta, config, tensors


def _read_own(folder, path, meta) -> tuple[dict, object, dict]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise io.CheckpointError(f"{path} is neither a PEFT adapter config nor minilora's; was it written by "
                                 f"save_adapter?")
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
    return meta, config, tensors


def _read_peft(directory, path) -> tuple[dict, object, dict]:
    """A folder in PEFT's format: minilora's own (facts in the header) checked field by field, PEFT's read
    with PEFT's defaults."""
    try:
        peft, tensors, facts = peft_format.read_peft_folder(directory)
        if facts is not None:
            _check_minilora_fields(peft, facts, path)
        values = {**peft_format.config_from_peft(peft, tensors), **(facts or {}).get("config", {})}
    except io.CheckpointError:
        raise
    except ValueError as e:                               # the folder exists but cannot be used
        raise io.CheckpointError(f"{path}: {e}") from None
    cls = CONFIG_TYPES["LORA"]
    known = {f.name for f in fields(cls)}
    if "use_dora" in known:
        values["use_dora"] = bool(peft.get("use_dora", False))   # PEFT's default: plain LoRA
    elif not values.get("use_dora"):
        values.pop("use_dora", None)                      # plain LoRA, whether or not this minilora has DoRA
    unknown = sorted(set(values) - known)
    if unknown:
        raise io.CheckpointError(f"{path}: this adapter uses {unknown}, which this minilora's {cls.__name__} "
                                 f"cannot compute (e.g. use_dora: DoRA)")
    try:                                                  # PEFT has no init_std, seed, ...: they only seed a new init
        config = checks.from_fields(cls, values, str(path)) if facts is not None else cls(**values)
    except ValueError as e:
        raise io.CheckpointError(str(e)) from None
    meta = {"format": PEFT_FOLDER, "peft_type": "LORA", "adapter_config": peft, "facts": facts,
            **{k: (facts or {}).get(k) for k in ("adapter_name", "base_model_fingerprint")}}
    return meta, config, tensors


def _check_minilora_fields(peft: dict, facts: dict, path) -> None:
    """A folder minilora wrote: every field it wrote is there, no other, each of its field's JSON type."""
    cls = CONFIG_TYPES["LORA"]
    missing = [k for k in peft_format.PEFT_FIELDS if k in {f.name for f in fields(cls)} and k not in peft]
    if missing:
        raise io.CheckpointError(f"{path}: field {missing[0]!r} of {cls.__name__} is missing (missing: {missing}); "
                                 f"a value is never filled in from a default. Re-create the file, or add the field")
    unknown = sorted(set(peft) - set(peft_format.CONFIG_KEYS))
    if unknown:
        raise io.CheckpointError(f"{path}: unknown field {unknown[0]!r} (unknown: {unknown}); minilora writes "
                                 f"{sorted(peft_format.CONFIG_KEYS)}")
    known = {f.name for f in fields(cls)}
    own = {k: peft[k] for k in peft_format.PEFT_FIELDS if k in peft and k in known}
    if own.get("modules_to_save", ()) is None:
        own["modules_to_save"] = []                       # PEFT writes null for none
    try:
        checks.from_fields(cls, {**own, **facts.get("config", {})}, str(path))   # types, before anything reads them
    except ValueError as e:
        raise io.CheckpointError(str(e)) from None


def _check_bound(directory, meta: dict, tensors: dict) -> None:
    if meta.get("format") == PEFT_FOLDER:
        facts = meta["facts"] or {}
        if "fingerprint" not in facts:
            return                                        # PEFT wrote it: nothing binds its config to its tensors
        expected, described = facts["fingerprint"], peft_format.bound(meta["adapter_config"], facts)
    else:
        expected, described = meta["fingerprint"], {k: v for k, v in meta.items() if k != "fingerprint"}
    if io.fingerprint(tensors, described) != expected:
        raise io.CheckpointError(f"{directory}: adapter_config.json does not describe adapter_model.safetensors "
                                 f"(fingerprint differs): a file was edited or comes from another save")


def head_classes(directory) -> int | None:
    """K of the classification head saved with the adapter in ``directory`` (modules_to_save), or None.

    A base needs its head (``add_classification_head(K)``) before such an adapter loads onto it.
    """
    _, _, tensors = read_adapter(directory, verify=False)
    return int(tensors["head.bias"].shape[0]) if "head.bias" in tensors else None


def load_adapter(host, directory, adapter_name: str | None = None, *, set_active: bool = True) -> str:
    """Add the adapter saved in ``directory`` to ``host``; returns its name. Nothing is left on failure."""
    meta, config, tensors = read_adapter(directory, verify=False)
    fingerprint = meta.get("base_model_fingerprint")
    if fingerprint is not None and fingerprint != host.base_fingerprint:
        raise io.CheckpointError(
            f"the adapter in {directory} was trained on a different base model (fingerprint "
            f"{fingerprint} vs this base {host.base_fingerprint}); load it onto "
            f"the base it was made for (and unmerge any merged adapter first)")
    return install_adapter(host, adapter_name or meta.get("adapter_name") or "default", config, tensors,
                           set_active=set_active, source=directory,
                           check=lambda: _check_bound(directory, meta, tensors))


def install_adapter(host, name: str, config, tensors: dict, *, set_active: bool = True, source="the file",
                    check=None) -> str:
    """Add adapter ``name`` built from ``config`` to ``host`` and fill it with ``tensors`` (minilora's keys).

    Names and shapes are checked, then ``check()`` if given; on any error the adapter is removed
    again and the previously active one restored.
    """
    was_active = host.active_adapter
    host.add_adapter(name, config)
    try:
        _fill(host, name, tensors, source)
        if check is not None:
            check()
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
