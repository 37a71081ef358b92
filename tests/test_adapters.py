"""Specification of the bottleneck adapter baseline (Houlsby et al. 2019; Hu et al. 2021, §5.1)."""
import math

import numpy as np
import pytest

from minilora.nn import backend
from minilora.adapters.bottleneck import (AdapterConfig, AdapterModel, adapter_backward, adapter_forward,
                               expected_trainable_count, init_adapter)
from minilora.data.datasets import make_dataset
from minilora.nn.gradcheck import check_layer
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.checkpoint import base_params
from minilora.nn.model import GPT, param_shapes
from minilora.nn.optim import AdamW
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import TrainConfig, train
from minilora.nn.loss import loss_and_grads

from helpers import TINY_LORA_BASE, adapted_model_and_base_logits, check_model_gradients, lm_batch, randomize, tiny_float64_base

VARIANTS = ["houlsby", "lin"]


def adapter_inputs(rng, B=2, T=3, C=6, m=4):
    return [rng.standard_normal((B, T, C)), rng.standard_normal((m, C)), rng.standard_normal(m),
            rng.standard_normal((C, m)), rng.standard_normal(C)]


# --------------------------------------------------------------------------- the layer
def test_adapter_backward_matches_numerical_gradient_with_nonzero_up_weights(rng):
    """dy, dW_down, db_down, dW_up, db_up agree with central differences (W_up random, not 0)."""
    errors = check_layer(adapter_forward, adapter_backward, adapter_inputs(rng),
                         names=["y", "W_down", "b_down", "W_up", "b_up"])
    assert max(errors.values()) < 1e-7, f"expected every relative error < 1e-7, got {errors}"


def test_adapter_forward_matches_its_closed_form(rng):
    """z = y + GELU(y W_down^T + b_down) W_up^T + b_up, with GPT-2's tanh GELU written out."""
    y, Wd, bd, Wu, bu = adapter_inputs(rng)
    h = y @ Wd.T + bd
    gelu = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    expected = y + gelu @ Wu.T + bu
    z, _ = adapter_forward(y, Wd, bd, Wu, bu)
    assert np.allclose(z, expected, atol=1e-12), f"expected the closed form, max diff {np.abs(z - expected).max():.2e}"


def test_adapter_is_the_identity_at_init(rng):
    """W_up = 0 and b_up = 0 at init, so z equals y bit for bit (Houlsby et al.: near-identity start)."""
    y = rng.standard_normal((2, 5, 8))
    weights = init_adapter(8, 3, rng=rng, dtype=np.float64)
    z, _ = adapter_forward(y, *weights.values())
    assert np.array_equal(z, y), f"expected z == y exactly, max diff {np.abs(z - y).max():.2e}"
    assert np.abs(weights["adapter_down.weight"]).max() > 0, "expected a random W_down, got all zeros"


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_model_equals_base_model_at_init(rng, variant):
    """W_up = 0, so the adapted model's logits equal the base model's exactly."""
    base = tiny_float64_base()
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    after, _ = AdapterModel(base, AdapterConfig(variant=variant, bottleneck=3)).forward(idx)
    assert np.array_equal(before, after), f"expected equal logits, max diff {np.abs(before - after).max():.2e}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_model_backward_matches_numerical_gradient(rng, variant):
    """Through the whole model, every adapter weight's gradient agrees with central differences."""
    am = AdapterModel(tiny_float64_base(), AdapterConfig(variant=variant, bottleneck=3))
    randomize(am, ".adapter_up.", rng)
    check_model_gradients(am, lm_batch(rng), max_entries=10)


def test_only_the_up_projection_gets_gradient_at_init(rng):
    """At step 0 W_up = 0, so dW_down = 0 and db_down = 0 (as LoRA's dA at B = 0); W_up moves first."""
    am = AdapterModel(tiny_float64_base(), AdapterConfig(bottleneck=3))
    _, grads = loss_and_grads(am, lm_batch(rng))
    down = max(float(np.abs(g).max()) for k, g in grads.items() if ".adapter_down." in k)
    up = min(float(np.abs(g).max()) for k, g in grads.items() if ".adapter_up." in k)
    assert down == 0.0 and up > 0.0, f"expected zero down- and non-zero up-gradients, got max |d down| = " \
                                     f"{down:.2e}, min over up tensors of max |d up| = {up:.2e}"


