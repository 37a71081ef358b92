"""Hugging Face GPT-2 folders <-> minilora's GPT (config and the flat params dict).

minilora's GPT is GPT-2's architecture (Radford et al. 2019), so a checkpoint maps one to one,
with three changes of layout (C channels, i block; see docs/interop.md for the full table):

  * transformers' ``Conv1D`` stores its weight (d_in, d_out) and computes x @ W + b; minilora stores
    (d_out, d_in) and computes x @ W.T + b, so every block weight is transposed;
  * ``attn.c_attn`` is one Conv1D (C, 3C) whose output columns are [q | k | v]; minilora keeps
    Wq, Wk, Wv separate, so c_attn is split in that order (its bias too);
  * the LM head is tied to ``wte`` in both, so no ``lm_head.weight`` is written.

Reading accepts both key layouts in use: ``transformer.h.0...`` (``save_pretrained``) and the
original OpenAI checkpoint's ``h.0...``, whose ``attn.bias`` / ``attn.masked_bias`` causal-mask
buffers are not weights and are skipped. Configs that compute something minilora does not are
refused with the field named, never approximated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minilora import io
from minilora.nn import backend
from minilora.nn.model import GPTConfig, param_shapes

PREFIX = "transformer."
# Both names mean GELU's tanh approximation, the formula minilora's gelu_forward computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
BUFFERS = (".attn.bias", ".attn.masked_bias")     # causal-mask buffers of old checkpoints, not weights
GPT2_EOS = 50256                                  # <|endoftext|> in GPT-2's own 50257-token vocabulary

# Per-block names that only change prefix: minilora suffix -> HF suffix (same shapes).
SAME = {"ln1.weight": "ln_1.weight", "ln1.bias": "ln_1.bias", "ln2.weight": "ln_2.weight",
        "ln2.bias": "ln_2.bias", "attn.wo.bias": "attn.c_proj.bias", "mlp.fc.bias": "mlp.c_fc.bias",
        "mlp.proj.bias": "mlp.c_proj.bias"}
# Per-block weights stored transposed (Conv1D): minilora suffix -> HF suffix.
TRANSPOSED = {"attn.wo.weight": "attn.c_proj.weight", "mlp.fc.weight": "mlp.c_fc.weight",
              "mlp.proj.weight": "mlp.c_proj.weight"}
QKV = ("wq", "wk", "wv")                          # c_attn's column order
FILES = ("config.json", "model.safetensors")      # the files of one model folder


# --------------------------------------------------------------------------- config.json
def _refuse(field, value, why, fix):
    raise ValueError(f"this GPT-2 config has {field} = {value!r}, which minilora cannot represent: {why}. {fix}")


def config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a transformers GPT-2 config.json dict; refuses what minilora would compute differently."""
    if hf.get("model_type", "gpt2") != "gpt2":
        _refuse("model_type", hf.get("model_type"), "only GPT-2 checkpoints map onto minilora's GPT",
                "Use a GPT-2 checkpoint (model_type 'gpt2').")
    C = int(hf.get("n_embd", 768))
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        _refuse("activation_function", act, "minilora's MLP uses GELU's tanh approximation ('gelu_new')",
                "Only checkpoints trained with gelu_new (GPT-2's own) can be imported.")
    if hf.get("n_inner") not in (None, 4 * C):
        _refuse("n_inner", hf["n_inner"], f"minilora's MLP is 4 x n_embd = {4 * C} wide",
                "Import a checkpoint with n_inner null or 4 x n_embd.")
    for flag, meaning in (("scale_attn_by_inverse_layer_idx", "scales block i's scores by 1/(i+1) as well"),
                          ("reorder_and_upcast_attn", "computes attention in a reordered, upcast form"),
                          ("add_cross_attention", "adds cross-attention layers")):
        if hf.get(flag, False):
            _refuse(flag, True, f"it {meaning}, which minilora's attention does not",
                    "Only plain GPT-2 attention (the flag false) can be imported.")
    if not hf.get("scale_attn_weights", True):
        _refuse("scale_attn_weights", False, "minilora always divides the scores by sqrt(head size)",
                "Only checkpoints with scaled attention (the default) can be imported.")
    if not hf.get("tie_word_embeddings", True):
        _refuse("tie_word_embeddings", False, "minilora's LM head is the token embedding itself",
                "Only checkpoints with a tied LM head (GPT-2's default) can be imported.")
    return GPTConfig(vocab_size=int(hf.get("vocab_size", 50257)), block_size=int(hf.get("n_positions", 1024)),
                     n_layer=int(hf.get("n_layer", 12)), n_head=int(hf.get("n_head", 12)), n_embd=C,
                     ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)))


