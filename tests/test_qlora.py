"""Spec: QLoRA, LoRA on a 4-bit base (Dettmers et al. 2023, eq. 5-6), through LoraModel.

Expected values: the 4-bit base's own outputs, central differences in float64 (minilora.nn.gradcheck)
with random non-zero B, and the float model that dequantize_base gives.
"""
import numpy as np
import pytest

from minilora import io
from minilora.adapters import qlinear
from minilora.adapters.bottleneck import AdapterConfig, AdapterModel
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import quantization_config, quantize_base
from minilora.adapters.qlinear import Held4bit
from minilora.adapters.quant_tensor import QuantizedTensor
from minilora.nn.loss import forward_loss, loss_and_grads
from minilora.nn.optim import AdamW

from helpers import TINY_LORA_BASE, check_model_gradients, lm_batch, randomize, tiny_float64_base

ALL = ["wq", "wk", "wv", "wo", "fc", "proj"]


def random_4bit_base(seed=0, double_quant=True):
    """A float64 base with O(1) random weights, quantized: no gradient small enough to pass on atol alone."""
    model = tiny_float64_base(seed)
    rng = np.random.default_rng(seed + 11)
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return quantize_base(model, "nf4", double_quant=double_quant)


def qlora(config=None, dtype=np.float64):
    return LoraModel(quantize_base(tiny_float64_base(dtype=dtype)), config or LoraConfig(r=2, target_modules=ALL))


# --------------------------------------------------------------------------- the model
def test_qlora_equals_the_4bit_base_at_init(rng):
    """§4.1 carries over: B = 0, so QLoRA's logits equal the 4-bit base's exactly."""
    base = quantize_base(tiny_float64_base())
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    after, _ = LoraModel(base, LoraConfig(r=4, target_modules=ALL)).forward(idx)
    assert np.array_equal(before, after), f"max |diff| {np.abs(before - after).max()}"


@pytest.mark.parametrize("double_quant", [False, True])
def test_qlora_backward_matches_numerical_gradient(rng, double_quant):
    """Through the whole 4-bit model, dA, dB and the trained biases agree with central differences (float64)."""
    lm = LoraModel(random_4bit_base(double_quant=double_quant),
                   LoraConfig(r=2, target_modules=["wq", "wv", "fc"], bias="lora_only"))
    randomize(lm, ".lora_B.", rng)
    check_model_gradients(lm, lm_batch(rng), max_entries=12, atol=0.0)


def test_only_A_and_B_train_and_no_gradient_exists_for_the_4bit_weights(rng):
    """QLoRA eq. 6: gradients for the adapters only; none is formed for any code, scale or float weight."""
    lm = qlora()
    _, grads = loss_and_grads(lm, lm_batch(rng))
    expected = {lm.param_name(f"{m}.{f}.weight") for m in TINY_LORA_BASE.linear_names() for f in ("lora_A", "lora_B")}
    assert set(grads) == lm.trainable == expected, f"unexpected gradients {sorted(set(grads) - expected)[:3]}"


def test_4bit_weights_are_bit_identical_after_training(rng):
    """Ten QLoRA steps move A and B and leave every code, scale and float base tensor exactly as it was."""
    lm = qlora(LoraConfig(r=2, target_modules=["wq", "wv", "fc"]))
    frozen = {k: lm.params[k].copy() for k in lm.model.own_param_names()}
    opt = AdamW(lr=1e-2)
    for _ in range(10):
        _, grads = loss_and_grads(lm, lm_batch(rng))
        opt.step(lm.params, grads)
    changed = [k for k, v in frozen.items() if not np.array_equal(lm.params[k], v)]
    assert not changed, f"frozen tensors changed: {changed[:3]}"
    assert np.abs(lm.params[lm.param_name("blocks.0.attn.wq.lora_B.weight")]).max() > 0, "B did not train"


def test_each_product_dequantizes_its_weight_once(rng, monkeypatch):
    """A training step dequantizes every 4-bit weight twice: once for x W^T, once for dy W. No more."""
    calls = []
    original = qlinear.dequantize_fast
    monkeypatch.setattr(qlinear, "dequantize_fast", lambda q, dtype=None: calls.append(q.shape) or original(q, dtype))
    lm = qlora(LoraConfig(r=2, target_modules=["wq", "wv"]))
    loss_and_grads(lm, lm_batch(rng))
    n = len(TINY_LORA_BASE.linear_names())
    assert len(calls) == 2 * n, f"expected {2 * n} dequantizations for {n} 4-bit layers, got {len(calls)}"


