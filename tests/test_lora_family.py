"""Specification of LoRA's successors in a model: PiSSA/OLoRA and their conversion, LoRA-FA, LoRA+, combining."""
import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.experiments.train import TrainConfig, train
from minilora.nn.loss import loss_and_grads
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.optim import AdamW

from helpers import check_model_gradients, lm_batch, randomize, tiny_float64_base

TARGETS = ["wq", "wv", "fc"]


def copy_of(base):
    return GPT(base.config, {k: v.copy() for k, v in base.params.items()})


def random_base(rng):
    """A float64 base with O(1) random weights: small gradients would leave central differences at rounding level."""
    model = tiny_float64_base()
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return model


def nudge(lm, rng, scale=0.05):
    """Move every trainable tensor as a few training steps would (in place)."""
    for name in lm.trainable:
        lm.params[name] += scale * rng.standard_normal(lm.params[name].shape)


# --------------------------------------------------------------------------- PiSSA / OLoRA
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_start_at_the_base_model_with_a_frozen_residual(rng, init):
    """W_res + s B0 A0 = W0, so the logits are the base's; the residual is the adapter's frozen copy, W0 untouched."""
    base = tiny_float64_base()
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    W0 = base.params["blocks.0.mlp.fc.weight"].copy()
    lm = LoraModel(base, LoraConfig(r=3, target_modules=TARGETS, init_lora_weights=init))
    err = np.abs(lm.forward(idx)[0] - before).max()
    assert err < 1e-13, f"{init}: expected the base logits at init, max diff {err:.2e}"
    residual = lm.param_name("blocks.0.mlp.fc.weight")
    assert residual not in lm.trainable and lm.model.linears["blocks.0.mlp.fc"].tensors["weight"] == residual
    assert np.array_equal(lm.params["blocks.0.mlp.fc.weight"], W0), "the base W0 itself must not change"
    A, B_, s = lm.lora_factors("blocks.0.mlp.fc")
    assert np.abs(lm.params[residual] + s * B_ @ A - W0).max() < 1e-14 and np.abs(B_).max() > 0


def test_pissa_adapter_is_the_principal_rank_r_part_of_w0():
    """PiSSA: s B0 A0 is W0's best rank-r approximation (its top r singular triplets), checked with NumPy's SVD."""
    base = tiny_float64_base()
    lm = LoraModel(copy_of(base), LoraConfig(r=3, target_modules=["fc"], init_lora_weights="pissa"))
    A, B_, s = lm.lora_factors("blocks.1.mlp.fc")
    U, S, Vh = np.linalg.svd(base.params["blocks.1.mlp.fc.weight"], full_matrices=False)
    best = (U[:, :3] * S[:3]) @ Vh[:3]
    assert np.allclose(s * B_ @ A, best, atol=1e-14), np.abs(s * B_ @ A - best).max()


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_disabling_or_switching_away_from_pissa_gives_the_exact_base(rng, init):
    """The residual lives in the adapter, so disable_adapter and another adapter see W0 bit for bit."""
    base = tiny_float64_base()
    idx = rng.integers(0, 13, (2, 6))
    reference, _ = base.forward(idx)
    lm = LoraModel(base, LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=init), adapter_name="p")
    nudge(lm, rng)
    with lm.disable_adapter():
        assert np.array_equal(lm.forward(idx)[0], reference), "disable_adapter must give the base exactly"
    lm.add_adapter("plain", LoraConfig(r=2, target_modules=TARGETS))
    assert np.array_equal(lm.forward(idx)[0], reference), "a fresh plain adapter on W0 gives the base exactly"


@pytest.mark.parametrize("init, dora", [("pissa", False), ("olora", True)])
def test_pissa_and_olora_backward_match_numerical_gradient(rng, init, dora):
    """Through the model, A, B (and m, exact DoRA mode) get the loss's gradient; the residual gets none."""
    lm = LoraModel(random_base(rng), LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=init,
                                                use_dora=dora, dora_detach_norm=False))
    nudge(lm, rng, 0.2)
    grads = check_model_gradients(lm, lm_batch(rng), max_entries=8, atol=0.0)
    assert lm.param_name("blocks.0.attn.wq.weight") not in grads, sorted(grads)


@pytest.mark.parametrize("init, dora, rslora", [("pissa", False, False), ("olora", False, True),
                                                ("pissa", True, False)])
