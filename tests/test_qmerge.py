"""Spec: merging an update into a 4-bit weight (minilora.adapters.qmerge): dequantize -> add -> re-quantize.

Expected values: the definition (QuantizedTensor.quantize of dequant(W0) + delta), and the two limits:
an update much smaller than a quantization level is lost, one much larger is kept.
"""
import numpy as np
import pytest

from minilora.adapters.qmerge import merge_into_4bit, update_survival, update_survival_by_module
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import quantize_base
from minilora.adapters.quant_tensor import QuantizedTensor, quantize

from helpers import randomize, tiny_float64_base


def weight_and_update(size, seed=0, shape=(64, 128)):
    """A N(0, 0.02^2) 4-bit weight and a random low-rank update with ||delta|| = size * ||W||."""
    rng = np.random.default_rng(seed)
    qw = quantize((rng.standard_normal(shape) * 0.02).astype(np.float32), "nf4", 64, True)
    delta = rng.standard_normal((shape[0], 4)) @ rng.standard_normal((4, shape[1]))
    W = qw.dequantize()
    return qw, (delta * size * np.linalg.norm(W) / np.linalg.norm(delta)).astype(np.float32)


def test_merge_into_4bit_is_quantize_of_dequantized_plus_update():
    """merge_into_4bit(q, d) equals QuantizedTensor.quantize(dequant(q) + d) with q's own settings."""
    qw, delta = weight_and_update(0.1)
    expected = QuantizedTensor.quantize(qw.dequantize() + delta, "nf4", 64, True)
    received = merge_into_4bit(qw, delta)
    assert np.array_equal(received.dequantize(), expected.dequantize()), "merged weights differ"
    assert (received.quant_type, received.blocksize, received.nested is not None) == ("nf4", 64, True)


def test_a_tiny_update_is_lost_in_the_rounding():
    """An update of 0.1% of ||W|| moves almost no code to another level: next to none of it survives."""
    stats = update_survival(*weight_and_update(0.001))
    assert stats["codes_kept"] > 0.99, f"{1 - stats['codes_kept']:.1%} of the codes changed"
    assert abs(stats["kept_fraction"]) < 0.1, f"kept {stats['kept_fraction']:.3f} of the update"
    assert stats["error"] > 0.9, f"relative error {stats['error']:.2f}: the update survived"


def test_a_large_update_mostly_survives():
    """An update of 100% of ||W|| is far above the level spacing: the merged change follows it (error ~10%)."""
    stats = update_survival(*weight_and_update(1.0))
    assert stats["kept_fraction"] == pytest.approx(1.0, abs=0.05), f"kept {stats['kept_fraction']:.3f}"
    assert stats["error"] < 0.2, f"relative error {stats['error']:.3f}"


def test_survival_grows_with_the_size_of_the_update():
    """The error relative to the update falls as the update grows (0.1%, 1%, 10%, 100% of ||W||)."""
    errors = [update_survival(*weight_and_update(size))["error"] for size in (0.001, 0.01, 0.1, 1.0)]
    assert errors == sorted(errors, reverse=True), f"errors {errors} do not fall"


def test_survival_reports_the_relative_size_it_was_given():
    """relative_size is ||delta|| / ||dequant(W0)||, the size the update was built with."""
    stats = update_survival(*weight_and_update(0.03))
    assert stats["relative_size"] == pytest.approx(0.03, rel=1e-4), f"got {stats['relative_size']}"


def test_a_zero_update_is_refused():
    """Nothing to keep or lose: a ValueError says to train the adapter first."""
    qw, delta = weight_and_update(0.1)
    with pytest.raises(ValueError, match="update is zero"):
        update_survival(qw, 0 * delta)


def test_each_adapted_layer_of_a_qlora_model_gets_its_survival_measured(rng):
    """update_survival_by_module reports every adapted module, its update being s B A (relative size > 0)."""
    lm = LoraModel(quantize_base(tiny_float64_base(dtype=np.float32)), LoraConfig(r=2, target_modules=("wq", "fc")))
    randomize(lm, ".lora_B.", rng)
    stats = update_survival_by_module(lm)
    expected = ["blocks.0.attn.wq", "blocks.0.mlp.fc", "blocks.1.attn.wq", "blocks.1.mlp.fc"]
    assert sorted(stats) == expected, sorted(stats)
    A, B_, s = lm.lora_factors("blocks.0.attn.wq")
    expected = np.linalg.norm(s * (B_ @ A)) / np.linalg.norm(lm.merge_and_unload().params["blocks.0.attn.wq.weight"]
                                                             - s * (B_ @ A))
    assert stats["blocks.0.attn.wq"]["relative_size"] == pytest.approx(expected, rel=1e-4), stats["blocks.0.attn.wq"]
