"""Specification of LoRA's bookkeeping: what trains while an adapter is active, and merging
adapters into the frozen weights and back (Hu et al. 2021, §4.1-4.2)."""
import numpy as np
import pytest

from minilora.adapters.adapted import saved_param_names
from minilora.adapters.bookkeeping import lora_keys, merge_adapters, trainable_names, unmerge_adapters
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora import merge_weights
from minilora.adapters.lora_model import LoraModel
from minilora.nn.optim import AdamW

from helpers import randomize, tiny_float64_base

QV = ("blocks.0.attn.wq", "blocks.0.attn.wv")


def two_adapter_params(rng, dtype=np.float64):
    """A flat params dict with W0 and bias for wq and wv, and adapters "a" (r = 2) and "b" (r = 3)."""
    params = {}
    for m in QV:
        params[m + ".weight"] = rng.standard_normal((6, 5)).astype(dtype)
        params[m + ".bias"] = rng.standard_normal(6).astype(dtype)
    adapters = {"a": {m: (2, 1.5) for m in QV}, "b": {QV[0]: (3, 0.5)}}
    for name, modules in adapters.items():
        for m, (r, _) in modules.items():
            a_key, b_key = lora_keys(m, name)
            params[a_key] = rng.standard_normal((r, 5)).astype(dtype)
            params[b_key] = rng.standard_normal((6, r)).astype(dtype)     # non-zero: B A must matter
    return params, adapters


# --------------------------------------------------------------------------- what trains
def test_trainable_set_is_the_active_adapters_A_and_B_only(rng):
    """With bias "none": exactly the active adapter's lora_A and lora_B, no W0, no other adapter."""
    _, adapters = two_adapter_params(rng)
    got = trainable_names(adapters["a"], "a")
    expected = {"blocks.0.attn.wq.lora_A.weight.a", "blocks.0.attn.wq.lora_B.weight.a",
                "blocks.0.attn.wv.lora_A.weight.a", "blocks.0.attn.wv.lora_B.weight.a"}
    assert got == expected, f"expected {sorted(expected)}, got {sorted(got)}"


@pytest.mark.parametrize("bias, to_save", [("none", ()), ("all", ()), ("lora_only", ()), ("none", ("ln_f",))])
def test_trainable_set_matches_lora_model(bias, to_save):
    """The pure rule gives the trainable set LoraModel uses, for each bias mode and modules_to_save."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=["wq", "fc"], bias=bias,
                                                   modules_to_save=to_save))
    modules = {**{m: s.tensors for m, s in lm.base_linears.items()}, **lm.base_norms}
    with_bias = lm.model.config.linear_names() + lm.model.config.norm_names()   # PEFT's "all": LayerNorm's too
    got = trainable_names(lm.modules["default"], "default", bias=bias, linear_modules=with_bias,
                          saved=saved_param_names(modules, to_save))
    assert got == lm.trainable, (f"missing {sorted(lm.trainable - got)[:4]}, "
                                 f"extra {sorted(got - lm.trainable)[:4]}")


def test_bias_modes_train_the_adapters_own_copies_of_the_right_biases(rng):
    """bias = "lora_only": the adapted modules' bias copies; "all": every listed linear layer's; never the base's."""
    _, adapters = two_adapter_params(rng)
    only = trainable_names(adapters["b"], "b", bias="lora_only")
    every = trainable_names(adapters["b"], "b", bias="all", linear_modules=QV)
    assert {k for k in only if ".bias" in k} == {QV[0] + ".bias.b"}, sorted(only)
    assert {m + ".bias.b" for m in QV} <= every and only <= every, sorted(every)
    assert not any(k.endswith((".weight", ".bias")) for k in every), "no base parameter itself ever trains"


def test_saved_modules_train_as_the_adapters_own_copies(rng):
    """modules_to_save: the adapter trains "ln_f.weight.a", not the base's "ln_f.weight"."""
    _, adapters = two_adapter_params(rng)
    got = trainable_names(adapters["a"], "a", saved=("ln_f.weight", "ln_f.bias"))
    assert {"ln_f.weight.a", "ln_f.bias.a"} <= got and not {"ln_f.weight", "ln_f.bias"} & got, sorted(got)


def test_unknown_bias_mode_is_refused(rng):
    """bias must be none, all or lora_only; anything else is an error naming the choices."""
    _, adapters = two_adapter_params(rng)
    with pytest.raises(ValueError, match="bias must be one of"):
        trainable_names(adapters["a"], "a", bias="some")


def test_optimizer_state_exists_only_for_the_trainable_set(rng):
    """AdamW fed the gradients of the trainable set keeps m and v for those names only: 2 numbers each."""
    params, adapters = two_adapter_params(rng)
    names = trainable_names(adapters["a"], "a")
    opt = AdamW(lr=1e-2)
    opt.step(params, {k: np.ones_like(params[k]) for k in names})
    n_trainable = sum(params[k].size for k in names)
    assert set(opt.state) == names, sorted(opt.state)
    assert opt.state_bytes() == 2 * n_trainable * 8, f"expected 2 x {n_trainable} float64, got {opt.state_bytes()} B"


