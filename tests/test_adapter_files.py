"""Spec of minilora.adapters.files: every LoRA adapter minilora saves is a PEFT adapter folder, and
load_adapter reads PEFT's folders, minilora's, and minilora's earlier format.

PEFT-written folders are the committed fixtures (tests/fixtures/peft_adapters, made by PEFT itself);
their float64 logits differ from PEFT's only by the fixture's rounding to float32 (~1e-8), so 1e-6
catches any lost tensor or wrong scale (an adapter's effect on these logits is O(0.1)). The
``reference`` tests load minilora's folders with the real PEFT.
"""
import json

import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.adapters.files import head_classes, read_adapter
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.peft_format import PREFIX, state_from_peft, state_to_peft
from minilora.interop.hf_gpt2 import read_hf_gpt2
from minilora.nn.model import GPT

from interop_fixtures import (ADAPTERS, CASES_LM, HF_TINY, expected, max_abs, no_warnings_or_log_records,
                              torch_mirror)

TOL = 1e-6


def fixture_base(dtype=np.float64, head=None) -> GPT:
    """The GPT every fixture adapter was made on (tests/fixtures/hf_gpt2_tiny), optionally with a head."""
    model = GPT(*read_hf_gpt2(HF_TINY, dtype=dtype))
    if head:
        model.add_classification_head(head)
    return model


def trained(config, *, dtype=np.float64, head=None, seed=0) -> LoraModel:
    """A LoraModel on the fixture base with random non-zero B, biases and saved copies (as after training)."""
    lm = LoraModel(fixture_base(dtype, head), config)
    rng = np.random.default_rng(seed)
    for key, value in lm.adapter_state().items():
        if ".lora_A." not in key:
            value += (0.2 * rng.standard_normal(value.shape)).astype(value.dtype)
    return lm


RICH = LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "wv", "fc"), rank_pattern={"wv": 3},
                  alpha_pattern={"blocks.1.mlp.fc": 10}, layers_to_transform=(1,), bias="all",
                  modules_to_save=("ln_f",), init_lora_weights="gaussian", init_std=0.05, seed=3)


# --------------------------------------------------------------------------- PEFT's folders in
@pytest.mark.parametrize("name", CASES_LM + ("modules_to_save_head",))
def test_peft_written_folder_loads_onto_the_base_to_peft_logits(name):
    """load_adapter on a folder PEFT saved for minilora's module names gives PEFT's own logits."""
    folder = ADAPTERS / name
    lm = LoraModel(fixture_base(head=head_classes(folder)))
    lm.load_adapter(folder)
    ref = expected(folder)
    logits, _ = lm.classify(ref["tokens"], ref["last"]) if "last" in ref else lm.forward(ref["tokens"])
    with lm.disable_adapter():
        base, _ = lm.classify(ref["tokens"], ref["last"]) if "last" in ref else lm.forward(ref["tokens"])
    err, effect = max_abs(logits, ref["logits"]), max_abs(base, ref["logits"])
    assert effect > 0.05, f"expected the adapter to change the logits (> 0.05), received {effect:.2e}"
    assert err < TOL, f"expected max |logits - PEFT's| < {TOL}, received {err:.2e} (adapter effect {effect:.2f})"


def test_bias_all_trains_every_bias_as_peft_does():
    """bias='all' trains the adapter's own copy of every bias, LayerNorm's too: the tensors PEFT saves."""
    raw, _ = io.load_tensors(ADAPTERS / "bias_all" / "adapter_model.safetensors")
    lm = LoraModel(fixture_base(), LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "fc"), bias="all"))
    ours, peft = sorted(lm.adapter_state()), sorted(state_from_peft(raw))
    assert ours == peft, f"expected PEFT's tensors {peft}, received {ours}"
    assert lm.param_name("blocks.0.ln1.bias") in lm.trainable, "expected the LayerNorm bias copy to train"


# --------------------------------------------------------------------------- minilora's folders out and back
def test_saved_folder_is_a_peft_folder_with_minilora_facts_in_the_header(tmp_path):
    """Every key carries PEFT's prefix, the config holds only PEFT's fields, the facts ride in the header."""
    lm = trained(RICH)
    lm.save_adapter(tmp_path)
    raw, meta = io.load_tensors(tmp_path / "adapter_model.safetensors")
    ours = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_fields = set(json.loads((ADAPTERS / "lora_wq_wv" / "adapter_config.json").read_text()))
    facts = json.loads(meta["minilora"])
    assert all(k.startswith(PREFIX) for k in raw), f"expected every key prefixed, received {sorted(raw)[:3]}"
    assert set(ours) <= peft_fields, f"expected only PEFT's fields, received extra {sorted(set(ours) - peft_fields)}"
    assert facts["base_model_fingerprint"] == lm.base_fingerprint and facts["adapter_name"] == "default", facts
    assert (ours["layers_pattern"], ours["init_lora_weights"]) == ("blocks", True), ours