def config_to_hf(config: GPTConfig, *, eos_token_id: int | None = None, dtype: str = "float32") -> dict:
    """config.json for ``transformers.GPT2LMHeadModel``: every field its GPT2Config reads.

    eos_token_id: None (the default) keeps bos/eos unset, since 50256 (GPT-2's) is no valid id in a
    small vocabulary; a 50257-token vocabulary gets GPT-2's 50256. Dropouts are 0: minilora trains none.
    """
    V = config.vocab_size
    if eos_token_id is None and V == GPT2_EOS + 1:
        eos_token_id = GPT2_EOS
    if eos_token_id is not None and not 0 <= int(eos_token_id) < V:
        raise ValueError(f"eos_token_id = {eos_token_id} is outside the vocabulary [0, {V}); pass a valid id or None")
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "dtype": dtype,
            "vocab_size": V, "n_positions": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": config.ln_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
            "use_cache": True, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
            "summary_type": "cls_index", "summary_use_proj": True, "summary_activation": None,
            "summary_proj_to_labels": True, "summary_first_dropout": 0.1}


# --------------------------------------------------------------------------- tensors
def params_from_hf(state: dict, config: GPTConfig) -> dict:
    """HF GPT-2 tensors (either key layout) -> minilora's params (NumPy, same dtype as the file).

    Conv1D weights are transposed, c_attn (C, 3C) is split into Wq, Wk, Wv (C, C) in that order,
    mask buffers are skipped, and a stored ``lm_head.weight`` must equal ``wte`` (tied).
    """
    state = {k.removeprefix(PREFIX): v for k, v in state.items() if not k.endswith(BUFFERS)}
    head = state.pop("lm_head.weight", None)
    C, expected = config.n_embd, param_shapes(config)
    hf_names = _hf_names(config)
    missing, extra = sorted(hf_names - set(state)), sorted(set(state) - hf_names)
    if missing or extra:
        raise io.CheckpointError(f"the GPT-2 weights do not match config.json: missing {missing[:4]}, "
                                 f"unexpected {extra[:4]}; the config and the weights come from different models")
    if head is not None and not np.array_equal(head, state["wte.weight"]):
        raise io.CheckpointError("lm_head.weight differs from wte.weight: minilora's LM head is tied to the "
                                 "token embedding, so an untied head cannot be imported")
    params = {n: state[n] for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(config.n_layer):
        p, h = f"blocks.{i}.", f"h.{i}."
        params.update({p + m: state[h + hf] for m, hf in SAME.items()})
        params.update({p + m: state[h + hf].T for m, hf in TRANSPOSED.items()})
        w, b = state[h + "attn.c_attn.weight"], state[h + "attn.c_attn.bias"]   # (C, 3C), (3C,)
        for j, m in enumerate(QKV):
            params[p + f"attn.{m}.weight"] = w[:, j * C:(j + 1) * C].T             # (C, C) as (d_out, d_in)
            params[p + f"attn.{m}.bias"] = b[j * C:(j + 1) * C]
    for name, shape in expected.items():
        if tuple(params[name].shape) != tuple(shape):
            raise io.CheckpointError(f"{name} has shape {tuple(params[name].shape)}, config.json implies {shape}")
    return {k: np.ascontiguousarray(v) for k, v in params.items()}


def params_to_hf(config: GPTConfig, params: dict) -> dict:
    """minilora's params -> GPT2LMHeadModel's tensors, keyed ``transformer.*`` (NumPy arrays)."""
    extra = sorted(set(params) - set(param_shapes(config)))
    if extra:
        raise ValueError(f"params hold {extra[:4]}, which GPT2LMHeadModel has no place for. A classification "
                         f"head has a bias that GPT2ForSequenceClassification.score lacks, so it cannot be "
                         f"written exactly; export the language model without it (adapters go through "
                         f"minilora.adapters.peft_format)")
    host = {k: backend.to_numpy(v) for k, v in params.items()}
    out = {n: host[n] for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(config.n_layer):
        p, h = f"blocks.{i}.", f"h.{i}."
        out.update({h + hf: host[p + m] for m, hf in SAME.items()})
        out.update({h + hf: host[p + m].T for m, hf in TRANSPOSED.items()})
        out[h + "attn.c_attn.weight"] = np.concatenate([host[p + f"attn.{m}.weight"].T for m in QKV], axis=1)
        out[h + "attn.c_attn.bias"] = np.concatenate([host[p + f"attn.{m}.bias"] for m in QKV])
    return {PREFIX + k: np.ascontiguousarray(v) for k, v in out.items()}


def _hf_names(config: GPTConfig) -> set[str]:
    """HF names (without prefix) of every GPT-2 weight."""
    names = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
    for i in range(config.n_layer):
        names |= {f"h.{i}.{hf}" for hf in (*SAME.values(), *TRANSPOSED.values(),
                                          "attn.c_attn.weight", "attn.c_attn.bias")}
    return names


# --------------------------------------------------------------------------- folders
def read_hf_gpt2(directory, *, dtype=None) -> tuple[GPTConfig, dict]:
    """(GPTConfig, params) from a local Hugging Face GPT-2 folder (config.json + model.safetensors).

    params are moved to the active backend in ``dtype`` (default: the backend's default dtype).
    """
    directory = io.saved_folder(directory)            # a save killed mid-swap is read from its previous copy
    config = config_from_hf(io.read_json(directory / "config.json"))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        others = sorted(p.name for pattern in ("*.bin", "*.index.json") for p in directory.glob(pattern))
        raise FileNotFoundError(f"{weights}: no such file{f' (found {others})' if others else ''}. minilora reads "
                                f"one model.safetensors (never pickle .bin files); convert with transformers: "
                                f"GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir)")
    state, _ = io.load_tensors(weights)
    dtype = dtype or backend.default_dtype()
    return config, {k: backend.asarray(v, dtype=dtype) for k, v in params_from_hf(state, config).items()}


def write_hf_gpt2(config: GPTConfig, params: dict, directory, *, eos_token_id: int | None = None) -> Path:
    """Write ``directory``/model.safetensors and config.json for ``GPT2LMHeadModel.from_pretrained``.

    The folder is one save (minilora.io.atomic_folder): after a crash it holds the old or the new
    model, never config.json of one and weights of the other. Tensors keep their dtype (float32 for a
    float32 model).
    """
    with io.atomic_folder(directory, FILES) as tmp:   # the two files are one save
        write_hf_gpt2_files(config, params, tmp, eos_token_id=eos_token_id)
    return Path(directory)


def write_hf_gpt2_files(config: GPTConfig, params: dict, folder, *, eos_token_id: int | None = None) -> None:
    """The two files of ``write_hf_gpt2``, written into ``folder`` (a fresh folder of an atomic save)."""
    tensors = params_to_hf(config, params)
    hf_config = config_to_hf(config, eos_token_id=eos_token_id, dtype=str(tensors[PREFIX + "wte.weight"].dtype))
    io.save_tensors(Path(folder) / "model.safetensors", tensors, metadata={"format": "pt"})
    io.write_json(Path(folder) / "config.json", hf_config)
