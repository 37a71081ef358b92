"""Specification of LoRA (Hu et al. 2021, §4): the layer, the adapters, merging and switching."""
import numpy as np
import pytest

from minilora import io
from minilora.gradcheck import check_layer
from minilora.layers import cross_entropy_forward, linear_forward
from minilora.lora import (LoRAConfig, LoraModel, expected_trainable_count, init_lora_pair, lora_backward,
                           lora_forward, lora_param_count, merge_weights, unmerge_weights)
from minilora.model import GPT, GPTConfig
from minilora.optim import AdamW
from minilora.train import loss_and_grads

from helpers import lm_batch, randomize

CFG = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def base_model(seed=0, dtype=np.float64):
    return GPT(CFG, seed=seed, dtype=dtype)


def random_base(seed=0):
    """A float64 base with O(1) random weights, so no gradient is small enough to pass on atol alone."""
    model = base_model(seed)
    rng = np.random.default_rng(seed + 11)
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return model


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
    small = LoraModel(base_model(), LoRAConfig(r=2)).params["blocks.0.attn.wq.lora_A.default"]
    large = LoraModel(base_model(), LoRAConfig(r=8)).params["blocks.0.attn.wq.lora_A.default"]
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
        LoraModel(base_model(), LoRAConfig(target_modules=["q_proj"]))


def test_rank_out_of_range_is_a_clear_error():
    """r > min(d_out, d_in) is refused, naming the module and the bound."""
    with pytest.raises(ValueError, match=r"rank r = 17 is out of range .* min\(d_out, d_in\) = 16"):
        LoraModel(base_model(), LoRAConfig(r=17))


def test_pattern_that_matches_nothing_is_an_error():
    """A rank_pattern key naming a module that is not adapted is refused."""
    with pytest.raises(ValueError, match="matches no adapted module"):
        LoraModel(base_model(), LoRAConfig(target_modules=["wq"], rank_pattern={"wv": 2}))


def test_layers_out_of_range_is_an_error():
    """layers_to_transform must name existing blocks."""
    with pytest.raises(ValueError, match="out of range"):
        LoraModel(base_model(), LoRAConfig(layers_to_transform=[5]))


def test_rank_and_alpha_patterns_set_per_module_rank_and_scale():
    """rank_pattern/alpha_pattern override r and alpha for matching modules only."""
    lm = LoraModel(base_model(), LoRAConfig(r=4, lora_alpha=8, target_modules=["wq", "wv"],
                                            rank_pattern={"wv": 2}, alpha_pattern={"blocks.1.attn.wq": 2}))
    mods = lm.modules["default"]
    assert mods["blocks.0.attn.wv"] == (2, 4.0) and mods["blocks.0.attn.wq"] == (4, 2.0)
    assert mods["blocks.1.attn.wq"] == (4, 0.5)
    assert lm.params["blocks.0.attn.wv.lora_A.default"].shape == (2, 16)


def test_trainable_count_is_2_Lhat_d_r():
    """|Theta| = 2 x L_hat x d_model x r for attention targets (§7.1)."""
    config = LoRAConfig(r=4, target_modules=["wq", "wk", "wv", "wo"])
    lm = LoraModel(base_model(), config)
    assert lm.num_params(trainable_only=True) == 2 * 8 * 16 * 4 == expected_trainable_count(config, 2, 16)


def test_trainable_count_is_r_times_d_in_plus_d_out_for_any_target():
    """For MLP targets (non-square) each matrix adds r (d_in + d_out): fc (64, 16) and proj (16, 64)."""
    config = LoRAConfig(r=3, target_modules=["fc", "proj"])
    lm = LoraModel(base_model(), config)
    assert lm.num_params(trainable_only=True) == lora_param_count(lm.model, config) == 2 * 2 * 3 * (16 + 64)
    with pytest.raises(ValueError, match="square attention targets"):
        expected_trainable_count(config, 2, 16)


def test_everything_but_the_adapter_is_frozen():
    """Only lora_A and lora_B names are trainable; all base weights are frozen."""
    lm = LoraModel(base_model(), LoRAConfig(target_modules=["wq", "fc"]))
    assert lm.trainable and all(".lora_A." in k or ".lora_B." in k for k in lm.trainable)


def test_bias_all_trains_every_linear_bias():
    """bias='all' adds the biases of every linear layer to the trainable set."""
    lm = LoraModel(base_model(), LoRAConfig(target_modules=["wq"], bias="all"))
    assert "blocks.1.mlp.proj.bias" in lm.trainable and "blocks.1.mlp.proj.weight" not in lm.trainable


# --------------------------------------------------------------------------- the model
def test_lora_model_equals_base_model_at_init(rng):
    """§4.1: B = 0, so the adapted model's logits equal the base model's exactly."""
    base = base_model()
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    lm = LoraModel(base, LoRAConfig(r=4, target_modules=["wq", "wk", "wv", "wo", "fc", "proj"]))
    after, _ = lm.forward(idx)
    assert np.array_equal(before, after)


