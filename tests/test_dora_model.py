"""Specification of DoRA in a model: ``LoraConfig(use_dora=True)`` and the linear kind "dora" (Liu et al. 2024)."""
import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.adapters.dora import MAGNITUDE
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.peft_format import PREFIX, read_peft_adapter, write_peft_adapter
from minilora.nn.gradcheck import check_gradient, rel_error
from minilora.nn.layers import cross_entropy_forward
from minilora.nn.linears import LinearKind, LinearSpec, get_kind, register
from minilora.nn.loss import loss_and_grads
from minilora.nn.model import GPT

from helpers import check_model_gradients, lm_batch, randomize, tiny_float64_base
from interop_fixtures import ADAPTERS, expected, lora_modules, max_abs

ALL = ["wq", "wk", "wv", "wo", "fc", "proj"]


def row_norms(M):
    return np.sqrt(np.einsum("ij,ij->i", M, M))


def trained_dora(rng, dtype=np.float64, **config):
    """A DoRA LoraModel on the tiny base with random B (B = 0 would hide a wrong dA) and magnitudes
    that are not ||W0 + s B A|| (a factor of 1 would hide a wrong dm)."""
    base = tiny_float64_base(dtype=dtype)
    for name, p in base.params.items():                       # O(1) weights: no gradient passes on atol alone
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    lm = LoraModel(base, LoraConfig(**{"r": 2, "target_modules": ALL, "use_dora": True, **config}))
    randomize(lm, ".lora_B.", rng, scale=0.3)
    for name in lm.trainable:
        if MAGNITUDE in name:
            lm.params[name] *= (1 + 0.3 * rng.standard_normal(lm.params[name].shape)).astype(dtype)
    return lm


def twin(lm, **changes):
    """The same adapter (same tensors) on a copy of the base, with config fields changed."""
    import dataclasses
    base = GPT(lm.config, {k: lm.params[k].copy() for k in lm.model.own_param_names()})
    other = LoraModel(base, dataclasses.replace(lm.adapters["default"], **changes))
    for key, value in lm.adapter_state().items():
        other.params[other.param_name(key)][...] = value
    return other


def lm_loss(model, batch):
    return lambda: cross_entropy_forward(model.forward(batch["x"])[0], batch["y"], batch["mask"])[0]


# --------------------------------------------------------------------------- the wiring
def test_use_dora_builds_dora_layers_with_a_magnitude_per_output_row():
    """Each target becomes the kind "dora" reading m (d_out,) = ||W0|| row-wise, trainable with A and B."""
    base = tiny_float64_base()
    lm = LoraModel(base, LoraConfig(r=2, target_modules=["wq", "fc", "proj"], use_dora=True))
    spec = lm.model.linears["blocks.0.mlp.fc"]
    assert spec.kind == "dora" and spec.options["detach_norm"] is True, spec
    m = lm.params[spec.tensors["lora_magnitude"]]
    W0 = base.params["blocks.0.mlp.fc.weight"]
    assert m.shape == (64,) and np.allclose(m, row_norms(W0), rtol=1e-14), f"m {m.shape}, expected ||W0|| (64,)"
    assert spec.tensors["lora_magnitude"] in lm.trainable and spec.tensors["lora_A"] in lm.trainable


def test_dora_model_equals_base_model_at_init(rng):
    """m = ||W0|| and B = 0 at init: the logits are the base model's (§4.1)."""
    base = tiny_float64_base()
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    after, _ = LoraModel(base, LoraConfig(r=4, target_modules=ALL, use_dora=True)).forward(idx)
    err = np.abs(after - before).max()
    assert err < 1e-14, f"expected the base logits at init, max diff {err:.2e}"


# --------------------------------------------------------------------------- gradients through the model
def test_exact_dora_backward_matches_numerical_gradient_of_the_loss(rng):
    """dora_detach_norm=False: every A, B, m and bias gradient of the whole model is the true loss's (float64)."""
    lm = trained_dora(rng, dora_detach_norm=False, bias="lora_only", target_modules=["wq", "wv", "fc", "proj"])
    check_model_gradients(lm, lm_batch(rng), max_entries=10, atol=0.0)


def _fixed_norm_forward(x, t, *, scale, dropout=0.0, detach_norm=True, training=False, rng=None):
    """Eq. 5 with ||V|| read from the tensor "fixed_norm": the loss the §4.3 trick differentiates."""
    V = t["weight"] + scale * t["lora_B"] @ t["lora_A"]
    return (t["lora_magnitude"] / t["fixed_norm"]) * (x @ V.T) + t["bias"], None


FIXED = register(LinearKind("test_dora_fixed_norm", ("weight", "bias", "lora_A", "lora_B", "lora_magnitude",
                                                       "fixed_norm"), _fixed_norm_forward, None))


