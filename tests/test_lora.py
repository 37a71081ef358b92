"""Specification of the LoRA layer and its configuration (Hu et al. 2021, §4.1-4.2)."""
import numpy as np
import pytest

from minilora.nn.gradcheck import check_layer
from minilora.nn.layers import linear_forward
from minilora.adapters.config import LoraConfig, expected_trainable_count, lora_param_count
from minilora.adapters.lora import init_lora_pair, lora_backward, lora_forward, merge_weights, unmerge_weights
from minilora.adapters.lora_model import LoraModel

from helpers import tiny_float64_base


# --------------------------------------------------------------------------- the layer
def test_lora_backward_matches_numerical_gradient_with_nonzero_B(rng):
    """dx, dA, dB of h = x W0^T + b + s x A^T B^T agree with central differences (B random, not 0)."""
    x, W0, b = rng.standard_normal((2, 3, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = rng.standard_normal((2, 6)), rng.standard_normal((5, 2))
    errors = check_layer(lambda x, A, B_: lora_forward(x, W0, b, A, B_, 0.7), lora_backward,
                         [x, A, B_], names=["x", "A", "B"])
    assert max(errors.values()) < 1e-7, errors


def test_lora_backward_with_dropout_matches_numerical_gradient(rng):
    """With a fixed dropout mask on the A path the gradients are still exact."""
    x, W0 = rng.standard_normal((2, 3, 6)), rng.standard_normal((5, 6))
    A, B_ = rng.standard_normal((3, 6)), rng.standard_normal((5, 3))
    mask = (rng.random((2, 3, 6)) > 0.3) / 0.7
    errors = check_layer(lambda x, A, B_: lora_forward(x, W0, None, A, B_, 2.0, mask), lora_backward,
                         [x, A, B_], names=["x", "A", "B"])
    assert max(errors.values()) < 1e-7, errors


def test_lora_forward_matches_its_closed_form(rng):
    """eq. (3) written out: h = x W0^T + b + (alpha/r) (x A^T) B^T, dropout on the A path only."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = rng.standard_normal((3, 6)), rng.standard_normal((5, 3))
    mask = (rng.random((2, 4, 6)) > 0.5) * 2.0
    h, _ = lora_forward(x, W0, b, A, B_, 0.75, mask)
    expected = x @ W0.T + b + 0.75 * ((x * mask) @ A.T) @ B_.T
    assert np.allclose(h, expected, atol=1e-12), f"max diff {np.abs(h - expected).max():.2e}"


def test_lora_forward_equals_linear_with_merged_weight(rng):
    """x W0^T + s x A^T B^T = x (W0 + s B A)^T: the unmerged and merged layers agree."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = rng.standard_normal((2, 6)), rng.standard_normal((5, 2))
    h, _ = lora_forward(x, W0, b, A, B_, 1.5)
    h_merged, _ = linear_forward(x, merge_weights(W0, A, B_, 1.5), b)
    assert np.allclose(h, h_merged, atol=1e-12)


def test_only_B_gets_a_gradient_at_init(rng):
    """§4.1: B = 0 at init, so dA = s (dh B)^T x = 0 while dB = s dh^T (x A^T) is not zero."""
    A, B_ = init_lora_pair(5, 6, 2, rng=rng, dtype=np.float64)
    _, cache = lora_forward(rng.standard_normal((2, 3, 6)), rng.standard_normal((5, 6)), None, A, B_, 1.0)
    _, dA, dB = lora_backward(rng.standard_normal((2, 3, 5)), cache)
    assert not dA.any() and np.abs(dB).max() > 0


def test_update_BA_has_W0_shape_and_rank_at_most_r(rng):
    """B (d_out, r) @ A (r, d_in) is (d_out, d_in) with rank <= r."""
    A, B_ = rng.standard_normal((3, 10)), rng.standard_normal((8, 3))
    dW = B_ @ A
    assert dW.shape == (8, 10) and np.linalg.matrix_rank(dW) == 3


def test_gaussian_init_has_std_one_over_sqrt_d_in_independent_of_r():
    """Default: A ~ N(0, 1/d_in), the same for every r, and B = 0."""
    for r in (1, 16):
        A, B_ = init_lora_pair(64, 4096, r, dtype=np.float64, rng=np.random.default_rng(r))
        assert A.std() == pytest.approx(1 / 64, rel=0.03) and not B_.any(), (r, A.std())


def test_peft_gaussian_init_has_std_one_over_r():
    """init_lora_weights="peft_gaussian" is PEFT's "gaussian": A ~ N(0, (1/r)^2)."""
    A, B_ = init_lora_pair(64, 4096, 4, init="peft_gaussian", dtype=np.float64)
    assert A.std() == pytest.approx(0.25, rel=0.02) and not B_.any()


def test_adapters_of_different_rank_start_from_unrelated_A():
    """An r = 2 A is not the first rows of an r = 8 A: subspace comparisons start at chance, not at 1."""
    small = LoraModel(tiny_float64_base(), LoraConfig(r=2)).params["blocks.0.attn.wq.lora_A.weight.default"]
    large = LoraModel(tiny_float64_base(), LoraConfig(r=8)).params["blocks.0.attn.wq.lora_A.weight.default"]
    assert not np.allclose(small, large[:2])


def test_kaiming_init_is_uniform_within_one_over_sqrt_d_in():
    """PEFT's default: A ~ U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    A, _ = init_lora_pair(8, 400, 16, init="kaiming", dtype=np.float64)
    assert np.abs(A).max() <= 1 / 20 and np.abs(A).max() > 0.95 / 20


def test_merge_then_unmerge_restores_w0_up_to_float32_rounding(rng):
    """W0 + sBA - sBA = W0 exactly in real numbers; in float32 the error stays below 1e-6 relative."""
    W0 = (0.02 * rng.standard_normal((128, 128))).astype(np.float32)
    A = (rng.standard_normal((8, 128)) / 8).astype(np.float32)
    B_ = (0.05 * rng.standard_normal((128, 8))).astype(np.float32)
    back = unmerge_weights(merge_weights(W0, A, B_, 2.0), A, B_, 2.0)
    rel = np.abs(back - W0).max() / np.abs(W0).max()
    assert 0 <= rel < 1e-6, f"float32 round trip error {rel:.2e} (expected rounding only, < 1e-6)"


# --------------------------------------------------------------------------- configuration
def test_unknown_target_module_error_lists_valid_names():
    """A typo in target_modules is refused and the message lists what is valid."""
    with pytest.raises(ValueError, match=r"unknown target_modules \['q_proj'\].*wq"):
        LoraModel(tiny_float64_base(), LoraConfig(target_modules=["q_proj"]))


def test_rank_out_of_range_is_a_clear_error():
    """r > min(d_out, d_in) is refused, naming the module and the bound."""
    with pytest.raises(ValueError, match=r"rank r = 17 is out of range .* min\(d_out, d_in\) = 16"):
        LoraModel(tiny_float64_base(), LoraConfig(r=17))


def test_pattern_that_matches_nothing_is_an_error():
    """A rank_pattern key naming a module that is not adapted is refused."""
    with pytest.raises(ValueError, match="matches no adapted module"):
        LoraModel(tiny_float64_base(), LoraConfig(target_modules=["wq"], rank_pattern={"wv": 2}))


def test_layers_out_of_range_is_an_error():
    """layers_to_transform must name existing blocks."""
    with pytest.raises(ValueError, match="out of range"):
        LoraModel(tiny_float64_base(), LoraConfig(layers_to_transform=[5]))


def test_rank_and_alpha_patterns_set_per_module_rank_and_scale():
    """rank_pattern/alpha_pattern override r and alpha for matching modules only."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["wq", "wv"],
                                            rank_pattern={"wv": 2}, alpha_pattern={"blocks.1.attn.wq": 2}))
    mods = lm.modules["default"]
    assert mods["blocks.0.attn.wv"] == (2, 4.0) and mods["blocks.0.attn.wq"] == (4, 2.0)
    assert mods["blocks.1.attn.wq"] == (4, 0.5)
    assert lm.params["blocks.0.attn.wv.lora_A.weight.default"].shape == (2, 16)


