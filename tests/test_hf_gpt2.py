"""Spec of minilora.interop.hf_gpt2: Hugging Face GPT-2 folders in and out.

Checked without PyTorch against tests/fixtures/hf_gpt2_tiny (saved by transformers, with its own
logits); the ``reference`` tests load minilora's export with the real transformers.
Float32 logits of this tiny model are about 0.3 in size; two float32 forwards in a different order
agree to ~1e-7, so 1e-5 catches any wrong weight (a swapped q/k or an untransposed Conv1D is O(0.1)).
"""
import json
import shutil

import numpy as np
import pytest

from minilora import io
from minilora.interop.hf_gpt2 import config_from_hf, config_to_hf, read_hf_gpt2, write_hf_gpt2
from minilora.nn.model import GPT, GPTConfig

from interop_fixtures import HF_TINY, HF_TINY_ORIGINAL, expected, max_abs, no_warnings_or_log_records

TOL32 = 1e-5


def fixture_model(dtype=np.float32, folder=HF_TINY) -> GPT:
    config, params = read_hf_gpt2(folder, dtype=dtype)
    return GPT(config, params)


def random_model(seed=0) -> GPT:
    """A float32 minilora GPT with non-trivial biases and LayerNorm parameters."""
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=24), seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        if p.ndim == 1:
            p += np.float32(0.1) * rng.standard_normal(p.shape).astype(np.float32)
    return model


# --------------------------------------------------------------------------- import
def test_imported_gpt2_gives_transformers_logits_in_float32():
    """A minilora GPT built from transformers' folder reproduces its logits to 1e-5 in float32."""
    ref = expected(HF_TINY)
    logits, _ = fixture_model().forward(ref["tokens"])
    err = max_abs(logits, ref["logits"])
    assert err < TOL32, f"expected max |logits - transformers'| < {TOL32}, received {err:.2e}"


def test_imported_gpt2_gives_transformers_logits_in_float64():
    """In float64 the gap is only the fixture's rounding to float32 (< 1e-7)."""
    ref = expected(HF_TINY)
    logits, _ = fixture_model(np.float64).forward(ref["tokens"])
    err = max_abs(logits, ref["logits"])
    assert err < 1e-7, f"expected max |logits - transformers'| < 1e-7, received {err:.2e}"


def test_original_checkpoint_layout_imports_to_the_same_weights():
    """Keys without 'transformer.' and with attn.bias / attn.masked_bias buffers give identical params."""
    config_a, a = read_hf_gpt2(HF_TINY)
    config_b, b = read_hf_gpt2(HF_TINY_ORIGINAL)
    assert config_a == config_b, f"expected the same config, received {config_a} and {config_b}"
    assert set(a) == set(b), f"names differ: {sorted(set(a) ^ set(b))}"
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"expected bit-identical params from both layouts, these differ: {differ}"


def test_config_maps_every_gpt2_size_field():
    """n_positions -> block_size, n_embd, n_layer, n_head, vocab_size and layer_norm_epsilon carry over."""
    hf = json.loads((HF_TINY / "config.json").read_text())
    received = config_from_hf(hf)
    want = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], ln_eps=hf["layer_norm_epsilon"])
    assert received == want, f"expected {want}, received {received}"


@pytest.mark.parametrize("field, value", [
    ("activation_function", "gelu"), ("activation_function", "relu"), ("n_inner", 100),
    ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
    ("scale_attn_weights", False), ("tie_word_embeddings", False), ("add_cross_attention", True),
    ("model_type", "gpt_neo")])
def test_unrepresentable_config_is_refused_naming_the_field(field, value):
    """A config minilora would compute differently is refused, and the message names the field."""
    hf = json.loads((HF_TINY / "config.json").read_text())
    hf[field] = value
    with pytest.raises(ValueError) as err:
        config_from_hf(hf)
    assert field in str(err.value) and repr(value) in str(err.value), \
        f"expected the message to name {field} = {value!r}, received: {err.value}"


def test_gelu_pytorch_tanh_and_explicit_4c_n_inner_are_accepted():
    """Two spellings of what minilora computes are not refused: the tanh GELU and n_inner = 4 C."""
    hf = json.loads((HF_TINY / "config.json").read_text())
    hf.update(activation_function="gelu_pytorch_tanh", n_inner=4 * hf["n_embd"])
    assert config_from_hf(hf).n_embd == hf["n_embd"], "expected the config to be accepted"


