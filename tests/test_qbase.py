"""Spec: QLoRA's frozen base, the block linears of a GPT stored in 4 bits (minilora.adapters.qbase).

Expected values: each weight quantized on its own with ``QuantizedTensor.quantize`` (the tested
part-1 code), the float GPT running those dequantized weights, and QLoRA §3's storage count.
"""
import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import dequantize_base, quantization_config, quantize_base, quantized_weights
from minilora.adapters.quant_dq import storage_bits
from minilora.adapters.quant_tensor import QuantizedTensor
from minilora.nn.model import GPT, GPTConfig

from helpers import TINY_LORA_BASE, tiny_float64_base


def quantized_tiny(double_quant=True, dtype=np.float32):
    return quantize_base(tiny_float64_base(dtype=dtype), "nf4", double_quant=double_quant)


def test_every_block_linear_weight_is_replaced_by_its_4bit_parts():
    """No float weight of a block linear is left; its codes and scales are params, its spec the kind "qlinear"."""
    model = quantized_tiny()
    for name in TINY_LORA_BASE.linear_names():
        assert f"{name}.weight" not in model.params, f"{name}.weight is still stored in float"
        parts = model.weight_parts[f"{name}.weight"]
        assert parts == [f"{name}.weight.{p}" for p in ("codes", "absmax", "nested_absmax", "nested_offset")], parts
        assert model.params[parts[0]].dtype == np.uint8 and model.params[parts[1]].dtype == np.uint8, \
            f"codes and 8-bit scales should be uint8, got {[model.params[p].dtype.name for p in parts[:2]]}"
        spec = model.linears[name]
        assert spec.kind == "qlinear" and spec.tensors["bias"] == f"{name}.bias", f"got {spec}"
        assert spec.options["shape"] == model.weight_shape(name), f"got {spec.options}"


def test_embeddings_layer_norms_and_biases_stay_float():
    """wte (also the tied LM head), wpe, the layer norms and every bias keep their float32 values."""
    base = tiny_float64_base(dtype=np.float32)
    before = {k: v.copy() for k, v in base.params.items() if not k.endswith(".weight") or "ln" in k or "wte" in k
              or "wpe" in k}
    model = quantize_base(base)
    for k, v in before.items():
        assert model.params[k].dtype == np.float32 and np.array_equal(model.params[k], v), f"{k} changed"
    assert model.linears["lm_head"].kind == "linear", f"the LM head became {model.linears['lm_head'].kind}"


@pytest.mark.parametrize("double_quant", [False, True])
def test_the_4bit_model_computes_with_the_dequantized_weights(rng, double_quant):
    """Its logits equal a float GPT whose block weights are each quantized and dequantized on their own."""
    base = tiny_float64_base(dtype=np.float32)
    params = {k: v.copy() for k, v in base.params.items()}
    for name in TINY_LORA_BASE.linear_names():
        w = params[f"{name}.weight"]
        params[f"{name}.weight"] = QuantizedTensor.quantize(w, "nf4", 64, double_quant).dequantize()
    expected, _ = GPT(TINY_LORA_BASE, params).forward(idx := rng.integers(0, 13, (2, 7)))
    received, _ = quantize_base(base, double_quant=double_quant).forward(idx)
    assert np.array_equal(received, expected), f"max |diff| {np.abs(received - expected).max()}"


def test_dequantize_base_gives_a_float_model_with_the_same_outputs(rng):
    """dequantize_base returns a plain float32 GPT (no 4-bit parts) computing exactly what the 4-bit one does."""
    model = quantized_tiny()
    idx = rng.integers(0, 13, (2, 7))
    plain = dequantize_base(model)
    assert not plain.weight_parts and all(s.kind == "linear" for s in plain.linears.values()), "not a float model"
    assert np.array_equal(plain.forward(idx)[0], model.forward(idx)[0]), "outputs differ"


def test_no_part_of_a_4bit_weight_is_trainable():
    """quantize_base on a fully trainable GPT leaves the codes and scales out of the trainable set."""
    base = tiny_float64_base()
    base.unfreeze()
    model = quantize_base(base)
    parts = {p for ps in model.weight_parts.values() for p in ps}
    assert not parts & model.trainable, f"trainable 4-bit parts: {sorted(parts & model.trainable)[:3]}"


def test_parameter_counts_count_weights_not_bytes():
    """num_params of the 4-bit model equals the float model's: a weight is a weight, whatever its storage."""
    expected = tiny_float64_base().num_params()
    received = quantized_tiny().num_params()
    assert received == expected, f"expected {expected}, got {received}"


@pytest.mark.parametrize("double_quant, bits", [(False, 4.5), (True, 4.127)])
def test_block_linear_storage_follows_the_qlora_count(double_quant, bits):
    """Each 4-bit weight takes storage_bits(n) / 8 bytes: about 32 / 4.127 = 7.75x less than float32 (QLoRA §3)."""
    config = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=4, n_embd=128)
    model = quantize_base(GPT(config, seed=0), double_quant=double_quant)
    for name, parts in model.weight_parts.items():
        n = int(np.prod(model.weight_shape(name[:-len(".weight")])))
        stored = sum(model.params[p].nbytes for p in parts)
        assert stored * 8 == storage_bits(n, 64, double_quant), f"{name}: {stored} bytes for {n} weights"
        assert 32 / (8 * stored / n) == pytest.approx(32 / bits, rel=0.01), f"{name}: ratio {4 * n / stored:.2f}"


def test_quantization_config_records_the_settings_and_modules():
    """quantization_config gives quant type, double quantization, block size and every quantized linear."""
    model = quantize_base(tiny_float64_base(), "fp4", double_quant=False, block_size=32)
    config = quantization_config(model)
    assert config == {"quant_type": "fp4", "double_quant": False, "block_size": 32,
                      "modules": sorted(TINY_LORA_BASE.linear_names())}, f"got {config}"
    assert quantization_config(tiny_float64_base()) is None, "a float model reported a quantization"


def test_quantized_weights_are_views_of_the_params():
    """quantized_weights reads the 4-bit tensors in place (no copy): its codes are the params' arrays."""
    model = quantized_tiny()
    qw = quantized_weights(model)["blocks.0.attn.wq"]
    assert qw.packed is model.params["blocks.0.attn.wq.weight.codes"], "the codes were copied"


def test_quantizing_twice_is_refused():
    """A 4-bit model quantized again would round twice: a ValueError says it is quantized already."""
    with pytest.raises(ValueError, match="quantized already"):
        quantize_base(quantized_tiny())


def test_quantizing_a_model_with_adapters_is_refused():
    """The base is quantized first, adapters added after: a LoraModel or an adapted GPT is refused."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    with pytest.raises(TypeError, match="quantize the base first"):
        quantize_base(lm)
    with pytest.raises(ValueError, match="not plain linear layers"):
        quantize_base(lm.model)


@pytest.mark.parametrize("kwargs, message", [({"quant_type": "nf3"}, "unknown quant_type"),
                                             ({"block_size": 48}, "power of two"),
                                             ({"double_quant": "yes"}, "True or False")])
def test_bad_settings_are_refused_before_anything_changes(kwargs, message):
    """An unknown type, a block size that is not a power of two or a non-bool double_quant: ValueError, model intact."""
    model = tiny_float64_base()
    with pytest.raises(ValueError, match=message):
        quantize_base(model, **kwargs)
    assert not model.weight_parts and "blocks.0.attn.wq.weight" in model.params, "the model was changed"