def test_lora_model_backward_matches_numerical_gradient(rng):
    """Through the whole model, dA and dB of every adapter and the head agree with central differences."""
    lm = LoraModel(random_base(), LoRAConfig(r=2, target_modules=["wq", "wv", "fc"], bias="lora_only"))
    randomize(lm, ".lora_B.", rng)
    batch = lm_batch(rng)
    _, grads = loss_and_grads(lm, batch)
    from minilora.gradcheck import check_gradient

    def loss():
        return cross_entropy_forward(lm.forward(batch["x"])[0], batch["y"], batch["mask"])[0]

    assert set(grads) == lm.trainable
    for name in sorted(grads):
        check_gradient(loss, lm.params[name], grads[name], name=name, max_entries=12, atol=0.0)


def test_only_adapter_weights_get_optimizer_state(rng):
    """AdamW holds m and v for A and B only: frozen weights cost no optimizer memory."""
    lm = LoraModel(base_model(), LoRAConfig(r=2))
    opt = AdamW(lr=1e-2)
    _, grads = loss_and_grads(lm, lm_batch(rng))
    opt.step(lm.params, grads)
    assert set(opt.state) == lm.trainable
    assert opt.state_bytes() == 2 * 8 * lm.num_params(trainable_only=True)


def test_frozen_weights_are_bit_identical_after_training(rng):
    """Ten LoRA steps change A and B but leave every base weight bit for bit as it was."""
    lm = LoraModel(base_model(), LoRAConfig(r=2, target_modules=["wq", "wv", "fc"]))
    frozen = {k: v.copy() for k, v in lm.params.items() if ".lora_" not in k}
    opt = AdamW(lr=1e-2)
    for _ in range(10):
        _, grads = loss_and_grads(lm, lm_batch(rng))
        opt.step(lm.params, grads)
    assert all(np.array_equal(lm.params[k], v) for k, v in frozen.items())
    assert np.abs(lm.params["blocks.0.attn.wq.lora_B.default"]).max() > 0


def test_merged_forward_matches_unmerged_forward(rng):
    """§4.1: after merging W = W0 + sBA the logits equal the unmerged model's (float32 tolerance)."""
    lm = LoraModel(base_model(dtype=np.float32), LoRAConfig(r=4, target_modules=["wq", "wv", "fc"]))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 8))
    unmerged, _ = lm.forward(idx)
    lm.merge_adapter()
    assert not lm.model.linear_hooks, "a merged model must run plain linear layers"
    merged, _ = lm.forward(idx)
    assert np.allclose(merged, unmerged, rtol=1e-5, atol=1e-5), np.abs(merged - unmerged).max()


def test_merge_then_unmerge_restores_the_base_logits(rng):
    """merge_adapter then unmerge_adapter gives W0 back within float32 rounding."""
    lm = LoraModel(base_model(dtype=np.float32), LoRAConfig(r=4))
    randomize(lm, ".lora_B.", rng)
    w0 = lm.params["blocks.0.attn.wq.weight"].copy()
    lm.merge_adapter()
    assert not np.allclose(lm.params["blocks.0.attn.wq.weight"], w0)
    lm.unmerge_adapter()
    err = np.abs(lm.params["blocks.0.attn.wq.weight"] - w0).max()
    assert err < 1e-7, f"unmerge left {err:.1e} (float32 rounding should be ~1e-9 here)"


def test_merging_twice_unmerging_unmerged_and_training_merged_are_errors(rng):
    """Each misuse of merge state raises a clear error."""
    lm = LoraModel(base_model(), LoRAConfig(r=2))
    with pytest.raises(RuntimeError, match="not merged"):
        lm.unmerge_adapter()
    lm.merge_adapter()
    with pytest.raises(RuntimeError, match="already merged"):
        lm.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        loss_and_grads(lm, lm_batch(rng))


def test_safe_merge_refuses_non_finite_weights_and_changes_nothing(rng):
    """A NaN in B makes safe_merge raise and leaves W0 untouched."""
    lm = LoraModel(base_model(), LoRAConfig(r=2))
    lm.params["blocks.1.attn.wv.lora_B.default"][0, 0] = np.nan
    w0 = {k: lm.params[k].copy() for k in ("blocks.0.attn.wq.weight", "blocks.1.attn.wv.weight")}
    with pytest.raises(ValueError, match="NaN or inf"):
        lm.merge_adapter(safe_merge=True)
    assert all(np.array_equal(lm.params[k], v) for k, v in w0.items()) and not lm.merged


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs(rng):
    """merge_and_unload returns a GPT without adapter weights or hooks, equal to the adapted model."""
    lm = LoraModel(base_model(), LoRAConfig(r=2))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 5))
    expected, _ = lm.forward(idx)
    plain = lm.merge_and_unload()
    assert not any(".lora_" in k for k in plain.params) and not plain.linear_hooks
    assert np.allclose(plain.forward(idx)[0], expected, atol=1e-10)


