"""Spec: QDoRA, DoRA on a 4-bit base (Liu et al. 2024 on Dettmers et al. 2023's base), through LoraModel.

Expected values: the 4-bit base's own outputs, the row norms of the textbook dequantization
(``QuantizedTensor.dequantize``), central differences in float64 (minilora.nn.gradcheck) with random
non-zero B and magnitudes that are not ||V||, and the float model the merge gives.
"""
import numpy as np
import pytest

from minilora.adapters import qlinear
from minilora.adapters.config import LoraConfig
from minilora.adapters.dora import MAGNITUDE
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import quantize_base, quantized_weights
from minilora.adapters.qfiles import load_quantized, save_quantized
from minilora.adapters.qlinear import Held4bit, QUANT_OPTIONS, frozen_weight
from minilora.nn.gradcheck import check_gradient, rel_error
from minilora.nn.layers import cross_entropy_forward
from minilora.nn.linears import LinearKind, LinearSpec, get_kind, register
from minilora.nn.loss import forward_loss, loss_and_grads
from minilora.nn.optim import AdamW

from helpers import TINY_LORA_BASE, check_model_gradients, lm_batch, randomize, tiny_float64_base

ALL = ["wq", "wk", "wv", "wo", "fc", "proj"]


def row_norms(M):
    return np.sqrt(np.einsum("ij,ij->i", M, M))


def random_4bit_base(rng, dtype=np.float64):
    """A base with O(1) random weights (no gradient passes on atol alone), its block linears in NF4 + DQ."""
    model = tiny_float64_base(dtype=dtype)
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return quantize_base(model, "nf4", double_quant=True)


def trained_qdora(rng, dtype=np.float64, **config):
    """QDoRA with random B (B = 0 hides a wrong dA) and magnitudes off ||V|| (a factor of 1 hides a wrong dm)."""
    lm = LoraModel(random_4bit_base(rng, dtype), LoraConfig(**{"r": 2, "target_modules": ALL, "use_dora": True,
                                                               **config}))
    randomize(lm, ".lora_B.", rng, scale=0.3)
    for name in lm.trainable:
        if MAGNITUDE in name:
            lm.params[name] *= (1 + 0.3 * rng.standard_normal(lm.params[name].shape)).astype(dtype)
    return lm


def lm_loss(model, batch):
    return lambda: cross_entropy_forward(model.forward(batch["x"])[0], batch["y"], batch["mask"])[0]


def cached_items(caches):
    """Every leaf of the nested caches of one forward."""
    stack, out = [caches], []
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        else:
            out.append(item)
    return out


# --------------------------------------------------------------------------- building
def test_qdora_equals_the_4bit_base_at_init(rng):
    """m = ||dequant(W0)|| and B = 0: QDoRA's logits equal the 4-bit base's bit for bit (§4.1)."""
    base = quantize_base(tiny_float64_base())
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    lm = LoraModel(base, LoraConfig(r=4, target_modules=ALL, use_dora=True))
    after, _ = lm.forward(idx)
    assert lm.model.linears["blocks.0.attn.wq"].kind == "dora", lm.model.linears["blocks.0.attn.wq"]
    assert np.array_equal(before, after), f"max |diff| {np.abs(before - after).max():.2e}"


def test_qdora_magnitude_is_the_row_norm_of_the_dequantized_weight():
    """m (d_out,) = ||dequant(W0)|| row-wise (PEFT's dequantize_module_weight), not the float W0's norms."""
    float_base = tiny_float64_base()
    W_float = float_base.params["blocks.0.mlp.fc.weight"].copy()
    lm = LoraModel(quantize_base(float_base), LoraConfig(r=2, target_modules=["fc"], use_dora=True))
    W_dq = quantized_weights(lm.model, lm.base_linears)["blocks.0.mlp.fc"].dequantize(np.float64)
    m = lm.params[lm.param_name(f"blocks.0.mlp.fc.{MAGNITUDE}")]
    assert m.shape == (64,) and np.allclose(m, row_norms(W_dq), rtol=1e-14, atol=0), \
        f"m {m[:3]} vs ||dequant(W0)|| {row_norms(W_dq)[:3]}"
    assert np.abs(m - row_norms(W_float)).max() > 1e-6, "m equals the float weight's norms: 4 bits were not read"


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_on_a_4bit_base_are_refused_with_the_reason(init):
    """Their residual W0 - s B A would be a float copy of the weight: a ValueError says so and what to do."""
    with pytest.raises(ValueError, match="stored in 4 bits.*residual"):
        LoraModel(quantize_base(tiny_float64_base()), LoraConfig(r=2, init_lora_weights=init))


