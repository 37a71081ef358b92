"""minilora's adapter description <-> PEFT's adapter folder, as pure functions.

``minilora.adapters.files`` writes and reads every LoRA adapter through these functions, so a
minilora adapter folder IS a PEFT adapter folder. minilora describes an adapter by a ``LoraConfig``
and its tensors keyed by minilora's names
(``LoraModel.adapter_state``): ``{module}.lora_A.weight`` (r, d_in), ``{module}.lora_B.weight``
(d_out, r), a trained bias ``{module}.bias`` (d_out,), a saved module's parameters (``head.weight``),
and DoRA's ``{module}.lora_magnitude_vector`` (d_out,). PEFT's folder (``PeftModel.save_pretrained``)
holds the same arrays in the same shapes under other names, and an adapter_config.json:

  minilora                               PEFT's adapter_model.safetensors
  blocks.0.attn.wq.lora_A.weight         base_model.model.blocks.0.attn.wq.lora_A.weight
  blocks.0.attn.wq.bias (adapted module) base_model.model.blocks.0.attn.wq.base_layer.bias
  blocks.0.attn.wk.bias (bias="all")     base_model.model.blocks.0.attn.wk.bias
  head.weight (modules_to_save)          base_model.model.head.weight
  blocks.0.attn.wq.lora_magnitude_vector base_model.model.blocks.0.attn.wq.lora_magnitude_vector

PEFT loads its keys with ``load_state_dict(strict=False)``: a key without the prefix is not an
error, it is silently not loaded (B stays 0 and the model is the base model). So the prefix is
not cosmetic. minilora's own facts (exact init, seed, base fingerprint) are not PEFT fields, and
PEFT warns about unknown config keys; they travel in the safetensors header (``__metadata__``),
which PEFT does not read.

The functions take a LoraConfig (any object with its fields) and give back plain dicts of its
fields, so this module needs no import of the config class (``files`` builds it).
"""
from __future__ import annotations

import json
from pathlib import Path

from minilora import io
from minilora.adapters import patterns
from minilora.adapters.lora import lora_scale

PREFIX = "base_model.model."
MAGNITUDE = "lora_magnitude_vector"              # DoRA's m (Liu et al. 2024, eq. 5), PEFT's name
LAYERS_PATTERN = "blocks"                        # minilora's list of blocks, for layers_to_transform
# minilora's init -> a value PEFT accepts. PEFT validates it on load but then overwrites A and B.
INIT_TO_PEFT = {"kaiming": True, "peft_gaussian": "gaussian", "gaussian": True, "reversed": True, "zeros": True}
# PEFT inits that change the base weights (the adapter is relative to a modified W0): refused.
BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda", "eva", "lora_ga", "orthogonal", "mica")