def test_disable_adapter_gives_the_base_logits_exactly(rng):
    """Inside disable_adapter() the model is the base model, bit for bit; after it, the adapter is back."""
    base = base_model()
    idx = rng.integers(0, 13, (2, 6))
    reference, _ = base.forward(idx)
    lm = LoraModel(base, LoRAConfig(r=2))
    randomize(lm, ".lora_B.", rng)
    adapted, _ = lm.forward(idx)
    with lm.disable_adapter():
        assert np.array_equal(lm.forward(idx)[0], reference)
    assert np.array_equal(lm.forward(idx)[0], adapted) and not np.allclose(adapted, reference)


def test_switching_adapters_gives_each_adapters_own_outputs(rng):
    """Two adapters on one base: set_adapter selects whose update is applied."""
    lm = LoraModel(base_model(), LoRAConfig(r=2, seed=1), adapter_name="one")
    lm.add_adapter("two", LoRAConfig(r=3, target_modules=["wk"], seed=2))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 6))
    out_two, _ = lm.forward(idx)
    lm.set_adapter("one")
    out_one, _ = lm.forward(idx)
    lm.delete_adapter("two")
    assert np.array_equal(lm.forward(idx)[0], out_one) and not np.allclose(out_one, out_two)
    assert set(lm.trainable) == {k for k in lm.params if k.endswith(".one")}


def test_adapters_keep_their_own_classification_heads(rng):
    """modules_to_save gives each adapter its own trained copy of the head."""
    base = base_model()
    base.add_classification_head(3)
    lm = LoraModel(base, LoRAConfig(r=2, modules_to_save=["head"]), adapter_name="a")
    lm.params["head.weight"] += 1.0
    lm.add_adapter("b", LoRAConfig(r=2, modules_to_save=["head"]))
    assert "head.weight" in lm.trainable
    b_head = lm.params["head.weight"].copy()
    lm.set_adapter("a")
    assert np.allclose(lm.params["head.weight"] - b_head, 1.0)


# --------------------------------------------------------------------------- files
def test_adapter_save_load_round_trip(tmp_path, rng):
    """A saved adapter loaded onto the same base reproduces the adapted logits exactly."""
    base = base_model()
    base.add_classification_head(2)
    lm = LoraModel(base, LoRAConfig(r=2, modules_to_save=["head"]), adapter_name="task")
    randomize(lm, ".lora_B.", rng)
    lm.params["head.bias"][:] = [0.5, -0.5]
    idx, last = rng.integers(0, 13, (2, 6)), np.array([5, 2])
    expected, _ = lm.classify(idx, last)
    lm.save_adapter(tmp_path / "ad")
    keys = set(io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")[0])
    assert "blocks.0.attn.wq.lora_A.weight" in keys and "head.weight" in keys
    fresh = base_model()
    fresh.add_classification_head(2)
    lm2 = LoraModel(fresh)
    lm2.load_adapter(tmp_path / "ad")
    assert lm2.active_adapter == "task"
    assert np.array_equal(lm2.classify(idx, last)[0], expected)


def test_adapter_file_holds_peft_shapes(tmp_path):
    """lora_A is (r, d_in) and lora_B is (d_out, r) in the file, as PEFT stores them."""
    lm = LoraModel(base_model(), LoRAConfig(r=3, target_modules=["fc"]))
    lm.save_adapter(tmp_path / "ad")
    t, _ = io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")
    assert t["blocks.0.mlp.fc.lora_A.weight"].shape == (3, 16)
    assert t["blocks.0.mlp.fc.lora_B.weight"].shape == (64, 3)


def test_loading_onto_a_different_base_is_refused(tmp_path):
    """The fingerprint of the base model is checked: another base raises CheckpointError."""
    LoraModel(base_model(seed=0), LoRAConfig(r=2)).save_adapter(tmp_path / "ad")
    other = LoraModel(base_model(seed=1))
    with pytest.raises(io.CheckpointError, match="different base model"):
        other.load_adapter(tmp_path / "ad")
    assert not other.adapters, "a refused adapter must leave nothing behind"


def test_loading_an_adapter_with_other_shapes_is_refused(tmp_path):
    """Tensors whose shapes disagree with the config are refused, and nothing is left half-loaded."""
    lm = LoraModel(base_model(), LoRAConfig(r=2))
    lm.save_adapter(tmp_path / "ad")
    meta = io.read_json(tmp_path / "ad" / "adapter_config.json")
    meta["r"] = 3
    io.write_json(tmp_path / "ad" / "adapter_config.json", meta)
    fresh = LoraModel(base_model())
    with pytest.raises(io.CheckpointError, match="shape"):
        fresh.load_adapter(tmp_path / "ad")
    assert not fresh.adapters and not any(".lora_" in k for k in fresh.params)


def test_trainable_report_counts_percent_and_adam_bytes(capsys):
    """The report gives trainable/total counts, their percent, and 8 bytes of Adam state per float32 weight."""
    lm = LoraModel(GPT(CFG, seed=0), LoRAConfig(r=2))          # float32
    rep = lm.trainable_report()
    n = 2 * 4 * 16 * 2
    assert rep["trainable"] == n and rep["adam_state_bytes"] == 8 * n
    assert rep["percent"] == pytest.approx(100 * n / rep["total"])
    lm.print_trainable_parameters()
    assert f"trainable params: {n:,}" in capsys.readouterr().out