def test_caches_keep_4bit_weights_not_float_copies(rng):
    """Between forward and backward each 4-bit layer holds its codes: no float array of a weight's shape is cached."""
    lm = qlora(LoraConfig(r=2, target_modules=["wq", "wv"]))
    _, _, caches = forward_loss(lm, lm_batch(rng, B=3, T=5), training=True)   # N = 15 rows, no weight's size
    held, floats, stack = 0, [], [caches]
    shapes = {lm.model.weight_shape(n) for n in TINY_LORA_BASE.linear_names()}
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        held += isinstance(item, (Held4bit, QuantizedTensor))   # LoRA layers hold a Held4bit, plain ones the tensor
        if isinstance(item, np.ndarray) and item.dtype.kind == "f" and item.shape in shapes:
            floats.append(item.shape)
    assert held == len(TINY_LORA_BASE.linear_names()), f"expected 12 held 4-bit weights, found {held}"
    assert not floats, f"float copies of weights in the caches: {floats}"


# --------------------------------------------------------------------------- merging
def test_merge_and_unload_gives_a_float_model_with_the_trained_outputs(rng):
    """On a 4-bit base, merge_and_unload returns float32 W = dequant(W0) + s B A: the same logits."""
    lm = qlora(LoraConfig(r=2, target_modules=ALL), dtype=np.float32)
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 8))
    expected, _ = lm.forward(idx)
    plain = lm.merge_and_unload()
    assert not plain.weight_parts and plain.dtype == np.float32, "the merged model is not a float model"
    received, _ = plain.forward(idx)
    assert np.allclose(received, expected, atol=1e-5), f"max |diff| {np.abs(received - expected).max()}"


def test_a_requantized_merge_drifts_from_the_trained_model(rng):
    """merge_and_unload(requantize=True) is 4-bit again, and its logits move away from the trained model's."""
    lm = qlora(LoraConfig(r=2, target_modules=ALL), dtype=np.float32)
    randomize(lm, ".lora_B.", rng, scale=0.05)
    idx = rng.integers(0, 13, (2, 8))
    trained, _ = lm.forward(idx)
    float_drift = np.abs(lm.merge_and_unload().forward(idx)[0] - trained).max()
    requantized = lm.merge_and_unload(requantize=True)
    assert quantization_config(requantized)["quant_type"] == "nf4", "the re-quantized model is not 4-bit"
    drift = np.abs(requantized.forward(idx)[0] - trained).max()
    assert drift > 100 * float_drift, f"re-quantized drift {drift:.2e} vs float merge {float_drift:.2e}"


def test_merging_in_place_is_refused_on_a_4bit_base():
    """merge_adapter on a 4-bit base says why and names merge_and_unload()."""
    with pytest.raises(ValueError, match="merge_and_unload"):
        qlora().merge_adapter()


def test_training_a_copy_of_a_4bit_layer_is_refused():
    """modules_to_save=("wq",) on a 4-bit base would train 4-bit codes: a ValueError says to use LoRA there."""
    with pytest.raises(ValueError, match="copy of a 4-bit weight"):
        LoraModel(quantize_base(tiny_float64_base()), LoraConfig(r=2, modules_to_save=("wq",)))


# --------------------------------------------------------------------------- files and reports
def test_a_qlora_adapter_loads_onto_the_same_4bit_base_and_not_onto_the_float_one(rng, tmp_path):
    """The file records the 4-bit base's fingerprint: it loads there exactly and is refused on the float base."""
    lm = qlora(LoraConfig(r=2, target_modules=["wq", "wv"]))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 6))
    expected, _ = lm.forward(idx)
    lm.save_adapter(tmp_path)
    again = LoraModel(quantize_base(tiny_float64_base()))
    again.load_adapter(tmp_path)
    assert np.array_equal(again.forward(idx)[0], expected), "the reloaded QLoRA model differs"
    with pytest.raises(io.CheckpointError, match="different base model"):
        LoraModel(tiny_float64_base()).load_adapter(tmp_path)


def test_trainable_report_counts_the_4bit_base_by_its_weights():
    """print_trainable_parameters' total is the float model's count plus the adapter, as for LoRA."""
    config = LoraConfig(r=2, target_modules=ALL)
    expected = LoraModel(tiny_float64_base(), config).trainable_report()
    received = qlora(config).trainable_report()
    assert received == expected, f"expected {expected}, got {received}"


def test_bottleneck_adapters_on_a_4bit_base_match_numerical_gradients(rng):
    """The bottleneck kind reads its W0 the same way: equal to the 4-bit base at init, gradients exact (float64)."""
    base = quantize_base(tiny_float64_base())
    idx = rng.integers(0, 13, (2, 6))
    expected, _ = base.forward(idx)
    model = AdapterModel(base, AdapterConfig(variant="houlsby", bottleneck=3))
    assert np.array_equal(model.forward(idx)[0], expected), "the adapted 4-bit model differs from its base at init"
    randomize(model, ".adapter_up.", rng)
    check_model_gradients(model, lm_batch(rng), max_entries=10)