def test_untied_lm_head_is_refused(tmp_path):
    """An lm_head.weight that differs from wte cannot be tied, so the import refuses it."""
    shutil.copy(HF_TINY / "config.json", tmp_path / "config.json")
    state, meta = io.load_tensors(HF_TINY / "model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1.0
    io.save_tensors(tmp_path / "model.safetensors", state, meta)
    with pytest.raises(io.CheckpointError, match="lm_head.weight"):
        read_hf_gpt2(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    """A missing tensor is named in the error."""
    shutil.copy(HF_TINY / "config.json", tmp_path / "config.json")
    state, meta = io.load_tensors(HF_TINY / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.bias"]
    io.save_tensors(tmp_path / "model.safetensors", state, meta)
    with pytest.raises(io.CheckpointError, match=r"h\.1\.mlp\.c_fc\.bias"):
        read_hf_gpt2(tmp_path)


def test_a_folder_with_only_pickle_weights_is_refused_with_the_fix(tmp_path):
    """pytorch_model.bin is never unpickled; the error says how to get model.safetensors."""
    shutil.copy(HF_TINY / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*save_pretrained"):
        read_hf_gpt2(tmp_path)


# --------------------------------------------------------------------------- export
def test_export_of_the_imported_model_reproduces_transformers_file_bit_for_bit(tmp_path):
    """Import then export gives exactly the tensors transformers saved, under the same names."""
    config, params = read_hf_gpt2(HF_TINY)
    write_hf_gpt2(config, params, tmp_path)
    ours, meta = io.load_tensors(tmp_path / "model.safetensors")
    theirs, _ = io.load_tensors(HF_TINY / "model.safetensors")
    assert set(ours) == set(theirs), f"names differ: {sorted(set(ours) ^ set(theirs))}"
    differ = [k for k in ours if ours[k].dtype != theirs[k].dtype or not np.array_equal(ours[k], theirs[k])]
    assert not differ, f"expected bit-identical tensors, these differ: {differ}"
    assert meta == {"format": "pt"}, f"expected transformers' metadata {{'format': 'pt'}}, received {meta}"


def test_exported_config_has_every_field_transformers_writes():
    """Every config.json field transformers wrote is present, with the same value for the architecture."""
    theirs = json.loads((HF_TINY / "config.json").read_text())
    ours = config_to_hf(config_from_hf(theirs))
    missing = sorted(set(theirs) - set(ours) - {"transformers_version"})
    assert not missing, f"expected every transformers field, missing {missing}"
    same = [k for k in theirs if k not in ("transformers_version",) and not k.endswith("pdrop")]
    differ = {k: (theirs[k], ours[k]) for k in same if theirs[k] != ours[k]}
    assert not differ, f"expected the same values (dropouts aside), received (theirs, ours) {differ}"


def test_export_then_import_round_trips_exactly(tmp_path):
    """write_hf_gpt2 then read_hf_gpt2 returns the same config and bit-identical params."""
    model = random_model()
    write_hf_gpt2(model.config, model.params, tmp_path)
    config, params = read_hf_gpt2(tmp_path)
    assert config == model.config, f"expected {model.config}, received {config}"
    differ = [k for k in model.params if not np.array_equal(params[k], model.params[k])]
    assert not differ and set(params) == set(model.params), f"round trip changed {differ}"


def test_classification_head_is_refused_with_the_reason(tmp_path):
    """minilora's head has a bias that GPT-2's score layer lacks: the export refuses instead of dropping it."""
    model = random_model()
    model.add_classification_head(3)
    with pytest.raises(ValueError, match="head.*bias"):
        write_hf_gpt2(model.config, model.params, tmp_path)
    assert not (tmp_path / "model.safetensors").exists(), "expected nothing written"


def test_eos_is_unset_for_small_vocabularies_and_gpt2s_for_50257():
    """GPT-2's eos 50256 is only written where it is a valid id; an invalid eos is refused."""
    small, full = GPTConfig(vocab_size=64), GPTConfig(vocab_size=50257)
    assert config_to_hf(small)["eos_token_id"] is None, "expected no eos for a 64-token vocabulary"
    assert config_to_hf(full)["eos_token_id"] == 50256, "expected GPT-2's eos for its own vocabulary"
    assert config_to_hf(small, eos_token_id=5)["bos_token_id"] == 5, "expected the given id for bos and eos"
    with pytest.raises(ValueError, match="eos_token_id = 64"):
        config_to_hf(small, eos_token_id=64)


# --------------------------------------------------------------------------- the real library
@pytest.mark.reference
def test_transformers_loads_the_export_to_the_same_logits_without_warnings(tmp_path):
    """GPT2LMHeadModel.from_pretrained on minilora's export: no warning, logits within 1e-5 (float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = random_model()
    write_hf_gpt2(model.config, model.params, tmp_path)
    with no_warnings_or_log_records("transformers"):
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx)).logits.numpy()
    ours, _ = model.forward(idx)
    err = max_abs(ours, theirs)
    assert err < TOL32, f"expected max |minilora - transformers| < {TOL32}, received {err:.2e}"