def test_converted_plain_lora_reproduces_the_trained_logits(rng, init, dora, rslora):
    """convert_to_plain_lora: rank 2r on the original W0, same scale, same logits as the trained adapter."""
    base = tiny_float64_base()
    base.add_classification_head(3)
    lm = LoraModel(base, LoraConfig(r=2, lora_alpha=3, target_modules=TARGETS, init_lora_weights=init,
                                    use_dora=dora, use_rslora=rslora, bias="lora_only", modules_to_save=["head"]))
    nudge(lm, rng)
    idx, last = rng.integers(0, 13, (2, 6)), np.array([5, 1])
    trained, _ = lm.classify(idx, last)
    name = lm.convert_to_plain_lora()
    assert lm.active_adapter == "default", "the conversion adds an adapter and keeps the active one"
    lm.set_adapter(name)
    spec = lm.model.linears["blocks.0.attn.wq"]
    assert spec.tensors["weight"] == "blocks.0.attn.wq.weight", f"the converted adapter must read W0, got {spec}"
    assert lm.modules[name]["blocks.0.attn.wq"] == (4, pytest.approx(lm.modules["default"]["blocks.0.attn.wq"][1]))
    err = np.abs(lm.classify(idx, last)[0] - trained).max()
    assert err < 1e-12, f"converted vs trained logits: max diff {err:.2e}"


def test_conversion_refuses_a_plain_lora_adapter():
    """A LoRA adapter already works on W0: converting it is an error that says so."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    with pytest.raises(ValueError, match="not a PiSSA/OLoRA adapter"):
        lm.convert_to_plain_lora()


def test_merge_and_unload_of_pissa_folds_the_residual(rng):
    """merge_and_unload gives a plain GPT whose weight is W_res + s B A: the trained model's logits."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=TARGETS, init_lora_weights="olora"))
    nudge(lm, rng)
    idx = rng.integers(0, 13, (2, 6))
    want, _ = lm.forward(idx)
    plain = lm.merge_and_unload()
    assert np.allclose(plain.forward(idx)[0], want, atol=1e-12)


# --------------------------------------------------------------------------- LoRA-FA and LoRA+
def test_lora_fa_trains_b_and_keeps_a_frozen(rng):
    """lora_fa: A is not trainable and unchanged by training; B moves."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, lora_fa=True))
    a_name, b_name = lm.param_name("blocks.0.attn.wq.lora_A.weight"), lm.param_name("blocks.0.attn.wq.lora_B.weight")
    A0 = lm.params[a_name].copy()
    opt = AdamW(lr=1e-2)
    for _ in range(3):
        opt.step(lm.params, loss_and_grads(lm, lm_batch(rng))[1])
    assert a_name not in lm.trainable and np.array_equal(lm.params[a_name], A0)
    assert np.abs(lm.params[b_name]).max() > 0


def test_loraplus_ratio_makes_b_step_ratio_times_a_step(rng):
    """TrainConfig(loraplus_lr_ratio=16): AdamW's first step moves each entry by ~lr, B's by ~16 lr."""
    from minilora.data.datasets import make_splits
    from minilora.data.tasks import default_tokenizer

    model = GPT(GPTConfig(vocab_size=default_tokenizer().vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=16))
    lm = LoraModel(model, LoraConfig(r=2))
    randomize(lm, ".lora_B.", rng)                     # so A gets a gradient in the first step
    before = {k: lm.params[k].copy() for k in lm.trainable}
    data, _ = make_splits("shift", 16, 8, seed=0, block_size=24)
    lr = 1e-3
    train(lm, data, None, TrainConfig(steps=1, batch_size=8, lr=lr, warmup_steps=0, weight_decay=0.0,
                                      progress=False, fast=False, loraplus_lr_ratio=16.0))
    step = {k: np.abs(lm.params[k] - v).max() for k, v in before.items()}
    a = max(v for k, v in step.items() if "lora_A" in k)
    b = max(v for k, v in step.items() if "lora_B" in k)
    assert a == pytest.approx(lr, rel=1e-3) and b == pytest.approx(16 * lr, rel=1e-3), f"A step {a}, B step {b}"


def test_loraplus_ratio_and_a_given_optimizer_cannot_be_combined():
    """The ratio builds the optimizer; with one passed in, it would be silently ignored: refused."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    with pytest.raises(ValueError, match="loraplus_lr_ratio"):
        train(lm, None, None, TrainConfig(loraplus_lr_ratio=4.0), optimizer=AdamW())


