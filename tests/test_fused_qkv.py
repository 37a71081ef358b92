"""Spec of minilora.interop.fused_qkv: adapters on Wq, Wk, Wv <-> one adapter on GPT-2's c_attn.

The algebra is checked in closed form; the PEFT direction against the adapter PEFT saved on
GPT2LMHeadModel (tests/fixtures/peft_adapters/hf_c_attn); the export by merging it in the Hugging Face
layout (Conv1D: W += s (B A)^T, the rule the fixture confirms) and reading that model back. The
``reference`` test loads the export with the real PEFT on GPT2LMHeadModel.
"""
import json

import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.adapters.lora_model import LoraModel
from minilora.interop import fused_qkv
from minilora.interop.hf_gpt2 import params_from_hf, params_to_hf, read_hf_gpt2
from minilora.adapters.peft_format import PREFIX, scale
from minilora.nn.model import GPT

from interop_fixtures import (ADAPTERS, HF_TINY, captured_warnings, expected, lora_modules, max_abs, merged_model,
                              no_warnings_or_log_records)

TOL = 1e-6
C = 8


def random_pairs(rng, ranks={"wq": 2, "wv": 3}, scales={"wq": 2.0, "wv": 0.5}):
    return {m: (rng.standard_normal((r, C)), rng.standard_normal((C, r)), scales[m]) for m, r in ranks.items()}


# --------------------------------------------------------------------------- the algebra
def test_fused_update_is_the_stack_of_the_separate_updates(rng):
    """s' B' A' = [s_q B_q A_q; 0; s_v B_v A_v] with different ranks and scales (padding and B rescaled)."""
    pairs = random_pairs(rng)
    A2, B2, s2 = fused_qkv.fuse(pairs, C)
    want = np.concatenate([pairs["wq"][2] * pairs["wq"][1] @ pairs["wq"][0], np.zeros((C, C)),
                           pairs["wv"][2] * pairs["wv"][1] @ pairs["wv"][0]])
    err = max_abs(s2 * B2 @ A2, want)
    assert A2.shape == (6, C) and B2.shape == (3 * C, 6), f"expected rank 2 x 3 = 6, received {A2.shape}, {B2.shape}"
    assert err < 1e-12, f"expected the fused update to equal the stacked updates, max error {err:.2e}"


def test_a_c_attn_adapter_splits_into_three_exact_adapters(rng):
    """(A', B') on c_attn = (A', B'_q), (A', B'_k), (A', B'_v): the same update, bit for bit."""
    A2, B2 = rng.standard_normal((4, C)), rng.standard_normal((3 * C, 4))
    parts = fused_qkv.split(A2, B2, C)
    stacked = np.concatenate([parts[m][1] @ parts[m][0] for m in ("wq", "wk", "wv")])
    assert np.array_equal(stacked, B2 @ A2), "expected the split updates to stack to B' A' exactly"


def test_fused_dora_equals_separate_dora_when_the_free_slice_keeps_its_row_norms(rng):
    """DoRA is per output row: m' = [m_q; ||W_k||_row; m_v] on c_attn gives each slice its own DoRA weight."""
    W = {m: rng.standard_normal((C, C)) for m in ("wq", "wk", "wv")}
    pairs = random_pairs(rng, scales={"wq": 1.5, "wv": 1.5})
    mags = {m: rng.uniform(0.5, 2.0, C) for m in pairs}

    def dora(W0, m, upd):
        V = W0 + upd
        return m[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)

    separate = np.concatenate([dora(W[m], mags[m], pairs[m][2] * pairs[m][1] @ pairs[m][0]) if m in pairs else W[m]
                               for m in ("wq", "wk", "wv")])
    A2, B2, s2 = fused_qkv.fuse(pairs, C)
    m2 = np.concatenate([mags["wq"], np.linalg.norm(W["wk"], axis=1), mags["wv"]])
    fused = dora(np.concatenate([W[m] for m in ("wq", "wk", "wv")]), m2, s2 * B2 @ A2)
    err = max_abs(fused, separate)
    assert err < 1e-12, f"expected fused DoRA = separate DoRA, max error {err:.2e}"


