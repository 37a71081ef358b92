"""Adapters on separate Wq, Wk, Wv <-> one PEFT adapter on Hugging Face GPT-2's fused ``c_attn``.

GPT-2's c_attn computes q, k and v with one matrix whose output rows are stacked [Wq; Wk; Wv]
(3C, C) in minilora's (d_out, d_in) view. LoRA on some of the slices, each dW_j = s_j B_j A_j
(Hu et al. 2021, eq. 3), is one LoRA on the stack, exactly:

    A' = [A_q; A_v]            (k r, C)     the k adapted slices' A stacked (zero rows pad smaller ranks)
    B' = block-diagonal        (3C, k r)    B_j in slice j's rows and slice j's r columns, 0 elsewhere
    s' B' A' = [s_q B_q A_q; 0; s_v B_v A_v]     since each row block of B' meets only its own A rows,

with rank r' = k r and lora_alpha' chosen so that alpha' / r' = alpha / r (alpha' / sqrt(r') with
rsLoRA). A slice with another scale carries the ratio s_j / s' in its B block. The other way is exact
too: a c_attn adapter (A', B') is three adapters (A', B'_q), (A', B'_k), (A', B'_v) of rank r'.
DoRA's magnitude is per output row (Liu et al. 2024, eq. 5), so it stacks the same way; an
unadapted slice gets its own row norms, which makes its DoRA factor 1.

Other block linears keep their adapter as it is: PEFT's A (r, d_in) and B (d_out, r) have these
shapes on Conv1D as well (``fan_in_fan_out=True`` only says the BASE weight is stored (d_in, d_out)).
Shapes: C channels, r rank, k adapted slices.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters import files, patterns
from minilora.interop.hf_gpt2 import PREFIX as HF_PREFIX
from minilora.adapters.peft_format import MAGNITUDE, PREFIX, scale
from minilora.nn.backend import to_numpy
from minilora.nn.model import GPTConfig, param_shapes

QKV = ("wq", "wk", "wv")                                      # c_attn's row blocks, in order
OTHERS = {"attn.wo": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
SHORT = {"attn.wo": "wo", "mlp.fc": "fc", "mlp.proj": "proj"}
SAVED = {"ln1": "ln_1", "ln2": "ln_2", "ln_f": "ln_f", "wte": "wte", "wpe": "wpe"}   # modules_to_save that map


# --------------------------------------------------------------------------- the math
def fuse(pairs: dict, C: int):
    """pairs {"wq": (A (r_j, C), B (C, r_j), s_j), ...} (any of wq wk wv) -> A' (k r, C), B' (3C, k r), s'.

    r = the largest r_j (smaller ranks padded with zeros); s' = the first slice's scale.
    """
    slices = [m for m in QKV if m in pairs]
    r = max(pairs[m][0].shape[0] for m in slices)
    s0 = pairs[slices[0]][2]
    A2, B2 = np.zeros((len(slices) * r, C)), np.zeros((3 * C, len(slices) * r))
    for t, m in enumerate(slices):
        A, B_, s = (to_numpy(pairs[m][0]), to_numpy(pairs[m][1]), pairs[m][2])
        j, rj = QKV.index(m), A.shape[0]
        A2[t * r:t * r + rj] = A                               # slice t's directions
        B2[j * C:(j + 1) * C, t * r:t * r + rj] = B_ if s == s0 else B_ * (s / s0)
    dtype = to_numpy(pairs[slices[0]][0]).dtype
    return A2.astype(dtype), B2.astype(dtype), s0


def split(A2, B2, C: int) -> dict:
    """A c_attn adapter A' (r', C), B' (3C, r') -> {"wq": (A', B'_q), "wk": ..., "wv": ...}, exactly."""
    return {m: (A2, B2[j * C:(j + 1) * C]) for j, m in enumerate(QKV)}


# --------------------------------------------------------------------------- whole adapters
def _hf(i: int, module: str) -> str:
    return f"{HF_PREFIX}h.{i}.{module}"


def adapter_to_hf_gpt2(gpt: GPTConfig, config: LoraConfig, modules: dict, tensors: dict, *,
                       base_params: dict | None = None) -> tuple[dict, dict]:
    """(adapter_config.json dict, PEFT-keyed tensors) of a minilora adapter for GPT2LMHeadModel.

    modules: minilora module -> (r, lora_alpha) as trained; tensors: minilora names. base_params (the
    base model's) is needed for a trained bias or a DoRA magnitude on part of c_attn, whose other slices
    come from the base.
    """
    C, rs = gpt.n_embd, config.use_rslora
    hf_modules, out = {}, {}
    for i in range(gpt.n_layer):
        p = f"blocks.{i}."
        pairs = {m: (tensors[p + f"attn.{m}.lora_A.weight"], tensors[p + f"attn.{m}.lora_B.weight"],
                     scale(*modules[p + f"attn.{m}"], rs)) for m in QKV if p + f"attn.{m}" in modules}
        if pairs:
            A2, B2, s2 = fuse(pairs, C)
            r2 = A2.shape[0]
            hf_modules[_hf(i, "attn.c_attn")] = (r2, s2 * (r2 ** 0.5 if rs else r2))
            out[_hf(i, "attn.c_attn.lora_A.weight")], out[_hf(i, "attn.c_attn.lora_B.weight")] = A2, B2
        for m, hf in OTHERS.items():
            if p + m in modules:
                hf_modules[_hf(i, hf)] = modules[p + m]
                out[_hf(i, hf + ".lora_A.weight")] = tensors[p + m + ".lora_A.weight"]
                out[_hf(i, hf + ".lora_B.weight")] = tensors[p + m + ".lora_B.weight"]
        out.update(_biases_and_magnitudes(i, tensors, hf_modules, base_params, C))
    out.update(_saved_modules(tensors))
    peft = _hf_config(gpt, config, hf_modules)
    return peft, {PREFIX + k: v for k, v in out.items()}


def _biases_and_magnitudes(i, tensors, hf_modules, base_params, C) -> dict:
    """Block i's trained biases and DoRA magnitudes under HF names; c_attn's stack q, k, v."""
    p, out = f"blocks.{i}.", {}
    for kind in ("bias", MAGNITUDE):
        qkv = [p + f"attn.{m}.{kind}" for m in QKV]
        if any(k in tensors for k in qkv):
            out[_hf_key(i, "attn.c_attn", kind, hf_modules)] = np.concatenate(
                [to_numpy(tensors[k]) if k in tensors else _untrained_slice(base_params, k, kind) for k in qkv])
        for m, hf in OTHERS.items():
            if p + m + "." + kind in tensors:
                out[_hf_key(i, hf, kind, hf_modules)] = tensors[p + m + "." + kind]
    return out


def _hf_key(i, hf_module, kind, hf_modules) -> str:
    """PEFT's name: a trained bias of an adapted layer sits in its base_layer; a magnitude on the layer."""
    name = _hf(i, hf_module)
    if kind == MAGNITUDE:
        return f"{name}.{MAGNITUDE}"
    return f"{name}.base_layer.bias" if name in hf_modules else f"{name}.bias"


def _untrained_slice(base_params, key, kind):
    """A q/k/v slice the adapter does not train: its base bias, or for DoRA its row norms ||W0||_row,
    which make its DoRA factor m / ||W0 + 0|| exactly 1."""
    if base_params is None:
        raise ValueError(f"exporting onto the fused c_attn needs the base model's {key.rsplit('.', 1)[0]} for the "
                         f"slices the adapter does not train; pass base_params")
    if kind == "bias":
        return to_numpy(base_params[key])
    return np.linalg.norm(to_numpy(base_params[key.replace(MAGNITUDE, "weight")]), axis=1)


def _saved_modules(tensors) -> dict:
    """modules_to_save parameters that GPT-2 has one to one (LayerNorms, embeddings)."""
    out = {}
    for name, value in tensors.items():
        if ".lora_" in name or (name.endswith((".bias", MAGNITUDE)) and re.match(r"blocks\.\d+\.(attn|mlp)\.", name)):
            continue                                           # adapters, linear biases, magnitudes: done above
        match = re.fullmatch(r"(?:blocks\.(\d+)\.)?(\w+)\.(weight|bias)", name)
        if match is None or match.group(2) not in SAVED:
            raise ValueError(f"{name} is saved with this adapter but has no one-to-one place in GPT2LMHeadModel (a "
                             f"classification head has a bias GPT-2's score layer lacks; a single q/k/v matrix is a "
                             f"slice of c_attn); export without it")
        block, module, kind = match.groups()
        out[(f"{HF_PREFIX}h.{block}." if block else HF_PREFIX) + f"{SAVED[module]}.{kind}"] = value
    return out


def _hf_config(gpt: GPTConfig, config: LoraConfig, hf_modules: dict) -> dict:
    """adapter_config.json for the HF modules: explicit per-module ranks and alphas where they differ."""
    first = next(iter(hf_modules.values()))
    kinds = sorted({name.split(".", 3)[3] for name in hf_modules})          # "attn.c_attn", "mlp.c_fc", ...
    layers = sorted({int(name.split(".")[2]) for name in hf_modules})
    saved = [re.sub(r"\bln([12])\b", r"ln_\1", m.replace("blocks.", "h.")) for m in config.modules_to_save]
    peft = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "inference_mode": True,
            "r": int(first[0]), "lora_alpha": first[1], "target_modules": kinds, "fan_in_fan_out": True,
            "layers_to_transform": layers if len(layers) < gpt.n_layer else None,
            "layers_pattern": "h" if len(layers) < gpt.n_layer else None,
            "lora_dropout": config.lora_dropout, "bias": config.bias, "use_rslora": config.use_rslora,
            "use_dora": bool(getattr(config, "use_dora", False)), "modules_to_save": saved or None,
            "init_lora_weights": True,
            "rank_pattern": patterns.patterns_for_file({}, {m: r for m, (r, _) in hf_modules.items()}, first[0]),
            "alpha_pattern": patterns.patterns_for_file({}, {m: a for m, (_, a) in hf_modules.items()}, first[1])}
    every = [_hf(i, m) for i in range(gpt.n_layer) for m in ("attn.c_attn", *OTHERS.values())]
    wrong = sorted(set(patterns.targets(every, peft)) ^ set(hf_modules))
    if wrong:
        raise ValueError(f"PEFT would adapt other modules than this adapter has: {wrong}")
    return peft


