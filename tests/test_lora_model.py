"""Specification of LoraModel (Hu et al. 2021, §4): adapters on a frozen GPT, merging, switching, files."""
import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT
from minilora.nn.optim import AdamW
from minilora.nn.loss import loss_and_grads

from helpers import TINY_LORA_BASE, adapted_model_and_base_logits, check_model_gradients, lm_batch, randomize, tiny_float64_base


def random_base(seed=0):
    """A float64 base with O(1) random weights, so no gradient is small enough to pass on atol alone."""
    model = tiny_float64_base(seed)
    rng = np.random.default_rng(seed + 11)
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return model


# --------------------------------------------------------------------------- the model
def test_lora_model_equals_base_model_at_init(rng):
    """§4.1: B = 0, so the adapted model's logits equal the base model's exactly."""
    base = tiny_float64_base()
    idx = rng.integers(0, 13, (2, 7))
    before, _ = base.forward(idx)
    lm = LoraModel(base, LoraConfig(r=4, target_modules=["wq", "wk", "wv", "wo", "fc", "proj"]))
    after, _ = lm.forward(idx)
    assert np.array_equal(before, after)


def test_lora_model_backward_matches_numerical_gradient(rng):
    """Through the whole model, dA and dB of every adapter and the head agree with central differences."""
    lm = LoraModel(random_base(), LoraConfig(r=2, target_modules=["wq", "wv", "fc"], bias="lora_only"))
    randomize(lm, ".lora_B.", rng)
    check_model_gradients(lm, lm_batch(rng), max_entries=12, atol=0.0)


def test_only_adapter_weights_get_optimizer_state(rng):
    """AdamW holds m and v for A and B only: frozen weights cost no optimizer memory."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    opt = AdamW(lr=1e-2)
    _, grads = loss_and_grads(lm, lm_batch(rng))
    opt.step(lm.params, grads)
    assert set(opt.state) == lm.trainable
    assert opt.state_bytes() == 2 * 8 * lm.num_params(trainable_only=True)


def test_frozen_weights_are_bit_identical_after_training(rng):
    """Ten LoRA steps change A and B but leave every base weight bit for bit as it was."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=["wq", "wv", "fc"]))
    frozen = {k: lm.params[k].copy() for k in lm.model.own_param_names()}
    opt = AdamW(lr=1e-2)
    for _ in range(10):
        _, grads = loss_and_grads(lm, lm_batch(rng))
        opt.step(lm.params, grads)
    assert all(np.array_equal(lm.params[k], v) for k, v in frozen.items())
    assert np.abs(lm.params[lm.param_name("blocks.0.attn.wq.lora_B.weight")]).max() > 0


def test_merged_forward_matches_unmerged_forward(rng):
    """§4.1: after merging W = W0 + sBA the logits equal the unmerged model's (float32 tolerance)."""
    lm = LoraModel(tiny_float64_base(dtype=np.float32), LoraConfig(r=4, target_modules=["wq", "wv", "fc"]))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 8))
    unmerged, _ = lm.forward(idx)
    lm.merge_adapter()
    assert all(s.kind == "linear" for s in lm.model.linears.values()), "a merged model must run plain linear layers"
    merged, _ = lm.forward(idx)
    assert np.allclose(merged, unmerged, rtol=1e-5, atol=1e-5), np.abs(merged - unmerged).max()


def test_merge_then_unmerge_restores_the_base_logits(rng):
    """merge_adapter then unmerge_adapter gives W0 back within float32 rounding."""
    lm = LoraModel(tiny_float64_base(dtype=np.float32), LoraConfig(r=4))
    randomize(lm, ".lora_B.", rng)
    w0 = lm.params["blocks.0.attn.wq.weight"].copy()
    lm.merge_adapter()
    assert not np.allclose(lm.params["blocks.0.attn.wq.weight"], w0)
    lm.unmerge_adapter()
    err = np.abs(lm.params["blocks.0.attn.wq.weight"] - w0).max()
    assert err < 1e-7, f"unmerge left {err:.1e} (float32 rounding should be ~1e-9 here)"