def test_only_adapters_train_and_base_weights_stay_bit_identical(rng):
    """Five AdamW steps move the adapters, give optimizer state to them only and leave the base untouched."""
    am = AdapterModel(tiny_float64_base(), AdapterConfig(bottleneck=3))
    frozen = {k: v.copy() for k, v in am.params.items() if ".adapter_" not in k}
    opt = AdamW(lr=1e-2)
    for _ in range(5):
        _, grads = loss_and_grads(am, lm_batch(rng))
        opt.step(am.params, grads)
    assert all(".adapter_" in k for k in am.trainable), f"expected adapter names only, got {sorted(am.trainable)[:4]}"
    assert set(opt.state) == am.trainable, f"expected state for {len(am.trainable)} tensors, got {len(opt.state)}"
    changed = [k for k, v in frozen.items() if not np.array_equal(am.params[k], v)]
    assert not changed, f"expected no base weight to change, got changes in {changed[:4]}"
    moved = float(np.abs(am.params[am.param_name("blocks.0.attn.wo.adapter_down.weight")]).max())
    assert np.abs(am.params[am.param_name("blocks.1.mlp.proj.adapter_up.weight")]).max() > 0 and moved > 0


@pytest.mark.parametrize("variant, per_block", [("houlsby", 2), ("lin", 1)])
def test_trainable_count_matches_the_formula(variant, per_block):
    """houlsby: L * 2 * (2 C m + m + C) trainable parameters; lin: half of that."""
    cfg = AdapterConfig(variant=variant, bottleneck=5)
    am = AdapterModel(tiny_float64_base(), cfg)
    L, C, m = TINY_LORA_BASE.n_layer, TINY_LORA_BASE.n_embd, 5
    expected = L * per_block * (2 * C * m + m + C)
    got = am.num_params(trainable_only=True)
    assert got == expected == expected_trainable_count(cfg, L, C), f"expected {expected}, got {got}"


def test_adapter_parameters_are_named_per_layer_and_excluded_from_base_params():
    """File keys are blocks.{i}.attn.wo.adapter_down.weight etc. (params add the adapter's name); base_params drops them."""
    am = AdapterModel(tiny_float64_base(), AdapterConfig(variant="houlsby", bottleneck=2))
    keys = set(am.adapter_state())
    assert {"blocks.1.attn.wo.adapter_down.weight", "blocks.0.mlp.proj.adapter_up.bias"} <= keys, sorted(keys)[:4]
    assert "blocks.1.attn.wo.adapter_down.weight.default" in am.params
    assert am.adapter_state()["blocks.0.attn.wo.adapter_up.weight"].shape == (16, 2), "W_up must be stored (C, m)"
    kept, plain = set(base_params(am.model)), set(param_shapes(TINY_LORA_BASE))
    assert kept == plain, f"expected the plain GPT's names, got these extra or missing: {sorted(kept ^ plain)[:4]}"


def test_modules_to_save_trains_the_classification_head(rng):
    """modules_to_save=('head',) trains the adapter's copy of the head; an unknown module is an error."""
    base = tiny_float64_base()
    base.add_classification_head(3)
    am = AdapterModel(base, AdapterConfig(variant="lin", bottleneck=2, modules_to_save=("head",)))
    head = {am.param_name("head.weight"), am.param_name("head.bias")}
    assert head <= am.trainable, f"expected the head to train, got {sorted(am.trainable)[-3:]}"
    with pytest.raises(ValueError, match="matches no module"):
        AdapterModel(tiny_float64_base(), AdapterConfig(modules_to_save=("nothing",)))


def test_bad_variant_or_bottleneck_is_a_clear_error():
    """An unknown variant names the valid ones; m < 1 names the value it got."""
    with pytest.raises(ValueError, match=r"choose one of \['houlsby', 'lin'\]"):
        AdapterConfig(variant="pfeiffer")
    for m in (0, -3, 2.5):
        with pytest.raises(ValueError, match="bottleneck size m must be a positive integer"):
            AdapterConfig(bottleneck=m)


