"""Specification of adapter folders (minilora.adapters.files): every field required and checked, the config
bound to the tensors, and any adapter round-trips exactly."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel

from helpers import TINY_LORA_BASE, randomize, tiny_float64_base


def _saved(tmp_path, config=None):
    lm = LoraModel(tiny_float64_base(), config or LoraConfig(r=2, lora_alpha=16, target_modules=("wq", "wv")))
    randomize(lm, ".lora_B.", np.random.default_rng(0))
    lm.save_adapter(tmp_path / "ad")
    return lm, tmp_path / "ad"


def _edit(folder, edit):
    meta = io.read_json(folder / "adapter_config.json")
    edit(meta)
    io.write_json(folder / "adapter_config.json", meta)


@pytest.mark.parametrize("field", ["r", "lora_alpha", "target_modules", "lora_dropout"])
def test_a_missing_config_field_is_an_error_never_a_default(tmp_path, field):
    """Without lora_alpha the adapter would load with the default 8 and halve an alpha-16 update: refused."""
    _, folder = _saved(tmp_path)
    _edit(folder, lambda m: m.pop(field))
    fresh = LoraModel(tiny_float64_base())
    with pytest.raises(io.CheckpointError, match=f"field '{field}' of LoraConfig is missing"):
        fresh.load_adapter(folder)
    assert not fresh.adapters, f"a refused load left adapters behind: {sorted(fresh.adapters)}"


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(lora_alpah=16), "lora_alpah"),            # unknown (a typo)
    (lambda m: m.update(r="2"), "r"),                             # a string where an int belongs
    (lambda m: m.update(lora_alpha=None), "lora_alpha"),          # null
    (lambda m: m.update(target_modules="wq"), "target_modules"),  # a string where a list belongs
])
def test_an_unknown_field_or_a_field_of_the_wrong_type_is_named(tmp_path, edit, field):
    """A typo or a wrong JSON type is a CheckpointError naming the field, not a TypeError from inside."""
    _, folder = _saved(tmp_path)
    _edit(folder, edit)
    with pytest.raises(io.CheckpointError, match=f"'{field}'"):
        LoraModel(tiny_float64_base()).load_adapter(folder)


def test_an_edited_alpha_that_every_shape_allows_is_refused(tmp_path):
    """lora_alpha 16 -> 8 changes the scale without changing a shape: the fingerprint binding refuses it."""
    _, folder = _saved(tmp_path)
    _edit(folder, lambda m: m.update(lora_alpha=8.0))
    fresh = LoraModel(tiny_float64_base())
    with pytest.raises(io.CheckpointError, match="fingerprint differs"):
        fresh.load_adapter(folder)
    assert not fresh.adapters and not any(".lora_" in k for k in fresh.params), "a refused load left tensors behind"


def test_tensors_and_config_from_two_saves_are_refused(tmp_path):
    """What a crash between two file writes used to leave: new tensors with the old config (the other save's
    alpha differs; the binding fingerprint rides with the tensors, in the safetensors header)."""
    _, a = _saved(tmp_path / "1")
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, lora_alpha=8, target_modules=("wq", "wv")))
    lm.save_adapter(tmp_path / "2" / "ad")
    (a / "adapter_model.safetensors").write_bytes((tmp_path / "2" / "ad" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(io.CheckpointError, match="fingerprint differs"):
        LoraModel(tiny_float64_base()).load_adapter(a)


def test_an_unexpected_extra_tensor_is_refused(tmp_path):
    """A tensor the config does not build is named, and nothing is loaded."""
    _, folder = _saved(tmp_path)
    tensors, _ = io.load_tensors(folder / "adapter_model.safetensors")
    stray = {"blocks.0.attn.wk.lora_A.weight": np.zeros((2, 16))}
    io.save_tensors(folder / "adapter_model.safetensors", {**tensors, **stray})
    with pytest.raises(io.CheckpointError, match="unexpected"):
        LoraModel(tiny_float64_base()).load_adapter(folder)


# --------------------------------------------------------------------------- round trips, random adapters
TARGETS = ("wq", "wk", "wv", "wo", "fc", "proj")


@st.composite
def lora_configs(draw):
    targets = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=6, unique=True))
    layers = draw(st.one_of(st.none(), st.lists(st.integers(0, TINY_LORA_BASE.n_layer - 1), min_size=1, unique=True)))
    return LoraConfig(r=draw(st.integers(1, TINY_LORA_BASE.n_embd)), target_modules=tuple(targets),
                      lora_alpha=draw(st.floats(0.01, 100)), layers_to_transform=layers,
                      use_rslora=draw(st.booleans()), bias=draw(st.sampled_from(["none", "all", "lora_only"])),
                      lora_dropout=draw(st.sampled_from([0.0, 0.1])), seed=draw(st.integers(0, 1000)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=lora_configs(), data_seed=st.integers(0, 1000))
def test_any_adapter_round_trips_to_the_same_config_tensors_and_outputs(tmp_path_factory, config, data_seed):
    """Save then load into a fresh host: equal config, bit-equal tensors, equal logits."""
    rng = np.random.default_rng(data_seed)
    lm = LoraModel(tiny_float64_base(), config)
    randomize(lm, ".lora_B.", rng)
    folder = tmp_path_factory.mktemp("ad")
    lm.save_adapter(folder)
    fresh = LoraModel(tiny_float64_base())
    fresh.load_adapter(folder)
    assert fresh.adapters["default"] == config, f"config changed: {fresh.adapters['default']} vs {config}"
    saved, loaded = lm.adapter_state("default"), fresh.adapter_state("default")
    assert sorted(saved) == sorted(loaded), "tensor names differ"
    assert all(np.array_equal(saved[k], loaded[k]) for k in saved), "tensor values differ"
    idx = rng.integers(0, TINY_LORA_BASE.vocab_size, (2, 5))
    assert np.array_equal(lm.forward(idx)[0], fresh.forward(idx)[0]), "the loaded adapter computes something else"