# --------------------------------------------------------------------------- add_weighted_adapter
def two_adapters(rng, r2=3, **config):
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, **config),
                   adapter_name="a")
    lm.add_adapter("b", LoraConfig(r=r2, lora_alpha=6, target_modules=TARGETS, seed=1, **config))
    randomize(lm, ".lora_B.", rng, scale=0.5)
    return lm


def weighted_sum(lm, module, weights):
    """sum_i w_i s_i B_i A_i, written out by the test."""
    out = 0.0
    for adapter, w in weights.items():
        A, B_, s = lm.lora_factors(module, adapter)
        out = out + w * s * np.einsum("or,ri->oi", B_, A)
    return out


def test_cat_combination_equals_the_weighted_sum_of_updates_exactly(rng):
    """'cat' stacks ranks: its s B A is sum_i w_i s_i B_i A_i to rounding, so its logits are that model's."""
    lm = two_adapters(rng)
    errors = lm.add_weighted_adapter(["a", "b"], [0.7, -1.3], "ab", combination_type="cat")
    assert lm.active_adapter == "b" and max(errors.values()) < 1e-14, (lm.active_adapter, errors)
    params = {k: lm.params[k].copy() for k in lm.model.own_param_names()}
    for module in lm.modules["ab"]:
        A, B_, s = lm.lora_factors(module, "ab")
        assert A.shape[0] == 5 and s == 1.0, (A.shape, s)
        want = weighted_sum(lm, module, {"a": 0.7, "b": -1.3})
        assert np.allclose(s * B_ @ A, want, atol=1e-14), np.abs(s * B_ @ A - want).max()
        params[module + ".weight"] += want                  # W0 + dW: the model the combination must be
    lm.set_adapter("ab")
    idx = rng.integers(0, 13, (2, 6))
    assert np.allclose(lm.forward(idx)[0], GPT(lm.config, params).forward(idx)[0], atol=1e-12)


def test_svd_combination_reports_the_eckart_young_truncation_error(rng):
    """'svd' keeps rank svd_rank; the reported error is sqrt(sum of dropped sigma^2) / ||dW||, from NumPy's SVD."""
    lm = two_adapters(rng)
    errors = lm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "svd2", combination_type="svd", svd_rank=2)
    for module, reported in errors.items():
        S = np.linalg.svd(weighted_sum(lm, module, {"a": 1.0, "b": 1.0}), compute_uv=False)
        want = np.sqrt((S[2:] ** 2).sum() / (S ** 2).sum())
        assert reported == pytest.approx(want, rel=1e-10), f"{module}: reported {reported}, expected {want}"
        assert lm.lora_factors(module, "svd2")[0].shape[0] == 2


def test_linear_combination_needs_equal_ranks(rng):
    """'linear' mixes the factors themselves, so ranks must match (as PEFT); equal ranks combine."""
    with pytest.raises(ValueError, match="one rank"):
        two_adapters(rng).add_weighted_adapter(["a", "b"], [1.0, 1.0], "lin", combination_type="linear")
    lm = two_adapters(rng, r2=2)
    errors = lm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "lin", combination_type="linear")
    assert lm.lora_factors("blocks.0.attn.wq", "lin")[0].shape[0] == 2 and min(errors.values()) > 0, errors


@pytest.mark.parametrize("config, message", [({"use_dora": True}, "DoRA"), ({"bias": "lora_only"}, "biases"),
                                             ({"init_lora_weights": "pissa"}, "convert_to_plain_lora")])
def test_combinations_that_would_lose_training_are_refused(rng, config, message):
    """DoRA magnitudes, trained biases and PiSSA residuals do not add up as B A: refused by name."""
    lm = two_adapters(rng, **config)
    with pytest.raises(ValueError, match=message):
        lm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "ab", combination_type="cat")
    assert "ab" not in lm.adapters


def test_combining_into_an_existing_name_or_other_modules_is_refused(rng):
    """PEFT silently returns when the name exists; minilora says so. Different targets are refused too."""
    lm = two_adapters(rng)
    with pytest.raises(ValueError, match="exists already"):
        lm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "b")
    lm.add_adapter("c", LoraConfig(r=2, target_modules=["wq"]))
    with pytest.raises(ValueError, match="different modules"):
        lm.add_weighted_adapter(["a", "c"], [1.0, 1.0], "ac", combination_type="cat")