def fixed_norm_loss(lm, batch):
    """The loss with every DoRA layer's ||W0 + s B A|| frozen at its current value."""
    specs = dict(lm.model.linears)
    for module, spec in specs.items():
        if spec.kind == "dora":
            t = {role: lm.params[p] for role, p in spec.tensors.items()}
            V = t["weight"] + spec.options["scale"] * t["lora_B"] @ t["lora_A"]
            lm.params[f"{module}.fixed_norm"] = row_norms(V)
            lm.model.linears[module] = LinearSpec(FIXED.name, {**spec.tensors, "fixed_norm": f"{module}.fixed_norm"},
                                                  spec.options)

    def loss():
        return lm_loss(lm, batch)()
    return loss, lambda: lm.model.linears.update(specs)


def test_detached_dora_backward_is_the_gradient_of_the_loss_with_the_norm_held_fixed(rng):
    """§4.3 through the model: dA, dB match the fixed-norm loss; dm and the biases match the true loss."""
    lm = trained_dora(rng, bias="lora_only", target_modules=["wq", "fc"])
    batch = lm_batch(rng)
    _, grads = loss_and_grads(lm, batch)
    _, exact = loss_and_grads(twin(lm, dora_detach_norm=False), batch)
    true_loss = lm_loss(lm, batch)
    for name in sorted(n for n in grads if ".lora_A." not in n and ".lora_B." not in n):
        check_gradient(true_loss, lm.params[name], grads[name], name=name, max_entries=10, atol=0.0)
    loss, restore = fixed_norm_loss(lm, batch)
    try:
        for name in sorted(n for n in grads if ".lora_A." in n or ".lora_B." in n):
            check_gradient(loss, lm.params[name], grads[name], name=name, max_entries=10, atol=0.0)
    finally:
        restore()
    gap = rel_error(grads["blocks.0.attn.wq.lora_A.weight.default"], exact["blocks.0.attn.wq.lora_A.weight.default"])
    assert gap > 1e-3, f"the detached dA should differ from the exact one, relative gap {gap:.2e}"


def test_dora_dropout_trains_through_the_model_and_evaluates_as_the_merged_layer(rng):
    """With lora_dropout the training forward draws masks (PEFT's formula), eval equals the merged model."""
    lm = trained_dora(rng, dtype=np.float32, lora_dropout=0.3, target_modules=["wq", "fc"])
    idx = rng.integers(0, 13, (2, 6))
    train_out, _ = lm.forward(idx, training=True)
    eval_out, _ = lm.forward(idx)
    assert lm.stochastic and not np.allclose(train_out, eval_out), "training with dropout should differ from eval"
    _, grads = loss_and_grads(lm, lm_batch(rng))
    assert all(np.isfinite(g).all() for g in grads.values()), "non-finite gradient with dropout"
    lm.merge_adapter()
    err = np.abs(lm.forward(idx)[0] - eval_out).max() / np.abs(eval_out).max()
    assert err < 1e-5, f"eval forward vs merged forward: relative diff {err:.1e}"


def test_a_zero_row_of_w0_gives_finite_outputs_and_gradients(rng):
    """peft#2049: a row with ||W0|| = 0 gets the factor 0, so no NaN reaches the loss or a gradient."""
    base = tiny_float64_base()
    base.params["blocks.0.attn.wo.weight"][3] = 0.0
    lm = LoraModel(base, LoraConfig(r=2, target_modules=["wo"], use_dora=True))
    loss, grads = loss_and_grads(lm, lm_batch(rng))
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values()), (loss, grads.keys())
    m = lm.params[lm.param_name(f"blocks.0.attn.wo.{MAGNITUDE}")]
    assert m[3] == 0.0, f"expected the zero row's magnitude 0, got {m[3]}"