# --------------------------------------------------------------------------- gradients (float64)
def test_exact_qdora_backward_matches_numerical_gradient_of_the_true_loss(rng):
    """dora_detach_norm=False on the 4-bit base: every A, B, m and bias gradient is the true loss's."""
    lm = trained_qdora(rng, dora_detach_norm=False, bias="lora_only", target_modules=["wq", "wv", "fc", "proj"])
    check_model_gradients(lm, lm_batch(rng), max_entries=8, atol=0.0)


def _fixed_norm_forward(x, t, *, scale, dropout=0.0, detach_norm=True, training=False, rng=None, **quant):
    """Eq. 5 on the dequantized W0 with ||V|| read from the tensor "fixed_norm": what the §4.3 trick differentiates."""
    V = frozen_weight(x.dtype, t, quant) + scale * t["lora_B"] @ t["lora_A"]
    y = (t["lora_magnitude"] / t["fixed_norm"]) * (x @ V.T)
    return (y if t.get("bias") is None else y + t["bias"]), None


FIXED = register(LinearKind("test_qdora_fixed_norm", ("lora_A", "lora_B", "lora_magnitude", "fixed_norm"),
                            _fixed_norm_forward, None))


def test_detached_qdora_backward_is_the_gradient_of_the_loss_with_the_norm_held_fixed(rng):
    """§4.3 on the 4-bit base: dA, dB match the fixed-norm loss; dm and the biases match the true loss."""
    lm = trained_qdora(rng, bias="lora_only", target_modules=["wq", "fc"])
    batch = lm_batch(rng)
    _, grads = loss_and_grads(lm, batch)
    for name in sorted(n for n in grads if ".lora_A." not in n and ".lora_B." not in n):
        check_gradient(lm_loss(lm, batch), lm.params[name], grads[name], name=name, max_entries=8, atol=0.0)
    specs = dict(lm.model.linears)
    try:
        for module, spec in specs.items():
            if spec.kind == "dora":
                t = {role: lm.params[p] for role, p in spec.tensors.items()}
                quant = {k: v for k, v in spec.options.items() if k in QUANT_OPTIONS}
                V = frozen_weight(np.float64, t, quant) + spec.options["scale"] * t["lora_B"] @ t["lora_A"]
                lm.params[f"{module}.fixed_norm"] = row_norms(V)
                roles = {**spec.tensors, "fixed_norm": f"{module}.fixed_norm"}
                lm.model.linears[module] = LinearSpec(FIXED.name, roles, spec.options)
        for name in sorted(n for n in grads if ".lora_A." in n or ".lora_B." in n):
            check_gradient(lm_loss(lm, batch), lm.params[name], grads[name], name=name, max_entries=8, atol=0.0)
    finally:
        lm.model.linears.update(specs)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_qdora_layer_dx_and_dm_match_numerical_gradients_of_the_true_output(rng, detach_norm):
    """One 4-bit DoRA layer: dx and dm are the true output's gradients in both modes (C depends on neither)."""
    lm = trained_qdora(rng, dora_detach_norm=detach_norm, target_modules=["fc"])
    spec = lm.model.linears["blocks.0.mlp.fc"]
    t = {role: lm.params[p] for role, p in spec.tensors.items()}
    kind = get_kind("dora")
    x, dy = rng.standard_normal((3, 5, 16)), rng.standard_normal((3, 5, 64))
    _, cache = kind.forward(x, t, **spec.options)
    dx, grads = kind.backward(dy, cache, frozenset({"lora_A", "lora_B", "lora_magnitude"}))

    def out():
        return float((kind.forward(x, t, **spec.options)[0] * dy).sum())

    check_gradient(out, x, dx, name="x", atol=0.0)
    check_gradient(out, t["lora_magnitude"], grads["lora_magnitude"], name="m", atol=0.0)
    if detach_norm is False:                                  # the detached dA is the fixed-norm loss's
        check_gradient(out, t["lora_A"], grads["lora_A"], name="A", atol=0.0)