def test_trainable_count_is_2_Lhat_d_r():
    """|Theta| = 2 x L_hat x d_model x r for attention targets (§7.1)."""
    config = LoraConfig(r=4, target_modules=["wq", "wk", "wv", "wo"])
    lm = LoraModel(tiny_float64_base(), config)
    assert lm.num_params(trainable_only=True) == 2 * 8 * 16 * 4 == expected_trainable_count(config, 2, 16)


def test_trainable_count_is_r_times_d_in_plus_d_out_for_any_target():
    """For MLP targets (non-square) each matrix adds r (d_in + d_out): fc (64, 16) and proj (16, 64)."""
    config = LoraConfig(r=3, target_modules=["fc", "proj"])
    lm = LoraModel(tiny_float64_base(), config)
    assert lm.num_params(trainable_only=True) == lora_param_count(lm.model, config) == 2 * 2 * 3 * (16 + 64)
    with pytest.raises(ValueError, match="square attention targets"):
        expected_trainable_count(config, 2, 16)


def test_everything_but_the_adapter_is_frozen():
    """Only lora_A and lora_B names are trainable; all base weights are frozen."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(target_modules=["wq", "fc"]))
    assert lm.trainable and all(".lora_A." in k or ".lora_B." in k for k in lm.trainable)


def test_bias_all_trains_every_linear_bias():
    """bias='all' trains the adapter's own copy of every linear layer's bias, and the layer reads that copy."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(target_modules=["wq"], bias="all"))
    copy = lm.param_name("blocks.1.mlp.proj.bias")
    assert copy in lm.trainable and "blocks.1.mlp.proj.weight" not in lm.trainable
    assert "blocks.1.mlp.proj.bias" not in lm.trainable, "the base bias stays frozen; the adapter trains a copy"
    assert lm.model.linears["blocks.1.mlp.proj"].tensors["bias"] == copy