# --------------------------------------------------------------------------- merging
def test_merged_dora_forward_matches_unmerged_forward_in_float32(rng):
    """merge_adapter folds W' = m V / ||V|| into W0: the logits stay within float32 rounding."""
    lm = trained_dora(rng, dtype=np.float32)
    idx = rng.integers(0, 13, (2, 8))
    unmerged, _ = lm.forward(idx)
    lm.merge_adapter()
    merged, _ = lm.forward(idx)
    assert all(s.kind == "linear" for s in lm.model.linears.values()), "a merged model runs plain layers"
    err = np.abs(merged - unmerged).max() / np.abs(unmerged).max()
    assert err < 1e-5, f"merged vs unmerged logits: relative diff {err:.1e}"


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_merge_then_unmerge_restores_w0_with_trained_magnitudes(rng, dtype, tol):
    """With m != ||V|| (factor != 1), unmerge gives W0 back on square (wq) and non-square (fc, proj) weights."""
    lm = trained_dora(rng, dtype=dtype)
    w0 = {m: lm.params[f"{m}.weight"].copy() for m in ("blocks.0.attn.wq", "blocks.0.mlp.fc", "blocks.1.mlp.proj")}
    spec = lm.model.linears["blocks.0.mlp.fc"]
    t = {role: lm.params[p] for role, p in spec.tensors.items()}
    factor = t["lora_magnitude"] / row_norms(t["weight"] + spec.options["scale"] * t["lora_B"] @ t["lora_A"])
    assert np.abs(factor - 1).max() > 0.1, f"the magnitudes should look trained, factor {factor[:4]}"
    lm.merge_adapter()
    lm.unmerge_adapter()
    for module, W0 in w0.items():
        err = np.abs(lm.params[f"{module}.weight"] - W0).max() / np.abs(W0).max()
        assert err < tol, f"{module} {W0.shape}: unmerge left a relative error {err:.1e} >= {tol:.0e}"


def test_merge_and_unload_gives_rows_of_norm_m(rng):
    """merge_and_unload's plain weight is m * V / ||V||: its row norms are the trained magnitudes."""
    lm = trained_dora(rng)
    idx = rng.integers(0, 13, (2, 5))
    expected_logits, _ = lm.forward(idx)
    m = np.abs(lm.params[lm.param_name(f"blocks.1.attn.wv.{MAGNITUDE}")])
    plain = lm.merge_and_unload()
    norms = row_norms(plain.params["blocks.1.attn.wv.weight"])
    assert np.allclose(norms, m, rtol=1e-12), f"row norms {norms[:3]} vs |m| {m[:3]}"
    assert np.allclose(plain.forward(idx)[0], expected_logits, atol=1e-10)


# --------------------------------------------------------------------------- files
def test_dora_adapter_saves_the_magnitude_under_peft_name_and_loads_back(tmp_path, rng):
    """save_adapter writes {module}.lora_magnitude_vector (d_out,); load_adapter reproduces the logits exactly."""
    lm = trained_dora(rng)
    idx = rng.integers(0, 13, (2, 6))
    want, _ = lm.forward(idx)
    lm.save_adapter(tmp_path / "ad")
    tensors, _ = io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")
    key = PREFIX + "blocks.0.mlp.fc.lora_magnitude_vector"
    assert tensors[key].shape == (64,), sorted(tensors)[:6]
    fresh = LoraModel(GPT(lm.config, {k: lm.params[k].copy() for k in lm.model.own_param_names()}))
    fresh.load_adapter(tmp_path / "ad")
    assert fresh.adapters["default"].use_dora and np.array_equal(fresh.forward(idx)[0], want)


def test_dora_adapter_round_trips_through_peft_files(tmp_path, rng):
    """write_peft_adapter/read_peft_adapter keep use_dora and the magnitudes under PEFT's prefixed key."""
    lm = trained_dora(rng, target_modules=["wq", "wv"])
    write_peft_adapter(tmp_path, lm.adapters["default"], lora_modules(lm), lm.adapter_state())
    raw, _ = io.load_tensors(tmp_path / "adapter_model.safetensors")
    assert raw[f"base_model.model.blocks.1.attn.wv.{MAGNITUDE}"].shape == (16,), sorted(raw)[:4]
    config, tensors, _ = read_peft_adapter(tmp_path)
    state = lm.adapter_state()
    assert config["use_dora"] and all(np.array_equal(tensors[k], state[k]) for k in state), sorted(tensors)


def test_peft_dora_adapter_reproduces_peft_logits_through_lora_model():
    """PEFT's saved DoRA adapter (tests/fixtures/peft_adapters/dora), loaded into a LoraModel, gives PEFT's logits."""
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    from interop_fixtures import HF_TINY

    lm = LoraModel(GPT(*read_hf_gpt2(HF_TINY, dtype=np.float64)))
    lm.load_adapter(ADAPTERS / "dora")
    spec = lm.model.linears["blocks.1.attn.wv"]
    assert lm.adapters["default"].use_dora and spec.kind == "dora", spec
    ref = expected(ADAPTERS / "dora")
    logits, _ = lm.forward(ref["tokens"])
    err = max_abs(logits, ref["logits"])
    assert err < 1e-6, f"expected max |logits - PEFT's DoRA| < 1e-6, received {err:.2e}"
    lm.merge_adapter()
    err = max_abs(lm.forward(ref["tokens"])[0], ref["logits"])
    assert err < 1e-6, f"merged: expected max |logits - PEFT's DoRA| < 1e-6, received {err:.2e}"