# --------------------------------------------------------------------------- PEFT's c_attn adapter -> minilora
def test_peft_c_attn_adapter_imports_to_peft_logits():
    """PEFT's LoRA on c_attn and c_fc (fan_in_fan_out) as minilora adapters on wq, wk, wv, fc gives PEFT's logits."""
    gpt, _ = read_hf_gpt2(HF_TINY)
    config, tensors = fused_qkv.read_hf_gpt2_adapter(ADAPTERS / "hf_c_attn", gpt)
    scales = {m: s for m, (_, s) in resolve_targets(GPT(gpt), config).items()}
    ref = expected(ADAPTERS / "hf_c_attn")
    logits, _ = merged_model(tensors, scales).forward(ref["tokens"])
    err = max_abs(logits, ref["logits"])
    assert sorted(scales) == sorted(f"blocks.{i}.{m}" for i in (0, 1) for m in ("attn.wq", "attn.wk", "attn.wv",
                                                                                "mlp.fc")), sorted(scales)
    assert err < TOL, f"expected max |logits - PEFT's| < {TOL}, received {err:.2e}"


# --------------------------------------------------------------------------- minilora -> PEFT's c_attn
SEPARATE = LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "wv", "wo", "fc"), rank_pattern={"wv": 3},
                      alpha_pattern={"blocks.1.attn.wo": 12}, bias="lora_only", modules_to_save=("ln_f",))


def trained(config, dtype=np.float64, seed=0):
    """A LoraModel on the fixture base with random non-zero B, trained biases and ln_f."""
    lm = LoraModel(GPT(*read_hf_gpt2(HF_TINY, dtype=dtype)), config)
    rng = np.random.default_rng(seed)
    for name, value in lm.adapter_state().items():
        if ".lora_A." not in name:
            value += (0.3 * rng.standard_normal(value.shape)).astype(value.dtype)
    return lm


def merge_in_hf_layout(lm, peft, tensors) -> dict:
    """The HF base with PEFT's adapter merged as PEFT merges Conv1D layers: W_conv += s (B A)^T."""
    from minilora.adapters import patterns
    state = params_to_hf(lm.config, {k: lm.params[k] for k in lm.model.own_param_names()})   # the base
    state = {PREFIX + k: v.copy() for k, v in state.items()}
    names = sorted(k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight"))
    res = patterns.resolve([n.removeprefix(PREFIX) for n in names], peft["r"], peft["lora_alpha"],
                           peft["rank_pattern"], peft["alpha_pattern"], peft["use_rslora"])
    for n in names:
        s = res[n.removeprefix(PREFIX)][2]
        state[n + ".weight"] += s * (tensors[n + ".lora_B.weight"] @ tensors[n + ".lora_A.weight"]).T
    for k, v in tensors.items():
        if ".lora_" not in k:
            state[k.replace(".base_layer.", ".")] = v
    return {k.removeprefix(PREFIX): v for k, v in state.items()}


def test_fused_export_merged_in_hf_layout_gives_the_adapted_logits():
    """adapter_to_hf_gpt2 of adapters on wq, wv (ranks 2 and 3), wo, fc with biases and ln_f: the HF model
    with it merged, read back into minilora, gives the LoraModel's logits."""
    lm = trained(SEPARATE)
    base = {k: lm.params[k].copy() for k in lm.model.own_param_names()}   # the base; adapters own copies
    peft, tensors = fused_qkv.adapter_to_hf_gpt2(lm.config, SEPARATE, lora_modules(lm), lm.adapter_state(),
                                                 base_params=base)
    idx = np.random.default_rng(1).integers(0, lm.config.vocab_size, (2, 10))
    received, _ = GPT(lm.config, params_from_hf(merge_in_hf_layout(lm, peft, tensors), lm.config)).forward(idx)
    want, _ = lm.forward(idx)
    err = max_abs(received, want)
    shape = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape
    assert shape == (3 * lm.config.n_embd, 6), f"expected c_attn at rank 2 x max(2, 3) = 6, received {shape}"
    assert err < TOL, f"expected max |logits - LoraModel's| < {TOL}, received {err:.2e}"


def test_fused_export_has_the_keys_and_shapes_peft_writes():
    """Adapters on wq and fc export to exactly the tensor names and shapes of PEFT's own c_attn + c_fc file."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=("wq", "fc"))
    lm = trained(config)
    peft, tensors = fused_qkv.adapter_to_hf_gpt2(lm.config, config, lora_modules(lm), lm.adapter_state())
    raw, _ = io.load_tensors(ADAPTERS / "hf_c_attn" / "adapter_model.safetensors")
    theirs = json.loads((ADAPTERS / "hf_c_attn" / "adapter_config.json").read_text())
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in raw.items()}, sorted(tensors)
    for field in ("fan_in_fan_out", "task_type", "r", "lora_alpha", "bias", "use_dora"):
        assert peft[field] == theirs[field], f"{field}: expected PEFT's {theirs[field]!r}, received {peft[field]!r}"
    assert set(peft) <= set(theirs), f"expected only PEFT's fields, received {sorted(set(peft) - set(theirs))}"


def test_a_classification_head_is_refused_for_gpt2():
    """minilora's head (with a bias) has no exact place in GPT-2: refused, not dropped."""
    config = LoraConfig(target_modules=("wq",), modules_to_save=("head",))
    base = GPT(*read_hf_gpt2(HF_TINY, dtype=np.float64))
    base.add_classification_head(3)
    lm = LoraModel(base, config)
    with pytest.raises(ValueError, match="head"):
        fused_qkv.adapter_to_hf_gpt2(lm.config, config, lora_modules(lm), lm.adapter_state())


def test_scale_is_kept_by_alpha_prime_over_r_prime():
    """Two slices of rank 2 at alpha 4 (s = 2) become rank 4 at alpha 8: alpha'/r' = alpha/r."""
    lm = trained(LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "wv")))
    peft, _ = fused_qkv.adapter_to_hf_gpt2(lm.config, lm.adapters["default"], lora_modules(lm), lm.adapter_state())
    received = scale(peft["r"], peft["lora_alpha"], False)
    assert (peft["r"], peft["lora_alpha"], received) == (4, 8.0, 2.0), f"received {peft['r'], peft['lora_alpha']}"