def test_merging_twice_unmerging_unmerged_and_training_merged_are_errors(rng):
    """Each misuse of merge state raises a clear error."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    with pytest.raises(RuntimeError, match="not merged"):
        lm.unmerge_adapter()
    lm.merge_adapter()
    with pytest.raises(RuntimeError, match="already merged"):
        lm.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        loss_and_grads(lm, lm_batch(rng))


def test_safe_merge_refuses_non_finite_weights_and_changes_nothing(rng):
    """A NaN in B makes the merge raise (safe_merge, on by default) and leaves W0 untouched."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    lm.params[lm.param_name("blocks.1.attn.wv.lora_B.weight")][0, 0] = np.nan
    w0 = {k: lm.params[k].copy() for k in ("blocks.0.attn.wq.weight", "blocks.1.attn.wv.weight")}
    with pytest.raises(ValueError, match="NaN or inf"):
        lm.merge_adapter(safe_merge=True)
    assert all(np.array_equal(lm.params[k], v) for k, v in w0.items()) and not lm.merged


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs(rng):
    """merge_and_unload returns a GPT without adapter weights or hooks, equal to the adapted model."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 5))
    expected, _ = lm.forward(idx)
    plain = lm.merge_and_unload()
    assert set(plain.params) == set(plain.own_param_names()), "no adapter tensor may be left in a plain model"
    assert all(s.kind == "linear" for s in plain.linears.values())
    assert np.allclose(plain.forward(idx)[0], expected, atol=1e-10)


def test_disable_adapter_gives_the_base_logits_exactly(rng):
    """Inside disable_adapter() the model is the base model, bit for bit; after it, the adapter is back."""
    lm, idx, reference = adapted_model_and_base_logits(lambda base: LoraModel(base, LoraConfig(r=2)), ".lora_B.", rng)
    adapted, _ = lm.forward(idx)
    with lm.disable_adapter():
        assert np.array_equal(lm.forward(idx)[0], reference)
    assert np.array_equal(lm.forward(idx)[0], adapted) and not np.allclose(adapted, reference)


def test_switching_adapters_gives_each_adapters_own_outputs(rng):
    """Two adapters on one base: set_adapter selects whose update is applied."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, seed=1), adapter_name="one")
    lm.add_adapter("two", LoraConfig(r=3, target_modules=["wk"], seed=2))
    randomize(lm, ".lora_B.", rng)
    idx = rng.integers(0, 13, (2, 6))
    out_two, _ = lm.forward(idx)
    lm.set_adapter("one")
    out_one, _ = lm.forward(idx)
    lm.delete_adapter("two")
    assert np.array_equal(lm.forward(idx)[0], out_one) and not np.allclose(out_one, out_two)
    assert set(lm.trainable) == {k for k in lm.params if k.endswith(".one")}


def test_adapters_keep_their_own_classification_heads(rng):
    """modules_to_save gives each adapter its own trained copy of the head; the base head stays as it was."""
    base = tiny_float64_base()
    base.add_classification_head(3)
    base_head = base.params["head.weight"].copy()
    lm = LoraModel(base, LoraConfig(r=2, modules_to_save=["head"]), adapter_name="a")
    step = rng.standard_normal(base_head.shape)
    lm.params[lm.param_name("head.weight")] += step          # "training" adapter a's head
    lm.add_adapter("b", LoraConfig(r=2, modules_to_save=["head"]))
    assert {"head.weight.b", "head.bias.b"} <= lm.trainable and "head.weight" not in lm.trainable
    idx, last = rng.integers(0, 13, (2, 6)), np.array([5, 2])
    out_b, _ = lm.classify(idx, last)
    lm.set_adapter("a")
    out_a, _ = lm.classify(idx, last)
    assert not np.allclose(out_a, out_b), "adapter a must read its own head"
    assert np.allclose(lm.params["head.weight.a"] - lm.params["head.weight.b"], step)
    assert np.array_equal(lm.params["head.weight"], base_head), "the base head must not move"