def test_detaching_the_norm_changes_dA_on_the_4bit_base_too(rng):
    """The two modes differ in dA (the eq. 6 projection), so the tests above can tell them apart."""
    lm = trained_qdora(rng, target_modules=["wq"])
    batch = lm_batch(rng)
    _, detached = loss_and_grads(lm, batch)
    lm.adapters["default"].dora_detach_norm = False
    for spec in lm.model.linears.values():
        if spec.kind == "dora":
            spec.options["detach_norm"] = False
    _, exact = loss_and_grads(lm, batch)
    name = lm.param_name("blocks.0.attn.wq.lora_A.weight")
    gap = rel_error(detached[name], exact[name])
    assert gap > 1e-3, f"the detached dA should differ from the exact one, relative gap {gap:.2e}"


# --------------------------------------------------------------------------- what is kept and computed
def test_only_A_B_and_m_train_and_the_4bit_weights_stay_bit_identical(rng):
    """Ten QDoRA steps move A, B and m; no gradient exists for any code or scale, and none of them changes."""
    lm = trained_qdora(rng, dtype=np.float32, target_modules=["wq", "wv", "fc"])
    expected = {lm.param_name(f"{m}.{f}") for m in lm.model.linears if lm.model.linears[m].kind == "dora"
                for f in ("lora_A.weight", "lora_B.weight", MAGNITUDE)}
    frozen = {k: lm.params[k].copy() for k in lm.model.own_param_names()}
    m0 = lm.params[lm.param_name(f"blocks.0.attn.wq.{MAGNITUDE}")].copy()
    opt = AdamW(lr=1e-2)
    for _ in range(10):
        _, grads = loss_and_grads(lm, lm_batch(rng))
        assert set(grads) == lm.trainable == expected, f"unexpected gradients {sorted(set(grads) ^ expected)[:3]}"
        opt.step(lm.params, grads)
    changed = [k for k, v in frozen.items() if not np.array_equal(lm.params[k], v)]
    assert not changed, f"frozen tensors changed: {changed[:3]}"
    assert not np.array_equal(lm.params[lm.param_name(f"blocks.0.attn.wq.{MAGNITUDE}")], m0), "m did not train"


def test_marking_a_4bit_part_trainable_is_refused(rng):
    """The "dora" kind's backward refuses a gradient for the codes: a 4-bit weight has none (QLoRA eq. 6)."""
    lm = trained_qdora(rng, target_modules=["wq"])
    spec = lm.model.linears["blocks.0.attn.wq"]
    t = {role: lm.params[p] for role, p in spec.tensors.items()}
    kind = get_kind("dora")
    _, cache = kind.forward(rng.standard_normal((2, 16)), t, **spec.options)
    with pytest.raises(RuntimeError, match="4-bit weight gets no gradient"):
        kind.backward(rng.standard_normal((2, 16)), cache, frozenset({"lora_A", "codes"}))


@pytest.mark.parametrize("detach_norm", [True, False])
def test_each_product_dequantizes_its_weight_once(rng, monkeypatch, detach_norm):
    """A QDoRA step dequantizes every 4-bit weight twice (x W^T, dy W), the exact mode included. No more."""
    lm = LoraModel(quantize_base(tiny_float64_base()),
                   LoraConfig(r=2, target_modules=["wq", "wv"], use_dora=True, dora_detach_norm=detach_norm))
    calls = []
    original = qlinear.dequantize_fast
    monkeypatch.setattr(qlinear, "dequantize_fast", lambda q, dtype=None: calls.append(q.shape) or original(q, dtype))
    loss_and_grads(lm, lm_batch(rng))
    n = len(TINY_LORA_BASE.linear_names())
    assert len(calls) == 2 * n, f"expected {2 * n} dequantizations for {n} 4-bit layers, got {len(calls)}"


