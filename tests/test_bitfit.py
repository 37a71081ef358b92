"""Specification of BitFit (Zaken et al. 2021): only biases train, as an adapter with its own copies."""
import numpy as np
import pytest

from minilora import io
from minilora.adapters.bitfit import BitFitConfig, BitFitModel, bias_names, expected_trainable_count
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.loss import loss_and_grads

from helpers import TINY_LORA_BASE, check_model_gradients, lm_batch, tiny_float64_base


def random_biases(host, rng):
    """Give the adapter's bias copies random values (they start equal to the base's zeros)."""
    for key in host.own_keys[host.active_adapter]:
        host.params[host.param_name(key)][...] = rng.standard_normal(host.params[host.param_name(key)].shape)


@pytest.mark.parametrize("layernorm_bias", [True, False])
def test_bitfit_trains_exactly_the_count_of_the_formula(layernorm_bias):
    """|Theta| = L (4C + 4C + C) (+ (2L + 1) C for the layer-norm shifts), written out by hand here."""
    L, C = TINY_LORA_BASE.n_layer, TINY_LORA_BASE.n_embd
    by_hand = L * (4 * C + 4 * C + C) + ((2 * L + 1) * C if layernorm_bias else 0)
    host = BitFitModel(tiny_float64_base(), BitFitConfig(layernorm_bias=layernorm_bias))
    got = host.num_params(trainable_only=True)
    assert got == by_hand == expected_trainable_count(TINY_LORA_BASE, layernorm_bias), \
        f"expected {by_hand} trainable biases, got {got} (formula {expected_trainable_count(TINY_LORA_BASE, layernorm_bias)})"
    assert all(name.split(".")[-2] == "bias" for name in host.trainable), f"not only biases: {sorted(host.trainable)[:4]}"


def test_bitfit_equals_the_base_at_init_and_trains_only_its_copies(rng):
    """The copies start equal to the base's biases; gradients reach the copies and nothing else."""
    base = tiny_float64_base()
    batch = lm_batch(rng)
    before, _ = base.forward(batch["x"])
    host = BitFitModel(base)
    assert np.array_equal(host.forward(batch["x"])[0], before), "BitFit must equal the base at init"
    _, grads = loss_and_grads(host, batch)
    assert set(grads) == host.trainable and all(k.endswith(".bias.default") for k in grads), sorted(grads)[:4]


def test_bitfit_gradients_match_numerical_gradient(rng):
    """The copies' gradients (linear biases and layer-norm shifts) agree with central differences
    (O(1) base weights: GPT-2's 0.02 makes some gradients so small that rounding decides the check)."""
    model = tiny_float64_base()
    for p in model.params.values():
        p[...] += 0.3 * rng.standard_normal(p.shape)
    host = BitFitModel(model)
    random_biases(host, rng)
    keys = ("blocks.0.attn.wq.bias", "blocks.1.mlp.fc.bias", "blocks.0.ln2.bias", "ln_f.bias")
    check_model_gradients(host, lm_batch(rng), [host.param_name(k) for k in keys], atol=0.0)


def test_base_biases_stay_untouched_and_merge_and_unload_carries_the_trained_ones(rng):
    """The base's biases never change; the plain GPT of merge_and_unload computes what the adapter does."""
    base = tiny_float64_base()
    original = {k: base.params[k].copy() for k in bias_names(TINY_LORA_BASE)}
    host = BitFitModel(base)
    random_biases(host, rng)
    idx = lm_batch(rng)["x"]
    adapted, _ = host.forward(idx)
    assert all(np.array_equal(base.params[k], v) for k, v in original.items()), "a base bias changed"
    plain = host.merge_and_unload()
    assert np.allclose(plain.forward(idx)[0], adapted, atol=1e-12), "the unloaded GPT must equal the adapter"


def test_bitfit_round_trips_through_files_and_switches_on_one_base(tmp_path, rng):
    """Saved and loaded with its config: the same logits; two BitFit adapters switch on one base."""
    host = BitFitModel(tiny_float64_base(), BitFitConfig(layernorm_bias=False))
    random_biases(host, rng)
    idx = lm_batch(rng)["x"]
    first, _ = host.forward(idx)
    host.save_adapter(tmp_path / "a")
    host.add_adapter("other", BitFitConfig())
    random_biases(host, rng)
    second, _ = host.forward(idx)
    other = BitFitModel(tiny_float64_base(), BitFitConfig())
    other.load_adapter(tmp_path / "a", "loaded")
    assert other.adapters["loaded"] == BitFitConfig(layernorm_bias=False), other.adapters["loaded"]
    assert np.array_equal(other.forward(idx)[0], first), "the loaded adapter must give the saved logits"
    host.set_adapter("default")
    assert np.array_equal(host.forward(idx)[0], first) and not np.allclose(first, second), "switching failed"


def test_bitfit_is_refused_on_another_base(tmp_path):
    """An adapter trained on one base is not loaded onto a base with other weights."""
    host = BitFitModel(tiny_float64_base(seed=0))
    host.save_adapter(tmp_path / "a")
    with pytest.raises(io.CheckpointError, match="different base model"):
        BitFitModel(tiny_float64_base(seed=1)).load_adapter(tmp_path / "a")


def test_bitfit_and_lora_adapters_share_one_host(rng):
    """One host holds a LoRA and a BitFit adapter; each trains only its own tensors when active."""
    host = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    host.add_adapter("bitfit", BitFitConfig())
    assert all(k.endswith(".bias.bitfit") for k in host.trainable), sorted(host.trainable)[:3]
    host.set_adapter("default")
    assert all(".lora_" in k for k in host.trainable), sorted(host.trainable)[:3]
