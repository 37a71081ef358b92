"""Specification of the LoRA layer and its configuration (Hu et al. 2021, §4.1-4.2)."""
import json

import numpy as np
import pytest

from minilora.nn.gradcheck import check_layer
from minilora.nn.layers import linear_forward
from minilora.adapters.config import LoraConfig, expected_trainable_count, lora_param_count, resolve_targets
from minilora.adapters.lora import (init_lora_pair, lora_backward, lora_forward, lora_scale, merge_weights,
                                   unmerge_weights)
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT

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


def test_lora_forward_with_B_zero_is_the_frozen_linear_layer(rng):
    """§4.1: with B = 0 the layer is exactly x W0^T + b, whatever A, s and the dropout mask are."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    mask = (rng.random((2, 4, 6)) > 0.5) * 2.0
    h, _ = lora_forward(x, W0, b, rng.standard_normal((3, 6)), np.zeros((5, 3)), 0.75, mask)
    assert h.shape == (2, 4, 5), f"expected h of shape (B, T, d_out) = (2, 4, 5), got {h.shape}"
    assert np.array_equal(h, linear_forward(x, W0, b)[0]), "B = 0 must leave the frozen path unchanged"


def test_lora_forward_adds_s_times_input_i_to_output_j_for_unit_factors(rng):
    """A = e_i^T (1, d_in), B = e_j (d_out, 1): the update adds s x[..., i] to output j and nothing else."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = np.zeros((1, 6)), np.zeros((5, 1))
    A[0, 2], B_[3, 0] = 1.0, 1.0
    delta = lora_forward(x, W0, b, A, B_, 0.75)[0] - linear_forward(x, W0, b)[0]     # (2, 4, 5)
    assert np.allclose(delta[..., 3], 0.75 * x[..., 2], atol=1e-12), "output 3 should gain s * x[..., 2]"
    assert np.allclose(np.delete(delta, 3, axis=-1), 0.0, atol=1e-12), "other outputs must not change"


def test_lora_update_is_linear_in_s_and_has_rank_at_most_r(rng):
    """h - x W0^T - b doubles when s doubles, and over many rows it spans at most r directions."""
    x, W0 = rng.standard_normal((40, 6)), rng.standard_normal((5, 6))
    A, B_ = rng.standard_normal((2, 6)), rng.standard_normal((5, 2))
    base = linear_forward(x, W0, None)[0]
    d1, d2 = (lora_forward(x, W0, None, A, B_, s)[0] - base for s in (0.5, 1.0))
    assert np.allclose(d2, 2 * d1, atol=1e-12), "the update is proportional to s"
    assert np.linalg.matrix_rank(d1) == 2, f"rank of the update over 40 rows: {np.linalg.matrix_rank(d1)}, r = 2"


def test_lora_dropout_applies_to_the_A_path_only(rng):
    """A keep-mask of zeros removes the update and leaves the frozen path: h = x W0^T + b."""
    x, W0, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    A, B_ = rng.standard_normal((3, 6)), rng.standard_normal((5, 3))
    h, _ = lora_forward(x, W0, b, A, B_, 0.75, np.zeros((2, 4, 6)))
    assert np.allclose(h, linear_forward(x, W0, b)[0], atol=1e-12), "dropout must not touch x W0^T"


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


def test_every_init_starts_with_delta_W_zero():
    """§4.1: whichever init, B A = 0 at the start, with A (r, d_in) and B (d_out, r)."""
    for init in ("gaussian", "peft_gaussian", "kaiming", "reversed", "zeros"):
        A, B_ = init_lora_pair(7, 5, 3, init=init, dtype=np.float64, rng=np.random.default_rng(0))
        assert A.shape == (3, 5) and B_.shape == (7, 3), f"{init}: shapes {A.shape}, {B_.shape}"
        assert not (B_ @ A).any(), f"{init}: B A must be exactly 0 at init"


def test_only_one_factor_is_random_and_which_one_depends_on_the_init():
    """Gaussian and kaiming: A random, B = 0; "reversed": A = 0, B random; "zeros": both 0."""
    draw = {init: init_lora_pair(64, 32, 4, init=init, dtype=np.float64) for init in
            ("gaussian", "kaiming", "reversed", "zeros")}
    random_A = {init: bool(A.any()) for init, (A, _) in draw.items()}
    random_B = {init: bool(B_.any()) for init, (_, B_) in draw.items()}
    assert random_A == {"gaussian": True, "kaiming": True, "reversed": False, "zeros": False}, random_A
    assert random_B == {"gaussian": False, "kaiming": False, "reversed": True, "zeros": False}, random_B


def test_init_std_argument_is_used_as_given():
    """A user's std is never replaced: std = 0.3 gives A of std 0.3 (for the reversed init, B)."""
    A, _ = init_lora_pair(16, 4096, 4, std=0.3, dtype=np.float64)
    _, B_ = init_lora_pair(4096, 16, 4, init="reversed", std=0.3, dtype=np.float64)
    assert A.std() == pytest.approx(0.3, rel=0.03) and B_.std() == pytest.approx(0.3, rel=0.03)