# --------------------------------------------------------------------------- rsLoRA
def test_rslora_composes_with_dora(rng):
    """use_rslora with use_dora: scale alpha / sqrt(r) in the DoRA layers; the same model as alpha' = alpha sqrt(r)."""
    r, alpha = 4, 3.0
    rs = trained_dora(rng, r=r, lora_alpha=alpha, use_rslora=True)
    plain = twin(rs, use_rslora=False, lora_alpha=alpha * r ** 0.5)
    scale = rs.model.linears["blocks.0.attn.wq"].options["scale"]
    assert scale == pytest.approx(alpha / r ** 0.5, rel=1e-15), f"expected alpha/sqrt(r) = 1.5, got {scale}"
    idx = rng.integers(0, 13, (2, 6))
    assert np.allclose(rs.forward(idx)[0], plain.forward(idx)[0], atol=1e-13)


# --------------------------------------------------------------------------- PEFT's layer fixtures, through the kind
class _MaskRng:
    """Stands in for the model's generator: its draws reproduce a recorded keep-mask (keep where mask > 0)."""

    def __init__(self, mask):
        self.mask = mask

    def random(self, shape):
        assert tuple(shape) == self.mask.shape, (shape, self.mask.shape)
        return (self.mask > 0).astype(np.float64)


@pytest.mark.parametrize("case, rslora", [("plain", False), ("rslora", True), ("dropout", False)])
def test_dora_kind_with_lora_config_scale_reproduces_peft_layers(case, rslora):
    """The registered kind "dora", with the scale LoraConfig resolves (r=3, alpha=5), gives PEFT's y and grads."""
    from safetensors.numpy import load_file
    from interop_fixtures import FIXTURES

    files = load_file(str(FIXTURES / "peft_dora" / "dora.safetensors"))
    targets = resolve_targets(tiny_float64_base(), LoraConfig(r=3, lora_alpha=5, use_rslora=rslora))
    scale = targets["blocks.0.attn.wq"][1]
    kind = get_kind("dora")
    for name in ("blocks.0.attn.wq", "blocks.0.mlp.fc", "blocks.0.mlp.proj"):
        t = {k.split("/")[-1]: v for k, v in files.items() if k.startswith(f"{case}/{name}/")}
        roles = {"weight": t["W"], "bias": t["b"], "lora_A": t["A"], "lora_B": t["B"], "lora_magnitude": t["m"]}
        mask = t.get("mask")
        options = {"scale": scale, "dropout": 0.0 if mask is None else 1 - 1 / mask.max()}
        y, cache = kind.forward(t["x"], roles, training=True, rng=None if mask is None else _MaskRng(mask), **options)
        dx, grads = kind.backward(t["dy"], cache, frozenset({"lora_A", "lora_B", "lora_magnitude"}))
        got = {"y": y, "dx": dx, "dA": grads["lora_A"], "dB": grads["lora_B"], "dm": grads["lora_magnitude"]}
        errors = {k: float(np.abs(v - t[k]).max() / np.abs(t[k]).max()) for k, v in got.items()}
        assert max(errors.values()) < 1e-12, f"{case} {name}: relative errors against PEFT {errors}"


# --------------------------------------------------------------------------- the real PEFT
@pytest.mark.reference
def test_peft_loads_minilora_dora_adapter_to_the_same_logits(tmp_path):
    """A trained minilora DoRA adapter, written for PEFT, loads in PeftModel without a warning and gives our logits."""
    from interop_fixtures import HF_TINY, no_warnings_or_log_records, torch_mirror
    from minilora.interop.hf_gpt2 import read_hf_gpt2

    torch_gpt = torch_mirror()
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    rng = np.random.default_rng(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "wv", "fc"), use_dora=True, use_rslora=True)
    lm = LoraModel(GPT(*read_hf_gpt2(HF_TINY, dtype=np.float32)), config)
    for name, value in lm.adapter_state().items():           # as after training: B != 0, m != ||V||
        value += (0.3 * rng.standard_normal(value.shape)).astype(value.dtype)
    with lm.disable_adapter():
        base = {k: lm.model.params[k].copy() for k in lm.model.own_param_names()}
    lm.save_adapter(tmp_path)                                   # minilora's adapter folder is PEFT's
    with no_warnings_or_log_records("peft", "transformers"):
        model = peft.PeftModel.from_pretrained(torch_gpt.from_minilora_params(lm.config, base), tmp_path).eval()
    idx = rng.integers(0, lm.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).numpy()
    err = max_abs(lm.forward(idx)[0], theirs)
    assert err < 1e-5, f"expected max |minilora - PEFT| < 1e-5 for DoRA, received {err:.2e}"
