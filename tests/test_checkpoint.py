"""Specification of model folders (minilora.nn.checkpoint): config.json says what the tensors are, and
loading believes nothing it cannot check."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilora import io
from minilora.nn.checkpoint import load_model, save_model, upgrade_v1
from minilora.nn.model import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_embd=16)


def _saved(tmp_path, config=SMALL, **kw):
    model = GPT(config, seed=3)
    save_model(model, tmp_path / "m", **kw)
    return model, tmp_path / "m"


def _edit_config(folder, edit):
    meta = io.read_json(folder / "config.json")
    edit(meta)
    io.write_json(folder / "config.json", meta)


def test_editing_n_head_which_no_shape_reveals_is_refused(tmp_path):
    """n_head 4 -> 8 keeps every shape (C = 16) but changes the logits: the fingerprint refuses it."""
    _, folder = _saved(tmp_path)
    _edit_config(folder, lambda m: m["config"].update(n_head=8))
    with pytest.raises(io.CheckpointError, match="fingerprint differs"):
        load_model(folder)


def test_editing_n_layer_down_is_refused_instead_of_ignoring_blocks(tmp_path):
    """n_layer 2 -> 1 would load and silently drop block 1; the unexpected tensors are named instead."""
    _, folder = _saved(tmp_path)
    _edit_config(folder, lambda m: m["config"].update(n_layer=1))
    with pytest.raises(io.CheckpointError, match=r"unexpected \['blocks\.1\."):
        load_model(folder)


def test_an_extra_tensor_in_the_file_is_refused(tmp_path):
    """A tensor the config does not name is not loaded quietly."""
    model, folder = _saved(tmp_path)
    tensors, _ = io.load_tensors(folder / "model.safetensors")
    io.save_tensors(folder / "model.safetensors", {**tensors, "stray.weight": np.zeros(3, np.float32)})
    with pytest.raises(io.CheckpointError, match=r"unexpected \['stray.weight'\]"):
        load_model(folder)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.pop("n_head"), "n_head"),                       # missing
    (lambda c: c.update(dropout=0.1), "dropout"),                # unknown
    (lambda c: c.update(n_embd="16"), "n_embd"),                 # a string where an int belongs
    (lambda c: c.update(n_layer=None), "n_layer"),               # null
    (lambda c: c.update(n_layer=2.5), "n_layer"),                # not an int
    (lambda c: c.update(ln_eps=True), "ln_eps"),                 # a bool is not a number
])
def test_a_config_field_missing_unknown_or_of_the_wrong_type_is_named(tmp_path, edit, field):
    """Every GPTConfig field must be present with its JSON type, and no other: the error names the field."""
    _, folder = _saved(tmp_path)
    _edit_config(folder, lambda m: edit(m["config"]))
    with pytest.raises(io.CheckpointError, match=f"'{field}'"):
        load_model(folder)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "bfloat16"])
def test_only_float32_and_float64_models_are_made_or_loaded(tmp_path, dtype):
    """float16 would round the weights, int32 would truncate them to integers: both are refused up front."""
    _, folder = _saved(tmp_path)
    with pytest.raises(ValueError, match="float32 or float64"):
        load_model(folder, dtype=dtype)
    with pytest.raises(ValueError, match="float32 or float64"):
        GPT(SMALL, dtype=dtype)


def test_a_version_1_folder_is_refused_until_upgraded_and_then_loads_unchanged(tmp_path):
    """A folder whose config was not bound (version 1) loads only after an explicit upgrade_v1."""
    model, folder = _saved(tmp_path, extra={"note": "v1"})
    tensors, _ = io.load_tensors(folder / "model.safetensors")
    meta = io.read_json(folder / "config.json")
    meta.update(version=1, fingerprint=io.fingerprint(tensors))       # the old format, as it was written
    io.write_json(folder / "config.json", meta)
    with pytest.raises(io.CheckpointError, match="upgrade_v1"):
        load_model(folder)
    upgrade_v1(folder)
    loaded, extra = load_model(folder)
    assert extra == {"note": "v1"}, f"expected the extra to survive the upgrade, got {extra}"
    assert all(np.array_equal(loaded.params[k], v) for k, v in model.params.items()), "weights changed"


def test_config_json_reads_as_plain_json_with_the_fields_a_user_expects(tmp_path):
    """The file stays human-readable: format, version, config, extra and a 16-hex fingerprint."""
    _, folder = _saved(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    assert sorted(meta) == ["config", "extra", "fingerprint", "format", "version"], sorted(meta)
    assert meta["config"]["n_head"] == 4 and len(meta["fingerprint"]) == 16, meta


# --------------------------------------------------------------------------- round trips, random shapes
@st.composite
def gpt_configs(draw):
    n_head = draw(st.integers(1, 3))
    return GPTConfig(vocab_size=draw(st.integers(2, 20)), block_size=draw(st.integers(1, 9)),
                     n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.integers(1, 4)),
                     ln_eps=draw(st.floats(1e-8, 1e-2)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=gpt_configs(), head=st.integers(0, 4), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31))
def test_any_model_round_trips_bit_for_bit(tmp_path_factory, config, head, dtype, seed):
    """Save then load gives the same config, extra, parameter names and bits, with or without a task head."""
    model = GPT(config, seed=seed, dtype=dtype)
    if head:
        model.add_classification_head(head, seed=seed)
    folder = tmp_path_factory.mktemp("m")
    save_model(model, folder, extra={"seed": seed})
    loaded, extra = load_model(folder, dtype=dtype)
    assert loaded.config == config and extra == {"seed": seed}, (loaded.config, extra)
    assert sorted(loaded.params) == sorted(model.params), "parameter names differ"
    for name, value in model.params.items():
        assert loaded.params[name].dtype == value.dtype and np.array_equal(loaded.params[name], value), name