def test_round_trip_gives_the_same_logits_and_config(tmp_path, rng):
    """save_adapter then load_adapter on a fresh base: the same logits bit for bit and the same config."""
    lm = trained(RICH)
    idx = rng.integers(0, lm.config.vocab_size, (2, 10))
    want, _ = lm.forward(idx)
    lm.save_adapter(tmp_path / "ad")
    fresh = LoraModel(fixture_base())
    name = fresh.load_adapter(tmp_path / "ad")
    got, _ = fresh.forward(idx)
    config = fresh.adapters[name]
    assert np.array_equal(got, want), f"expected identical logits, max error {max_abs(got, want):.2e}"
    assert (name, config.init_lora_weights, config.init_std, config.seed) == ("default", "gaussian", 0.05, 3), config
    assert resolve_targets(fresh.model, config) == resolve_targets(lm.model, RICH), "expected the same ranks and scales"


def test_a_peft_folder_minilora_cannot_compute_is_refused_and_leaves_nothing(tmp_path):
    """A PEFT field minilora cannot compute (here lora_bias) is a CheckpointError; no adapter is added."""
    config = json.loads((ADAPTERS / "lora_wq_wv" / "adapter_config.json").read_text())
    io.write_json(tmp_path / "adapter_config.json", {**config, "lora_bias": True})
    raw, _ = io.load_tensors(ADAPTERS / "lora_wq_wv" / "adapter_model.safetensors")
    io.save_tensors(tmp_path / "adapter_model.safetensors", raw)
    lm = LoraModel(fixture_base())
    with pytest.raises(io.CheckpointError, match="lora_bias"):
        lm.load_adapter(tmp_path)
    assert not lm.adapters, f"expected no adapter left behind, received {list(lm.adapters)}"


def test_head_classes_reads_the_saved_head(tmp_path):
    """head_classes gives K of a saved classification head (3 in PEFT's fixture), None without one."""
    got = (head_classes(ADAPTERS / "modules_to_save_head"), head_classes(ADAPTERS / "lora_wq_wv"))
    assert got == (3, None), f"expected (3, None), received {got}"


def test_dora_adapter_round_trips_with_its_magnitude_under_peft_name(tmp_path, rng):
    """DoRA's m is saved as <module>.lora_magnitude_vector (d_out,) and comes back exactly."""
    if "use_dora" not in LoraConfig.__dataclass_fields__:
        pytest.skip("pending: LoraConfig.use_dora (the DoRA linear kind) is not in this minilora yet")
    lm = trained(LoraConfig(r=2, target_modules=("wq", "wv"), use_dora=True))
    idx = rng.integers(0, lm.config.vocab_size, (2, 10))
    want, _ = lm.forward(idx)
    lm.save_adapter(tmp_path)
    raw, _ = io.load_tensors(tmp_path / "adapter_model.safetensors")
    fresh = LoraModel(fixture_base())
    fresh.load_adapter(tmp_path)
    got, _ = fresh.forward(idx)
    key = PREFIX + "blocks.0.attn.wq.lora_magnitude_vector"
    assert key in raw and raw[key].shape == (lm.config.n_embd,), f"expected {key} of shape (C,) in {sorted(raw)}"
    assert np.array_equal(got, want), f"expected identical logits, max error {max_abs(got, want):.2e}"


# --------------------------------------------------------------------------- the real PEFT
@pytest.mark.reference
def test_peft_loads_a_saved_adapter_without_warning_and_saves_it_back_readable(tmp_path):
    """LoraModel.save_adapter -> PeftModel.from_pretrained (no warning, same logits) -> save_pretrained ->
    load_adapter: the same tensors come back."""
    torch_gpt = torch_mirror()
    torch, peft = pytest.importorskip("torch"), pytest.importorskip("peft")
    lm = trained(RICH, dtype=np.float32)
    lm.save_adapter(tmp_path / "ours")
    with lm.disable_adapter():
        base = {k: lm.params[k].copy() for k in lm.model.own_param_names()}
    with no_warnings_or_log_records("peft", "transformers"):
        model = peft.PeftModel.from_pretrained(torch_gpt.from_minilora_params(lm.config, base), tmp_path / "ours")
    idx = np.random.default_rng(0).integers(0, lm.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = model.eval()(torch.from_numpy(idx)).numpy()
    err = max_abs(lm.forward(idx)[0], theirs)
    assert err < 1e-5, f"expected max |minilora - PEFT| < 1e-5 (float32), received {err:.2e}"
    model.save_pretrained(tmp_path / "theirs")
    fresh = LoraModel(fixture_base(np.float32))
    fresh.load_adapter(tmp_path / "theirs")
    back = fresh.adapter_state()
    diffs = {k: max_abs(back[k], v) for k, v in lm.adapter_state().items()}
    assert sorted(back) == sorted(lm.adapter_state()) and max(diffs.values()) == 0.0, diffs


def test_an_adapter_a_peft_folder_cannot_hold_is_saved_in_minilora_format_and_loads_back(tmp_path, rng):
    """LoRA on wq plus a trained copy of wq itself (modules_to_save): PEFT would never load the copy, so the
    folder is minilora's own format ("format": "minilora.adapter"), and it round-trips exactly."""
    lm = trained(LoraConfig(r=2, target_modules=("wq", "wv"), modules_to_save=("wq",)))
    idx = rng.integers(0, lm.config.vocab_size, (2, 10))
    want, _ = lm.forward(idx)
    lm.save_adapter(tmp_path)
    fresh = LoraModel(fixture_base())
    fresh.load_adapter(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["format"] == "minilora.adapter", f"expected minilora's own format, received {meta.get('format')}"
    assert np.array_equal(fresh.forward(idx)[0], want), "expected identical logits"