def test_init_returns_the_requested_dtype_and_refuses_unknown_names():
    """dtype float32 by default; an unknown init name is refused with the valid names listed."""
    A, B_ = init_lora_pair(4, 6, 2)
    assert A.dtype == np.float32 and B_.dtype == np.float32, (A.dtype, B_.dtype)
    with pytest.raises(ValueError, match="unknown init_lora_weights 'xavier'.*kaiming"):
        init_lora_pair(4, 6, 2, init="xavier")


# --------------------------------------------------------------------------- the scale
def test_scale_has_the_papers_values():
    """Known values of the scale, Hu et al. 2021 §4.1 and rsLoRA (Kalajdzievski 2023): alpha = 16, r = 4."""
    assert lora_scale(16, 4) == 4.0 and lora_scale(8, 8) == 1.0, (lora_scale(16, 4), lora_scale(8, 8))
    assert lora_scale(16, 4, use_rslora=True) == 8.0, lora_scale(16, 4, use_rslora=True)
    assert lora_scale(16, 1, use_rslora=True) == lora_scale(16, 1) == 16.0


def test_rslora_keeps_the_update_size_flat_in_r(rng):
    """For A, B with entries of a size that does not depend on r, the rsLoRA scale keeps |s B A x|
    the same from r = 4 to r = 64, while the paper's shrinks it about 4-fold (Kalajdzievski 2023)."""
    d, x = 256, rng.standard_normal((64, 256))

    def update_size(r, rslora):
        A, B_ = rng.standard_normal((r, d)) / np.sqrt(d), rng.standard_normal((d, r))
        return np.linalg.norm(lora_scale(8.0, r, rslora) * (x @ A.T) @ B_.T) / np.linalg.norm(x)

    rs = update_size(64, True) / update_size(4, True)
    plain = update_size(64, False) / update_size(4, False)
    assert 0.8 < rs < 1.25, f"rsLoRA: size at r = 64 over size at r = 4 should be ~1, got {rs:.2f}"
    assert 0.2 < plain < 0.32, f"alpha / r: expected ~1/sqrt(16) = 0.25, got {plain:.2f}"


def test_rank_that_is_not_a_positive_integer_is_refused():
    """r = 0, r = -2 or r = 2.5 cannot be a rank: ValueError naming the value."""
    for r in (0, -2, 2.5):
        with pytest.raises(ValueError, match=f"rank r must be a positive integer, got {r}"):
            lora_scale(8.0, r)


def test_use_rslora_sets_every_adapted_modules_scale():
    """LoraConfig(use_rslora=True) gives each module the rsLoRA scale of its own r, rank patterns included."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"wv": 16}))
    scales = {m.split(".", 2)[-1]: s for m, (_, s) in lm.modules["default"].items()}
    assert scales == {"attn.wq": 4.0, "attn.wv": 2.0}, scales


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


def test_overlapping_pattern_keys_resolve_by_peft_first_match_rule():
    """PEFT's adapter_config.json with overlapping keys: minilora adapts every module at the rank and alpha
    PEFT chose (tests/fixtures/peft_adapters/rank_alpha_patterns/resolved.json), not by the longest key."""
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    from interop_fixtures import ADAPTERS, HF_TINY

    folder = ADAPTERS / "rank_alpha_patterns"
    peft = json.loads((folder / "adapter_config.json").read_text())
    config = LoraConfig(r=peft["r"], lora_alpha=peft["lora_alpha"], target_modules=peft["target_modules"],
                        rank_pattern=peft["rank_pattern"], alpha_pattern=peft["alpha_pattern"], use_rslora=True)
    got = resolve_targets(GPT(*read_hf_gpt2(HF_TINY)), config)
    want = {m: (v["r"], v["scaling"]) for m, v in json.loads((folder / "resolved.json").read_text()).items()}
    assert got.keys() == want.keys(), f"expected modules {sorted(want)}, received {sorted(got)}"
    for m, (r, s) in want.items():
        assert got[m][0] == r and got[m][1] == pytest.approx(s, rel=1e-12), f"{m}: expected {(r, s)}, received {got[m]}"
    assert list(peft["rank_pattern"])[:2] == ["attn.wq", "blocks.0.attn.wq"] and got["blocks.0.attn.wq"][0] == 3, \
        "expected the first key 'attn.wq' (r = 3) to win over the longer 'blocks.0.attn.wq' (r = 5)"


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
    """bias='all' trains the adapter's own copy of every bias (linear and LayerNorm), and the layer reads that copy."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(target_modules=["wq"], bias="all"))
    copy = lm.param_name("blocks.1.mlp.proj.bias")
    assert copy in lm.trainable and "blocks.1.mlp.proj.weight" not in lm.trainable
    assert "blocks.1.mlp.proj.bias" not in lm.trainable, "the base bias stays frozen; the adapter trains a copy"
    assert lm.model.linears["blocks.1.mlp.proj"].tensors["bias"] == copy
    ln_copy = lm.param_name("blocks.0.ln2.bias")
    assert ln_copy in lm.trainable and lm.model.norms["blocks.0.ln2"]["bias"] == ln_copy, \
        "PEFT's bias='all' trains LayerNorm biases too"