# --------------------------------------------------------------------------- from PEFT on GPT2LMHeadModel
HF_TO_MINILORA = {"attn.c_proj": "attn.wo", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def adapter_from_hf_gpt2(peft: dict, tensors: dict, gpt: GPTConfig) -> tuple[LoraConfig, dict]:
    """(LoraConfig, tensors under minilora's names) from a PEFT LoRA adapter made on GPT2LMHeadModel.

    peft: its adapter_config.json; tensors: its adapter_model.safetensors. A c_attn adapter of rank r'
    becomes three of rank r' on wq, wk and wv with the same A (exact, see the module docstring).
    """
    if peft.get("peft_type") != "LORA" or peft.get("use_dora") or peft.get("lora_bias"):
        raise ValueError("minilora reads plain LoRA adapters from GPT-2 (peft_type 'LORA', no DoRA, no lora_bias)")
    C = gpt.n_embd
    state = {k.removeprefix(PREFIX).removeprefix(HF_PREFIX): to_numpy(v) for k, v in tensors.items()}
    hf_adapted = sorted(k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight"))
    resolved = patterns.resolve([HF_PREFIX + m for m in hf_adapted], peft.get("r", 8), peft.get("lora_alpha", 8),
                                peft.get("rank_pattern") or {}, peft.get("alpha_pattern") or {},
                                bool(peft.get("use_rslora", False)))
    out, modules = {}, {}
    for name, value in state.items():
        match = re.fullmatch(r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(.+)", name)
        if match is None:                                     # a saved module: GPT-2 name -> minilora name
            block = re.fullmatch(r"h\.(\d+)\.ln_([12])\.(weight|bias)", name)
            if block is None and not re.fullmatch(r"(ln_f|wte|wpe)\.(weight|bias)", name):
                raise ValueError(f"{name}: minilora has no counterpart for this tensor of the GPT-2 adapter")
            out[f"blocks.{block[1]}.ln{block[2]}.{block[3]}" if block else name] = value
            continue
        i, hf_module, rest = match.groups()
        rest = rest.replace("base_layer.", "")
        targets = ([f"blocks.{i}.attn.{m}" for m in QKV] if hf_module == "attn.c_attn"
                   else [f"blocks.{i}.{HF_TO_MINILORA[hf_module]}"])
        for j, target in enumerate(targets):
            if rest == "lora_A.weight" or len(targets) == 1:  # A is shared by the three slices
                out[f"{target}.{rest}"] = value
            else:                                             # B (3C, r') and the bias (3C,): slice j's rows
                out[f"{target}.{rest}"] = value[j * C:(j + 1) * C]
        if rest == "lora_A.weight":
            r, alpha, _ = resolved[f"{HF_PREFIX}h.{i}.{hf_module}"]
            modules.update({t: (r, alpha) for t in targets})
    return _minilora_config(peft, modules), out


def _minilora_config(peft: dict, modules: dict) -> LoraConfig:
    """A LoraConfig for exactly these modules, with an explicit rank / alpha for each one that differs."""
    first_r, first_alpha = next(iter(modules.values()))
    kinds = sorted({m.split(".", 2)[2] for m in modules})
    layers = sorted({int(m.split(".")[1]) for m in modules})
    saved = [re.sub(r"\bln_([12])\b", r"ln\1", m.replace("h.", "blocks.")) for m in peft.get("modules_to_save") or []]
    return LoraConfig(r=first_r, lora_alpha=first_alpha, target_modules=tuple(kinds),
                      layers_to_transform=tuple(layers) if peft.get("layers_to_transform") is not None else None,
                      rank_pattern={m: r for m, (r, _) in modules.items() if r != first_r},
                      alpha_pattern={m: a for m, (_, a) in modules.items() if a != first_alpha},
                      lora_dropout=float(peft.get("lora_dropout", 0.0)), bias=peft.get("bias", "none"),
                      modules_to_save=tuple(saved), use_rslora=bool(peft.get("use_rslora", False)),
                      init_lora_weights="peft_gaussian" if peft.get("init_lora_weights") == "gaussian" else "kaiming")


# --------------------------------------------------------------------------- folders
def write_hf_gpt2_adapter(directory, gpt: GPTConfig, config: LoraConfig, modules: dict, tensors: dict, *,
                          base_params: dict | None = None) -> Path:
    """Write the adapter for ``PeftModel.from_pretrained(GPT2LMHeadModel...)``, the folder as one save."""
    with io.atomic_folder(directory, files.FILES) as tmp:
        write_hf_gpt2_adapter_files(tmp, gpt, config, modules, tensors, base_params=base_params)
    return Path(directory)


def write_hf_gpt2_adapter_files(folder, gpt: GPTConfig, config: LoraConfig, modules: dict, tensors: dict, *,
                                base_params: dict | None = None) -> None:
    """The two files of ``write_hf_gpt2_adapter``, written into ``folder`` (a fresh folder of an atomic save)."""
    peft, out = adapter_to_hf_gpt2(gpt, config, modules, tensors, base_params=base_params)
    io.save_tensors(Path(folder) / "adapter_model.safetensors", out, {"format": "pt"})
    io.write_json(Path(folder) / "adapter_config.json", peft)


def read_hf_gpt2_adapter(directory, gpt: GPTConfig) -> tuple[LoraConfig, dict]:
    """(LoraConfig, tensors under minilora's names) from a PEFT adapter folder made on GPT2LMHeadModel."""
    directory = io.saved_folder(directory)            # a save killed mid-swap is read from its previous copy
    tensors, _ = io.load_tensors(directory / "adapter_model.safetensors")
    return adapter_from_hf_gpt2(io.read_json(directory / "adapter_config.json"), tensors, gpt)


# --------------------------------------------------------------------------- a LoraModel's adapter, both ways
def write_lora_model_adapter(lora_model, directory, adapter_name: str | None = None) -> Path:
    """Write adapter ``adapter_name`` (default: the active one) of a LoraModel for GPT2LMHeadModel, as one save.

    ``PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(model_dir), directory)`` then gives the
    logits minilora gives (the model folder from ``hf_gpt2.write_hf_gpt2`` of the same base).
    """
    with io.atomic_folder(directory, files.FILES) as tmp:
        write_lora_model_adapter_files(lora_model, tmp, adapter_name)
    return Path(directory)


def write_lora_model_adapter_files(lora_model, folder, adapter_name: str | None = None) -> None:
    """The two files of ``write_lora_model_adapter``, written into ``folder`` (a fresh folder of an atomic save)."""
    name = adapter_name or lora_model.active_adapter
    if lora_model.merged:
        raise RuntimeError("the adapter is merged into the weights; unmerge_adapter() before exporting it")
    config, tensors = lora_model.adapters[name], lora_model.adapter_state(name)
    base = {k: lora_model.model.params[k] for k in param_shapes(lora_model.config)}
    write_hf_gpt2_adapter_files(folder, lora_model.config, config, files.trained_ranks(config, tensors), tensors,
                                base_params=base)


def load_hf_gpt2_adapter(lora_model, directory, adapter_name: str = "default", *, set_active: bool = True) -> str:
    """Add a PEFT adapter made on GPT2LMHeadModel (fused c_attn, fan_in_fan_out) to a LoraModel on that GPT-2."""
    config, tensors = read_hf_gpt2_adapter(directory, lora_model.config)
    return files.install_adapter(lora_model, adapter_name, config, tensors, set_active=set_active, source=directory)


def is_hf_gpt2_adapter(directory) -> bool:
    """Whether ``directory`` holds a PEFT adapter for GPT2LMHeadModel's Conv1D layers (fan_in_fan_out)."""
    meta = io.read_json(io.saved_folder(directory) / "adapter_config.json")
    return bool(meta.get("fan_in_fan_out")) and meta.get("peft_type") == "LORA"
