"""Spec: a 4-bit base model saved and loaded (minilora.adapters.qfiles): safetensors, codes and constants.

Expected values: the model before saving, bitsandbytes' state-dict names (QuantizedTensor.to_tensors),
and the refusals a mismatched folder must meet.
"""
import json

import numpy as np
import pytest

from minilora import io
from minilora.adapters.qbase import quantization_config, quantize_base
from minilora.adapters.qfiles import load_quantized, save_quantized
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT, GPTConfig

from helpers import TINY_LORA_BASE, tiny_float64_base


def saved(tmp_path, quant_type="nf4", double_quant=True, head=False):
    model = quantize_base(tiny_float64_base(dtype=np.float32), quant_type, double_quant=double_quant)
    if head:
        model.add_classification_head(3)
    save_quantized(model, tmp_path, extra={"note": "x"})
    return model


@pytest.mark.parametrize("quant_type, double_quant", [("nf4", True), ("nf4", False), ("fp4", True)])
def test_a_saved_4bit_model_loads_back_identical(tmp_path, rng, quant_type, double_quant):
    """Loading gives the same tensors bit for bit, the same quantization and the same logits; extra comes back."""
    model = saved(tmp_path, quant_type, double_quant, head=True)
    loaded, extra = load_quantized(tmp_path)
    assert extra == {"note": "x"}, f"extra came back as {extra}"
    assert quantization_config(loaded) == quantization_config(model), "the quantization changed"
    assert set(loaded.params) == set(model.params), f"names differ: {sorted(set(loaded.params) ^ set(model.params))}"
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype and np.array_equal(loaded.params[k], v), f"{k} changed"
    idx = rng.integers(0, 13, (2, 6))
    assert np.array_equal(loaded.forward(idx)[0], model.forward(idx)[0]), "logits differ"
    assert np.array_equal(loaded.classify(idx, np.array([5, 3]))[0], model.classify(idx, np.array([5, 3]))[0])


def test_the_file_uses_bitsandbytes_state_dict_names_and_no_float_block_weight(tmp_path):
    """Each 4-bit weight is stored as bitsandbytes names it (packed codes under the weight's own name)."""
    saved(tmp_path)
    tensors, _ = io.load_tensors(tmp_path / "model.safetensors")
    w = "blocks.0.attn.wq.weight"
    expected = {w, f"{w}.absmax", f"{w}.quant_map", f"{w}.nested_absmax", f"{w}.nested_quant_map",
                f"{w}.quant_state.bitsandbytes__nf4"}
    assert {k for k in tensors if k.startswith(w)} == expected, f"got {sorted(k for k in tensors if k.startswith(w))}"
    assert tensors[w].dtype == np.uint8 and tensors[w].shape == (16 * 16 // 2, 1), f"got {tensors[w].shape}"
    assert tensors["wte.weight"].dtype == np.float32, "the embedding should stay float32"


def test_the_block_weights_take_about_7_times_fewer_bytes_on_disk(tmp_path):
    """On a C = 128 model the file's block-weight bytes (codes, scales, tables, state) are < 1/7 of float32's."""
    config = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=4, n_embd=128)
    save_quantized(quantize_base(GPT(config, seed=0)), tmp_path)
    tensors, _ = io.load_tensors(tmp_path / "model.safetensors")
    n = 12 * 128 * 128                                          # the weights of one block's six linears
    stored = sum(v.nbytes for k, v in tensors.items() if ".weight" in k and k.startswith("blocks.")
                 and not k.endswith(("ln1.weight", "ln2.weight")))
    assert 4 * n / stored > 7.0, f"float32 {4 * n} B vs 4-bit {stored} B: ratio {4 * n / stored:.2f}"


def _edit_config(tmp_path, change):
    meta = json.loads((tmp_path / "config.json").read_text())
    change(meta)
    (tmp_path / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["quantization"].update(quant_type="fp4"), "config vs file"),
    (lambda m: m["quantization"].update(double_quant=False), "config vs file"),
    (lambda m: m["quantization"].update(block_size=128), "config vs file"),
    (lambda m: m["config"].update(n_embd=32, n_head=2), "config vs file"),
    (lambda m: m["quantization"]["modules"].append("blocks.9.attn.wq"), "no such layer"),
    (lambda m: m.update(fingerprint="0" * 16), "fingerprint differs"),
    (lambda m: m["extra"].update(note="edited"), "fingerprint differs"),
    (lambda m: m["quantization"].pop("modules"), "must hold exactly"),
    (lambda m: m.update(version=1), "not a version 2"),
])
def test_a_config_that_does_not_match_the_tensors_is_refused(tmp_path, change, message):
    """Another quant type, double quantization, block size, width, module, extra or save: a CheckpointError naming it."""
    saved(tmp_path)
    _edit_config(tmp_path, change)
    with pytest.raises(io.CheckpointError, match=message):
        load_quantized(tmp_path)


def test_a_module_left_out_of_the_config_is_refused(tmp_path):
    """A 4-bit weight the config does not list leaves the float weight missing: refused, naming the tensors."""
    saved(tmp_path)
    _edit_config(tmp_path, lambda m: m["quantization"]["modules"].remove("blocks.0.attn.wq"))
    with pytest.raises(io.CheckpointError, match="do not match"):
        load_quantized(tmp_path)


def test_plain_load_model_refuses_a_4bit_folder_and_save_model_a_4bit_model(tmp_path):
    """The float checkpoint functions point to save_quantized / load_quantized instead of misreading codes."""
    model = saved(tmp_path)
    with pytest.raises(io.CheckpointError, match="load_quantized"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="save_quantized"):
        save_model(model, tmp_path / "other")


def test_load_quantized_refuses_a_float_folder(tmp_path):
    """A float checkpoint has no quantization to load: refused with the way to make one."""
    save_model(GPT(TINY_LORA_BASE, seed=0), tmp_path)
    with pytest.raises(io.CheckpointError, match="float model"):
        load_quantized(tmp_path)