# --------------------------------------------------------------------------- files
def test_adapter_save_load_round_trip(tmp_path, rng):
    """A saved adapter loaded onto the same base reproduces the adapted logits exactly."""
    base = tiny_float64_base()
    base.add_classification_head(2)
    lm = LoraModel(base, LoraConfig(r=2, modules_to_save=["head"]), adapter_name="task")
    randomize(lm, ".lora_B.", rng)
    lm.params[lm.param_name("head.bias")][:] = [0.5, -0.5]
    idx, last = rng.integers(0, 13, (2, 6)), np.array([5, 2])
    expected, _ = lm.classify(idx, last)
    lm.save_adapter(tmp_path / "ad")
    keys = set(io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")[0])
    want = {"base_model.model.blocks.0.attn.wq.lora_A.weight", "base_model.model.head.weight"}
    assert want <= keys, f"expected PEFT's keys {want} among {sorted(keys)[:6]}"
    fresh = tiny_float64_base()
    fresh.add_classification_head(2)
    lm2 = LoraModel(fresh)
    lm2.load_adapter(tmp_path / "ad")
    assert lm2.active_adapter == "task"
    assert np.array_equal(lm2.classify(idx, last)[0], expected)


def test_adapter_file_holds_peft_shapes(tmp_path):
    """lora_A is (r, d_in) and lora_B is (d_out, r) in the file, as PEFT stores them."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=3, target_modules=["fc"]))
    lm.save_adapter(tmp_path / "ad")
    t, _ = io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")
    a, b = t["base_model.model.blocks.0.mlp.fc.lora_A.weight"], t["base_model.model.blocks.0.mlp.fc.lora_B.weight"]
    assert (a.shape, b.shape) == ((3, 16), (64, 3)), f"expected (3, 16) and (64, 3), received {a.shape}, {b.shape}"


def test_loading_onto_a_different_base_is_refused(tmp_path):
    """The fingerprint of the base model is checked: another base raises CheckpointError."""
    LoraModel(tiny_float64_base(seed=0), LoraConfig(r=2)).save_adapter(tmp_path / "ad")
    other = LoraModel(tiny_float64_base(seed=1))
    with pytest.raises(io.CheckpointError, match="different base model"):
        other.load_adapter(tmp_path / "ad")
    assert not other.adapters, "a refused adapter must leave nothing behind"


def test_loading_an_adapter_with_other_shapes_is_refused(tmp_path):
    """Tensors whose shapes disagree with the config are refused, and nothing is left half-loaded."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2))
    lm.save_adapter(tmp_path / "ad")
    meta = io.read_json(tmp_path / "ad" / "adapter_config.json")
    meta["r"] = 3
    io.write_json(tmp_path / "ad" / "adapter_config.json", meta)
    fresh = LoraModel(tiny_float64_base())
    with pytest.raises(io.CheckpointError, match="rank r = 3"):
        fresh.load_adapter(tmp_path / "ad")
    assert not fresh.adapters and not any(".lora_" in k for k in fresh.params)


def test_trainable_report_counts_percent_and_adam_bytes(capsys):
    """The report gives trainable/total counts, their percent, and 8 bytes of Adam state per float32 weight."""
    lm = LoraModel(GPT(TINY_LORA_BASE, seed=0), LoraConfig(r=2))          # float32
    rep = lm.trainable_report()
    n = 2 * 4 * 16 * 2
    assert rep["trainable"] == n and rep["adam_state_bytes"] == 8 * n
    assert rep["percent"] == pytest.approx(100 * n / rep["total"])
    lm.print_trainable_parameters()
    assert f"trainable params: {n:,}" in capsys.readouterr().out