# --------------------------------------------------------------------------- tensor names
def _adapted(tensors: dict) -> set[str]:
    return {k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight")}


def state_to_peft(tensors: dict) -> dict:
    """minilora's adapter tensors -> PEFT's file keys (same arrays, no copies)."""
    adapted = _adapted(tensors)
    out = {}
    for key, value in tensors.items():
        module = key.removesuffix(".bias")
        if key.endswith(".bias") and module in adapted:
            key = module + ".base_layer.bias"          # PEFT wraps the adapted Linear as base_layer
        out[PREFIX + key] = value
    return out


def state_from_peft(tensors: dict) -> dict:
    """PEFT's file keys -> minilora's names. Refuses tensors of adapter kinds minilora does not have."""
    out = {}
    for key, value in sorted(tensors.items(), key=lambda kv: ".modules_to_save." in kv[0]):
        name = key.removeprefix(PREFIX)
        # bias="all" with modules_to_save makes PEFT also write the wrapper's inner names: the base's
        # own value (original_module: minilora has the base) and a duplicate of the trained copy.
        if ".original_module." in name:
            continue
        if ".modules_to_save." in name:
            name = name.replace(".modules_to_save.", ".")
            if name in out:
                continue
        if ".base_layer." in name:
            name = name.replace(".base_layer.", ".")
        if name.endswith(f".{MAGNITUDE}.weight"):   # older PEFT files kept the Parameter's name
            name = name.removesuffix(".weight")
        if any(s in name for s in ("lora_embedding", "lora_E", "lora_bias", ".lora_B.bias")):
            raise ValueError(f"{key}: minilora has no counterpart for this PEFT tensor (LoRA on embeddings, "
                             f"AdaLoRA or lora_bias); only LoRA and DoRA on linear layers can be read")
        out[name] = value
    return out


# --------------------------------------------------------------------------- adapter_config.json
def config_to_peft(config, modules: dict, *, task_type: str | None = None) -> dict:
    """adapter_config.json for PEFT from a LoraConfig and the adapter's modules as trained.

    modules: full module name -> (r, lora_alpha) of every adapted matrix (LoraModel knows both).
    Writes every field whose PEFT default differs from minilora's meaning; rank_pattern and
    alpha_pattern are written so that PEFT resolves each module to exactly these values.
    task_type None loads as a plain PeftModel (a custom model such as minilora's torch mirror).
    """
    if config.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias {config.bias!r} has no PEFT counterpart")
    if config.init_lora_weights not in INIT_TO_PEFT:
        raise ValueError(f"init_lora_weights = {config.init_lora_weights!r}: this adapter works on its own residual "
                         f"of W0, not on the base PEFT loads; export LoraModel.convert_to_plain_lora()'s adapter")
    layers = list(config.layers_to_transform) if config.layers_to_transform is not None else None
    out = {"peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": None, "inference_mode": True,
           "r": int(config.r), "lora_alpha": config.lora_alpha, "target_modules": list(config.target_modules),
           "layers_to_transform": layers, "layers_pattern": LAYERS_PATTERN if layers is not None else None,
           "lora_dropout": config.lora_dropout, "bias": config.bias, "fan_in_fan_out": False,
           "modules_to_save": list(config.modules_to_save) or None, "use_rslora": config.use_rslora,
           "use_dora": bool(getattr(config, "use_dora", False)),
           "init_lora_weights": INIT_TO_PEFT[config.init_lora_weights],
           "rank_pattern": patterns.patterns_for_file(config.rank_pattern, {m: r for m, (r, _) in modules.items()},
                                                      config.r),
           "alpha_pattern": patterns.patterns_for_file(config.alpha_pattern,
                                                       {m: a for m, (_, a) in modules.items()}, config.lora_alpha)}
    missed = sorted(set(modules) ^ set(patterns.targets(modules, out)))
    if missed:
        raise ValueError(f"PEFT would not adapt exactly these modules with this config: {missed}")
    return out


def config_from_peft(peft: dict, tensors: dict) -> dict:
    """LoraConfig's fields meaning what a PEFT adapter_config.json means, for the adapter's tensors (minilora names).

    Ranks and alphas are resolved by PEFT's rule (first matching key) for every adapted module and
    written back as one explicit entry per module that differs from r / lora_alpha, so the result
    means the same under any resolution rule. Refuses what minilora cannot compute.
    """
    if peft.get("peft_type") != "LORA":
        raise ValueError(f"peft_type = {peft.get('peft_type')!r}: minilora reads LoRA adapters only (peft_type 'LORA')")
    for field, why in (("fan_in_fan_out", "its base stores weights (d_in, d_out), as Hugging Face GPT-2's Conv1D: "
                                          "read it with minilora.interop.fused_qkv.adapter_from_hf_gpt2"),
                       ("lora_bias", "it trains a bias on lora_B, which minilora's LoRA has not"),
                       ("layer_replication", "it duplicates layers of the base model")):
        if peft.get(field):
            raise ValueError(f"this PEFT adapter has {field} = {peft[field]!r}; minilora cannot load it: {why}")
    init = peft.get("init_lora_weights", True)
    if isinstance(init, str) and init.split("_niter_")[0] in BASE_CHANGING_INITS:
        raise ValueError(f"init_lora_weights = {init!r} changes the base weights, so this adapter is relative to a "
                         f"modified W0; convert it to a plain LoRA with PEFT first (path_initial_model_for_"
                         f"weight_conversion in save_pretrained)")
    if isinstance(peft.get("target_modules"), str):
        raise ValueError(f"target_modules is the regular expression {peft['target_modules']!r}; minilora's LoraConfig "
                         f"takes module names (wq wk wv wo fc proj): list them instead")
    pattern = peft.get("layers_pattern")
    if peft.get("layers_to_transform") is not None and pattern not in (None, LAYERS_PATTERN, [LAYERS_PATTERN]):
        raise ValueError(f"layers_pattern = {pattern!r}: minilora's layers are 'blocks'")
    adapted = sorted(m for m in _adapted(tensors) if f"{m}.lora_B.weight" in tensors)   # a lone A: _fill names it
    resolved = patterns.resolve(adapted, peft.get("r", 8), peft.get("lora_alpha", 8), peft.get("rank_pattern") or {},
                                peft.get("alpha_pattern") or {}, bool(peft.get("use_rslora", False)))
    check_ranks(tensors, resolved)
    layers = peft.get("layers_to_transform")
    facts = {"r": int(peft.get("r", 8)), "lora_alpha": peft.get("lora_alpha", 8),
             "target_modules": tuple(peft.get("target_modules") or ()),
             "layers_to_transform": [layers] if isinstance(layers, int) else layers,
             "rank_pattern": {m: r for m, (r, _, _) in resolved.items() if r != peft.get("r", 8)},
             "alpha_pattern": {m: a for m, (_, a, _) in resolved.items() if a != peft.get("lora_alpha", 8)},
             "lora_dropout": float(peft.get("lora_dropout", 0.0)), "bias": peft.get("bias", "none"),
             "modules_to_save": tuple(peft.get("modules_to_save") or ()),
             "use_rslora": bool(peft.get("use_rslora", False)),
             "init_lora_weights": {True: "kaiming", False: "kaiming", "gaussian": "peft_gaussian"}.get(init, "kaiming")}
    if peft.get("use_dora"):
        facts["use_dora"] = True                                 # refused by files.py where DoRA is missing
    return facts


def check_ranks(tensors: dict, resolved: dict) -> None:
    """Every A (r, d_in) and B (d_out, r) must have the rank the config resolves for its module."""
    for module, (r, _, _) in resolved.items():
        a, b = tensors[f"{module}.lora_A.weight"].shape, tensors[f"{module}.lora_B.weight"].shape
        if a[0] != r or b[1] != r:
            raise ValueError(f"{module}: lora_A {tuple(a)} and lora_B {tuple(b)} do not have the rank r = {r} that "
                             f"adapter_config.json resolves for it (PEFT's first matching rank_pattern key)")


def scale(r: int, lora_alpha: float, use_rslora: bool) -> float:
    """The scale s of a LoRA layer, the paper's or rsLoRA's (``minilora.adapters.lora.lora_scale``)."""
    return lora_scale(lora_alpha, r, use_rslora)


# --------------------------------------------------------------------------- minilora's own facts
def minilora_metadata(facts: dict) -> dict[str, str]:
    """safetensors header metadata: PEFT's {"format": "pt"} plus minilora's facts as one JSON string.

    facts: e.g. {"adapter_name": "default", "base_model_fingerprint": "...", "base_model_config": {...},
    "config": {"init_lora_weights": "gaussian", "init_std": None, "seed": 0}}.
    """
    return {"format": "pt", "minilora": json.dumps(facts, sort_keys=True)}


def facts_from_metadata(metadata: dict) -> dict | None:
    """minilora's facts from a safetensors header, or None for a folder PEFT wrote."""
    text = metadata.get("minilora")
    return None if text is None else json.loads(text)


# --------------------------------------------------------------------------- folders
# LoraConfig fields an adapter_config.json carries with minilora's meaning; every other field (the exact init,
# init_std, seed, and whatever options minilora adds) travels in the header's facts under "config".
PEFT_FIELDS = ("r", "lora_alpha", "target_modules", "layers_to_transform", "rank_pattern", "alpha_pattern",
               "lora_dropout", "bias", "modules_to_save", "use_rslora", "use_dora")
# every key config_to_peft writes into adapter_config.json
CONFIG_KEYS = PEFT_FIELDS + ("peft_type", "task_type", "base_model_name_or_path", "inference_mode", "layers_pattern",
                             "fan_in_fan_out", "init_lora_weights")
FILES = ("adapter_config.json", "adapter_model.safetensors")


def peft_cannot_hold(config, tensors: dict) -> str | None:
    """Why a PEFT folder cannot hold this adapter (None when it can).

    PEFT validates init_lora_weights on load, so an init it does not know cannot be written; and an
    adapter that keeps its own copy of an adapted layer's weight (an init that starts from W0 itself,
    such as PiSSA's residual W0 - s B A) computes on that copy, which PEFT would never load.
    """
    init = getattr(config, "init_lora_weights", None)
    if init not in INIT_TO_PEFT:
        return f"init_lora_weights = {init!r} has no value PEFT accepts for a plain LoRA on the original W0"
    copies = sorted(k for k in tensors if k.endswith(".weight") and k.removesuffix(".weight") in _adapted(tensors))
    if copies:
        return f"it keeps its own copy of adapted weights ({copies[0]} ...), which a PEFT folder cannot hold"
    return None


def bound(peft_config: dict, facts: dict) -> dict:
    """What the fingerprint in minilora's facts binds to the tensors (minilora's names): adapter_config.json
    and every other fact, so an edited field in either is refused."""
    return json.loads(json.dumps({"adapter_config": peft_config,
                                  "facts": {k: v for k, v in facts.items() if k != "fingerprint"}}))


def write_peft_files(folder, config, modules: dict, tensors: dict, *, facts: dict | None = None,
                     task_type: str | None = None) -> None:
    """Write the two files ``PeftModel.from_pretrained`` loads without a warning into ``folder`` (a fresh
    folder of an atomic save: ``write_peft_adapter``, ``minilora.adapters.files.save_adapter``).

    modules: module -> (r, lora_alpha) as trained; tensors: minilora's names (LoraModel.adapter_state);
    facts: minilora's own facts to keep (base fingerprint, adapter name, ...); the config's fields that
    are not PEFT's (``PEFT_FIELDS``) are added under "config", and a fingerprint binding the tensors to
    adapter_config.json and the facts (``bound``).
    """
    peft_config = json.loads(json.dumps(config_to_peft(config, modules, task_type=task_type)))
    own = json.loads(json.dumps({**(facts or {}), "config": {k: v for k, v in config.to_dict().items()
                                                             if k not in PEFT_FIELDS}}))
    own["fingerprint"] = io.fingerprint(tensors, bound(peft_config, own))
    io.save_tensors(Path(folder) / "adapter_model.safetensors", state_to_peft(tensors), minilora_metadata(own))
    io.write_json(Path(folder) / "adapter_config.json", peft_config)


def write_peft_adapter(directory, config, modules: dict, tensors: dict, *, facts: dict | None = None,
                       task_type: str | None = None) -> Path:
    """``write_peft_files`` into ``directory`` as one save (minilora.io.atomic_folder)."""
    with io.atomic_folder(directory, FILES) as tmp:
        write_peft_files(tmp, config, modules, tensors, facts=facts, task_type=task_type)
    return Path(directory)


def read_peft_folder(directory) -> tuple[dict, dict, dict | None]:
    """(adapter_config.json, tensors under minilora's names, minilora's facts or None for a PEFT-written folder)."""
    directory = io.saved_folder(directory)            # a save killed mid-swap is read from its previous copy
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file() and (directory / "adapter_model.bin").is_file():
        raise FileNotFoundError(f"{directory} holds adapter_model.bin, a pickle file minilora never opens; "
                                f"re-save it with PEFT (safe_serialization=True, the default) to get "
                                f"adapter_model.safetensors")
    raw, metadata = io.load_tensors(weights)
    return io.read_json(directory / "adapter_config.json"), state_from_peft(raw), facts_from_metadata(metadata)


def read_peft_adapter(directory) -> tuple[dict, dict, dict | None]:
    """(LoraConfig's fields, tensors under minilora's names, minilora's facts or None) from a PEFT folder.

    Reads folders written by PEFT and by ``write_peft_adapter``; for the latter the init and seed
    minilora used come back from the header. (``minilora.adapters.files.read_adapter`` also checks
    the fields and the fingerprint of minilora's folders.)
    """
    peft, tensors, facts = read_peft_folder(directory)
    config = config_from_peft(peft, tensors)
    config.update((facts or {}).get("config", {}))               # minilora's exact init, seed, ... back
    return config, tensors, facts