# --------------------------------------------------------------------------- merging
def test_merge_adds_each_scaled_update_in_place(rng):
    """W0 becomes W0 + s B A in the same array object, for every module of the adapter."""
    params, adapters = two_adapter_params(rng)
    before = {m: params[m + ".weight"] for m in QV}
    W0 = {m: params[m + ".weight"].copy() for m in QV}
    assert merge_adapters(params, adapters, [], ["a"]) == ["a"]
    for m, (_, s) in adapters["a"].items():
        A_key, B_key = lora_keys(m, "a")
        expected = merge_weights(W0[m], params[A_key], params[B_key], s)
        assert params[m + ".weight"] is before[m], f"{m}: the weight must be updated in place"
        assert np.allclose(params[m + ".weight"], expected, atol=1e-12), m


def test_merging_an_adapter_twice_is_refused_and_changes_nothing(rng):
    """A second merge of "a" would add B A twice: ValueError, weights unchanged."""
    params, adapters = two_adapter_params(rng)
    merged = merge_adapters(params, adapters, [], ["a"])
    snapshot = {k: v.copy() for k, v in params.items()}
    for again in (["a"], ["b", "a"]):
        with pytest.raises(ValueError, match="'a' is merged already"):
            merge_adapters(params, adapters, merged, again)
    with pytest.raises(ValueError, match="'b' is merged already"):
        merge_adapters(params, adapters, merged, ["b", "b"])
    assert all(np.array_equal(params[k], snapshot[k]) for k in params), "a refused merge changed weights"


def test_safe_merge_refuses_a_non_finite_result_and_changes_nothing(rng):
    """An adapter holding inf: safe_merge raises before writing any weight."""
    params, adapters = two_adapter_params(rng)
    params[lora_keys(QV[1], "a")[1]][0, 0] = np.inf
    snapshot = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match="NaN or inf"), np.errstate(invalid="ignore"):
        merge_adapters(params, adapters, [], ["a"], safe_merge=True)
    assert all(np.array_equal(params[k], snapshot[k]) for k in params), "a refused merge changed weights"


def test_unmerge_restores_w0_up_to_float32_rounding_and_empties_the_list(rng):
    """Merge "a" then "b", unmerge both: W0 is back to float32 rounding and nothing is merged."""
    params, adapters = two_adapter_params(rng, dtype=np.float32)
    W0 = {m: params[m + ".weight"].copy() for m in QV}
    merged = merge_adapters(params, adapters, [], ["a", "b"])
    assert merged == ["a", "b"]
    assert unmerge_adapters(params, adapters, merged) == []
    for m in QV:
        err = np.abs(params[m + ".weight"] - W0[m]).max() / np.abs(W0[m]).max()
        assert err < 1e-6, f"{m}: relative error {err:.1e} after merge/unmerge (expected rounding only)"


def test_unmerging_one_adapter_keeps_the_other_merged(rng):
    """Unmerge "a" of ["a", "b"]: the weights hold W0 + (b's update) and the list is ["b"]."""
    params, adapters = two_adapter_params(rng)
    W0 = {m: params[m + ".weight"].copy() for m in QV}
    merged = merge_adapters(params, adapters, [], ["a", "b"])
    assert unmerge_adapters(params, adapters, merged, ["a"]) == ["b"]
    A_key, B_key = lora_keys(QV[0], "b")
    expected = merge_weights(W0[QV[0]], params[A_key], params[B_key], 0.5)
    assert np.allclose(params[QV[0] + ".weight"], expected, atol=1e-12)
    assert np.allclose(params[QV[1] + ".weight"], W0[QV[1]], atol=1e-12), "b does not adapt wv"


def test_unmerging_an_adapter_that_is_not_merged_is_refused(rng):
    """unmerge of an adapter missing from the merge list raises and changes nothing."""
    params, adapters = two_adapter_params(rng)
    merged = merge_adapters(params, adapters, [], ["a"])
    snapshot = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match="'b' is not merged"):
        unmerge_adapters(params, adapters, merged, ["b"])
    assert all(np.array_equal(params[k], snapshot[k]) for k in params)


def test_merge_adapters_agrees_with_lora_model_merge_adapter(rng):
    """On a LoraModel's own params, merging gives bit for bit the weights merge_adapter writes."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=["wq", "wv"]))
    randomize(lm, ".lora_B.", rng)
    params = {k: v.copy() for k, v in lm.params.items()}
    merge_adapters(params, lm.modules, [], ["default"])
    lm.merge_adapter()
    for m in lm.modules["default"]:
        assert np.array_equal(params[m + ".weight"], lm.params[m + ".weight"]), m