# --------------------------------------------------------------------------- the real PEFT
@pytest.mark.reference
def test_peft_loads_the_fused_export_on_gpt2lmheadmodel_to_the_same_logits(tmp_path):
    """PeftModel.from_pretrained(GPT2LMHeadModel) on the export: no warning beyond those PEFT gives for its own
    file, logits within 1e-5 (float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft_lib = pytest.importorskip("peft")
    lm = trained(SEPARATE, dtype=np.float32)
    base = {k: lm.params[k].copy() for k in lm.model.own_param_names()}   # the base; adapters own copies
    fused_qkv.write_hf_gpt2_adapter(tmp_path, lm.config, SEPARATE, lora_modules(lm), lm.adapter_state(),
                                    base_params=base)
    # PEFT's own file on the same model sets the baseline: warnings the library versions give whatever
    # the file (e.g. a deprecation between peft and transformers) are not about the adapter.
    with captured_warnings("peft", "transformers") as baseline:
        own_base = transformers.GPT2LMHeadModel.from_pretrained(HF_TINY)
        peft_lib.PeftModel.from_pretrained(own_base, ADAPTERS / "hf_c_attn")
    hf = transformers.GPT2LMHeadModel.from_pretrained(HF_TINY).eval()
    with no_warnings_or_log_records("peft", "transformers", allowed=baseline):
        model = peft_lib.PeftModel.from_pretrained(hf, tmp_path).eval()
    idx = np.random.default_rng(1).integers(0, lm.config.vocab_size, (2, 10))
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).logits.numpy()
    ours, _ = lm.forward(idx)
    err = max_abs(ours, theirs)
    assert err < 1e-5, f"expected max |minilora - PEFT on GPT2LMHeadModel| < 1e-5, received {err:.2e}"


def test_a_lora_model_adapter_exported_for_gpt2_and_read_back_gives_the_same_logits(tmp_path):
    """write_lora_model_adapter then load_hf_gpt2_adapter on a fresh LoraModel: the logits of the original
    (the split of the fused adapter is exact: wk gets A' with a zero B block)."""
    lm = trained(SEPARATE)
    folder = fused_qkv.write_lora_model_adapter(lm, tmp_path / "gpt2_adapter")
    fresh = LoraModel(GPT(*read_hf_gpt2(HF_TINY, dtype=np.float64)))
    name = fused_qkv.load_hf_gpt2_adapter(fresh, folder, "back")
    idx = np.random.default_rng(2).integers(0, lm.config.vocab_size, (2, 10))
    err = max_abs(fresh.forward(idx)[0], lm.forward(idx)[0])
    assert fused_qkv.is_hf_gpt2_adapter(folder) and name == "back", "expected a fan_in_fan_out folder"
    assert err < 1e-12, f"expected the original logits, max error {err:.2e}"