def test_a_second_wrapper_on_an_adapted_model_is_refused():
    """A LoRA adapter on attn.wo and an AdapterH wrapping the same GPT would overwrite each other: refused."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=["wo"]))
    with pytest.raises(ValueError, match="already carries adapters"):
        AdapterModel(lm.model, AdapterConfig(variant="houlsby"))


def test_training_an_unfrozen_wrapped_base_layer_is_refused(rng):
    """The hook computes no dW0; unfreezing attn.wo under an adapter raises instead of silently not training it."""
    am = AdapterModel(tiny_float64_base(), AdapterConfig(bottleneck=2))
    am.model.unfreeze(["blocks.0.attn.wo.weight"])
    with pytest.raises(RuntimeError, match="stays frozen"):
        loss_and_grads(am, lm_batch(rng))


def test_unload_returns_the_plain_base_model(rng):
    """unload removes adapter weights and hooks: the model then computes the base logits again."""
    am, idx, before = adapted_model_and_base_logits(lambda base: AdapterModel(base, AdapterConfig(bottleneck=2)),
                                                    ".adapter_up.", rng, T=5)
    assert not np.allclose(am.forward(idx)[0], before), "expected random adapters to change the logits"
    plain = am.unload()
    after, _ = plain.forward(idx)
    assert all(s.kind == "linear" for s in plain.linears.values()), "no adapter layer may be left"
    assert set(plain.params) == set(param_shapes(TINY_LORA_BASE)) and not plain.trainable
    assert np.array_equal(after, before), f"expected the base logits, max diff {np.abs(after - before).max():.2e}"


def test_train_loop_adapts_the_shipped_base_to_a_new_task():
    """minilora.experiments.train.train runs an AdapterModel: 15 steps on rotate take the loss below 75% of the start."""
    base, _ = load_base()
    am = AdapterModel(base, AdapterConfig(variant="houlsby", bottleneck=8))
    data = make_dataset("rotate", 200, seed=0, block_size=base.config.block_size)
    hist = train(am, data, None, TrainConfig(steps=15, batch_size=8, lr=1e-2, warmup_steps=3, progress=False))
    start, end = np.mean(hist.losses[:3]), np.mean(hist.losses[-3:])
    assert end < 0.75 * start, f"expected the loss to fall below {0.75 * start:.3f}, got {start:.3f} -> {end:.3f}"
    expected = expected_trainable_count(am.adapter_config, base.config.n_layer, base.config.n_embd)
    assert hist.trainable_params == expected, f"expected {expected} trainable, got {hist.trainable_params}"


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA GPU")
def test_adapter_model_on_cupy_matches_numpy(rng):
    """The same AdapterModel on CuPy gives NumPy's logits and gradients at float32 tolerance."""
    batch = {k: (v.astype(np.float32) if k == "mask" else v) for k, v in lm_batch(rng).items()}
    results = {}
    try:
        for name in ("numpy", "cupy"):
            backend.set_backend(name)
            am = AdapterModel(GPT(TINY_LORA_BASE, seed=0), AdapterConfig(bottleneck=4))
            for k, v in am.params.items():
                if ".adapter_up." in k:
                    v[...] = backend.asarray(0.1 * np.random.default_rng(1).standard_normal(v.shape), dtype=v.dtype)
            loss, grads = loss_and_grads(am, {k: backend.asarray(v) for k, v in batch.items()})
            results[name] = (loss, {k: backend.to_numpy(g) for k, g in grads.items()})
    finally:
        backend.set_backend("numpy")
    (l_np, g_np), (l_cp, g_cp) = results["numpy"], results["cupy"]
    assert abs(l_np - l_cp) < 1e-5, f"expected equal losses, got {l_np} (numpy) vs {l_cp} (cupy)"
    for k in g_np:
        assert np.allclose(g_np[k], g_cp[k], rtol=1e-4, atol=1e-6), f"{k}: max diff {np.abs(g_np[k] - g_cp[k]).max():.2e}"