@pytest.mark.parametrize("detach_norm", [True, False])
def test_caches_keep_4bit_weights_and_no_float_array_of_a_weight_shape(rng, detach_norm):
    """Between forward and backward QDoRA holds codes: neither W0 nor V = W0 + s B A is cached as floats."""
    lm = LoraModel(quantize_base(tiny_float64_base()),
                   LoraConfig(r=2, target_modules=["wq", "wv", "fc"], use_dora=True, dora_detach_norm=detach_norm))
    _, _, caches = forward_loss(lm, lm_batch(rng, B=3, T=5), training=True)   # N = 15 rows, no weight's size
    items = cached_items(caches)
    shapes = {lm.model.weight_shape(n) for n in TINY_LORA_BASE.linear_names()}
    held = sum(isinstance(i, Held4bit) for i in items)
    floats = [i.shape for i in items if isinstance(i, np.ndarray) and i.dtype.kind == "f" and i.shape in shapes]
    assert held == 2 * 3, f"expected 6 held 4-bit weights (wq, wv, fc of 2 blocks), found {held}"
    assert not floats, f"float arrays of a weight's shape in the caches: {floats}"


def test_dora_on_a_float_base_caches_no_copy_of_the_weight(rng):
    """DoRA's cache drops V on a float base too: the only weight-shaped arrays it holds are the parameters."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=ALL, use_dora=True))
    _, _, caches = forward_loss(lm, lm_batch(rng, B=3, T=5), training=True)
    params = {id(p) for p in lm.params.values()}
    shapes = {lm.model.weight_shape(n) for n in TINY_LORA_BASE.linear_names()}
    copies = [i.shape for i in cached_items(caches)
              if isinstance(i, np.ndarray) and i.shape in shapes and id(i) not in params]
    assert not copies, f"weight-shaped arrays that are not parameters in the caches: {copies}"


# --------------------------------------------------------------------------- merging and files
def test_merge_and_unload_gives_a_float_model_with_the_trained_qdora_outputs(rng):
    """W' = m (dequant(W0) + s B A) / ||.|| in float32: the merged model's logits equal the unmerged QDoRA's."""
    lm = trained_qdora(rng, dtype=np.float32)
    idx = rng.integers(0, 13, (2, 8))
    expected, _ = lm.forward(idx)
    plain = lm.merge_and_unload()
    assert not plain.weight_parts and plain.dtype == np.float32, "the merged model is not a float model"
    received, _ = plain.forward(idx)
    err = np.abs(received - expected).max() / np.abs(expected).max()
    assert err < 1e-5, f"merged vs unmerged QDoRA logits: relative diff {err:.1e}"
    m = lm.params[lm.param_name(f"blocks.1.attn.wv.{MAGNITUDE}")]
    norms = row_norms(plain.params["blocks.1.attn.wv.weight"])
    assert np.allclose(norms, np.abs(m), rtol=1e-5), f"row norms {norms[:3]} vs |m| {m[:3]}"


def test_a_qdora_adapter_and_its_4bit_base_round_trip_through_files(rng, tmp_path):
    """save_quantized + save_adapter, then load_quantized + load_adapter: the same logits bit for bit."""
    lm = trained_qdora(rng, dtype=np.float32, target_modules=["wq", "wv", "proj"])
    idx = rng.integers(0, 13, (2, 6))
    expected, _ = lm.forward(idx)
    with lm.disable_adapter():
        save_quantized(lm.model, tmp_path / "base")
    lm.save_adapter(tmp_path / "adapter")
    base, _ = load_quantized(tmp_path / "base")
    again = LoraModel(base)
    again.load_adapter(tmp_path / "adapter")
    assert again.adapters["default"].use_dora and again.model.linears["blocks.0.attn.wq"].kind == "dora"
    received, _ = again.forward(idx)
    assert np.array_equal(received, expected), f"max |diff| {np.abs(received - expected).max():.2e}"
