"""Spec of minilora.adapters.peft_format: adapter folders PEFT writes and reads.

Without PyTorch: the committed folders PEFT saved (tests/fixtures/peft_adapters) translate to
minilora tensors and a LoraConfig whose merged weights reproduce PEFT's own outputs. Float64 merged
logits differ from PEFT's float64 outputs only by the fixture's rounding to float32 (~1e-8 here), so
1e-6 catches any wrong scale or key (those are O(0.1)). The ``reference`` tests load minilora's files
with the real PEFT and require no warning.
"""
import json

import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.adapters.files import read_adapter
from minilora.adapters.lora import INITS
from minilora.adapters.lora_model import LoraModel
from minilora.adapters import patterns
from minilora.adapters.peft_format import (PREFIX, config_from_peft, config_to_peft, read_peft_adapter,
                                          state_from_peft, state_to_peft, write_peft_adapter)
from minilora.nn.model import GPT

from interop_fixtures import (ADAPTERS, ALL_CASES, CASES_LM, HF_TINY, adapted_names, expected, lora_modules,
                              max_abs, merged_model, no_warnings_or_log_records, torch_mirror)

TOL = 1e-6
# The values PEFT 0.21's LoraLayer.update_layer accepts for init_lora_weights (others raise ValueError).
PEFT_INITS = (True, False, "gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal")


def peft_files(name):
    folder = ADAPTERS / name
    raw, meta = io.load_tensors(folder / "adapter_model.safetensors")
    return json.loads((folder / "adapter_config.json").read_text()), raw, meta


def read_as_lora(folder):
    """(LoraConfig, tensors, facts) from read_peft_adapter's plain fields."""
    values, tensors, facts = read_peft_adapter(folder)
    return LoraConfig(**values), tensors, facts


def scales_of(config: LoraConfig) -> dict:
    """module -> scale as minilora's own resolve_targets computes it for the translated config."""
    base = GPT(*_base_args())
    return {m: s for m, (_, s) in resolve_targets(base, config).items()}


def _base_args():
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    return read_hf_gpt2(HF_TINY, dtype=np.float64)


# --------------------------------------------------------------------------- PEFT's folders -> minilora
@pytest.mark.parametrize("name", CASES_LM)
def test_peft_written_adapter_reproduces_peft_logits(name):
    """read_peft_adapter + minilora's own rank/scale resolution + W0 + s B A give PEFT's logits."""
    config, tensors, facts = read_as_lora(ADAPTERS / name)
    ref = expected(ADAPTERS / name)
    logits, _ = merged_model(tensors, scales_of(config)).forward(ref["tokens"])
    base, _ = merged_model({}, {}).forward(ref["tokens"])
    err, effect = max_abs(logits, ref["logits"]), max_abs(base, ref["logits"])
    assert facts is None, f"expected no minilora facts in a PEFT-written file, received {facts}"
    assert effect > 0.05, f"expected the adapter to change the logits (> 0.05), received {effect:.2e}"
    assert err < TOL, f"expected max |logits - PEFT's| < {TOL}, received {err:.2e} (adapter effect {effect:.2f})"


def test_peft_saved_head_and_layernorm_reproduce_peft_class_logits():
    """modules_to_save=['head', 'ln_f']: PEFT's saved copies become minilora's head and ln_f."""
    config, tensors, _ = read_as_lora(ADAPTERS / "modules_to_save_head")
    ref = expected(ADAPTERS / "modules_to_save_head")
    assert config.modules_to_save == ("head", "ln_f"), f"expected ('head', 'ln_f'), received {config.modules_to_save}"
    logits, _ = merged_model(tensors, scales_of(config)).classify(ref["tokens"], ref["last"])
    err = max_abs(logits, ref["logits"])
    assert err < TOL, f"expected max |class logits - PEFT's| < {TOL}, received {err:.2e}"


def test_peft_dora_tensors_reproduce_peft_logits_by_the_dora_formula():
    """PEFT's lora_magnitude_vector is DoRA's m: W = m V / ||V||_row, V = W0 + s B A (Liu et al. 2024, eq. 5)."""
    peft, raw, _ = peft_files("dora")
    tensors = state_from_peft(raw)
    scales = {m: s for m, (_, _, s) in patterns.resolve(adapted_names(tensors), peft["r"], peft["lora_alpha"],
                                                         peft["rank_pattern"], peft["alpha_pattern"]).items()}
    ref = expected(ADAPTERS / "dora")
    logits, _ = merged_model(tensors, scales).forward(ref["tokens"])
    err = max_abs(logits, ref["logits"])
    assert err < TOL, f"expected max |logits - PEFT's DoRA| < {TOL}, received {err:.2e}"


def test_dora_config_is_read_as_dora_never_as_plain_lora():
    """use_dora = true is not silently read as plain LoRA."""
    if "use_dora" in LoraConfig.__dataclass_fields__:
        _, config, _ = read_adapter(ADAPTERS / "dora")
        assert config.use_dora, "expected use_dora carried over"
    else:
        with pytest.raises(ValueError, match="DoRA"):
            read_adapter(ADAPTERS / "dora")


@pytest.mark.parametrize("name", CASES_LM + ("modules_to_save_head",))
def test_translated_config_adapts_exactly_the_modules_in_the_file(name):
    """minilora's resolve_targets on the translated config gives the file's modules with their ranks."""
    config, tensors, _ = read_as_lora(ADAPTERS / name)
    received = {m: r for m, (r, _) in resolve_targets(GPT(*_base_args()), config).items()}
    want = {m: tensors[m + ".lora_A.weight"].shape[0] for m in adapted_names(tensors)}
    assert received == want, f"expected modules and ranks {want}, received {received}"


@pytest.mark.parametrize("name", ALL_CASES)
def test_tensor_names_translate_back_to_exactly_peft_keys(name):
    """state_to_peft(state_from_peft(file)) has PEFT's keys (prefix, base_layer.bias, magnitude, head)."""
    _, raw, _ = peft_files(name)
    back = state_to_peft(state_from_peft(raw))
    assert sorted(back) == sorted(raw), f"expected {sorted(raw)}, received {sorted(back)}"
    assert all(np.array_equal(back[k], raw[k]) for k in raw), "expected the same arrays"


@pytest.mark.parametrize("name", CASES_LM + ("modules_to_save_head",))
def test_written_config_means_what_peft_wrote(name):
    """config_to_peft(config_from_peft(x)) has PEFT's values, and its patterns resolve to PEFT's choices."""
    peft, raw, _ = peft_files(name)
    config = LoraConfig(**config_from_peft(peft, state_from_peft(raw)))
    resolved = json.loads((ADAPTERS / name / "resolved.json").read_text())
    ours = config_to_peft(config, {m: (v["r"], v["lora_alpha"]) for m, v in resolved.items()})
    for field in ("peft_type", "task_type", "bias", "layers_to_transform", "layers_pattern", "use_rslora",
                  "lora_dropout", "fan_in_fan_out", "use_dora", "modules_to_save"):
        assert ours[field] == peft[field], f"{field}: expected PEFT's {peft[field]!r}, received {ours[field]!r}"
    got = patterns.resolve(sorted(resolved), ours["r"], ours["lora_alpha"], ours["rank_pattern"],
                           ours["alpha_pattern"], ours["use_rslora"])
    for m, want in resolved.items():
        assert got[m][:2] == (want["r"], want["lora_alpha"]), f"{m}: expected PEFT's {want}, received {got[m]}"


def test_written_config_uses_only_fields_peft_knows():
    """Every key we write is a field of PEFT's LoraConfig (PEFT warns about any other)."""
    peft, _, _ = peft_files("lora_wq_wv")
    ours = config_to_peft(LoraConfig(layers_to_transform=(1,)), {"blocks.1.attn.wq": (8, 8.0),
                                                                 "blocks.1.attn.wv": (8, 8.0)})
    unknown = sorted(set(ours) - set(peft))
    assert not unknown, f"expected only PEFT's fields, received unknown {unknown}"


@pytest.mark.parametrize("init", INITS)
def test_every_minilora_init_is_written_as_a_value_peft_accepts(init):
    """PEFT validates init_lora_weights on load: minilora's own names must be translated."""
    received = config_to_peft(LoraConfig(init_lora_weights=init), {"blocks.0.attn.wq": (8, 8.0),
                                                                   "blocks.0.attn.wv": (8, 8.0)})
    assert received["init_lora_weights"] in PEFT_INITS, f"{init}: received {received['init_lora_weights']!r}"


# --------------------------------------------------------------------------- minilora -> files -> minilora
def trained_lora_model(config: LoraConfig, seed=0, dtype=np.float64):
    """A LoraModel on the fixture base with random non-zero B, biases and saved modules (as after training)."""
    lm = LoraModel(GPT(*read_base(dtype)), config)
    rng = np.random.default_rng(seed)
    for name, value in lm.adapter_state().items():
        if ".lora_A." not in name:
            value += (0.3 * rng.standard_normal(value.shape)).astype(value.dtype)
    return lm


def read_base(dtype):
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    return read_hf_gpt2(HF_TINY, dtype=dtype)


RICH = LoraConfig(r=2, lora_alpha=4, target_modules=("wq", "wv", "wo"), rank_pattern={"wv": 3},
                  alpha_pattern={"blocks.1.attn.wo": 10}, layers_to_transform=(1,), bias="lora_only",
                  modules_to_save=("ln_f",), init_lora_weights="gaussian", init_std=0.05, seed=3)


def test_minilora_adapter_round_trips_through_peft_files(tmp_path):
    """write_peft_adapter then read_peft_adapter: same tensors, same (r, scale) per module, init and seed kept."""
    lm = trained_lora_model(RICH)
    write_peft_adapter(tmp_path, RICH, lora_modules(lm), lm.adapter_state(), facts={"adapter_name": "default"})
    config, tensors, facts = read_as_lora(tmp_path)
    state = lm.adapter_state()
    assert sorted(tensors) == sorted(state), f"expected {sorted(state)}, received {sorted(tensors)}"
    assert all(np.array_equal(tensors[k], state[k]) for k in state), "expected bit-identical tensors"
    assert resolve_targets(lm.model, config) == lm.modules["default"], \
        f"expected {lm.modules['default']}, received {resolve_targets(lm.model, config)}"
    kept = (config.init_lora_weights, config.init_std, config.seed, facts["adapter_name"])
    assert kept == ("gaussian", 0.05, 3, "default"), f"expected minilora's facts back, received {kept}"


def test_every_written_tensor_key_carries_peft_prefix(tmp_path):
    """A key without base_model.model. is silently skipped by PEFT, leaving the base model: none may lack it."""
    lm = trained_lora_model(RICH)
    write_peft_adapter(tmp_path, RICH, lora_modules(lm), lm.adapter_state())
    raw, meta = io.load_tensors(tmp_path / "adapter_model.safetensors")
    bare = [k for k in raw if not k.startswith(PREFIX)]
    assert not bare and meta["format"] == "pt", f"expected every key prefixed and format 'pt', received {bare}, {meta}"
    assert "base_model.model.blocks.1.attn.wq.base_layer.bias" in raw, f"expected PEFT's bias name in {sorted(raw)}"


@pytest.mark.parametrize("change, message", [
    ({"fan_in_fan_out": True}, "fan_in_fan_out"), ({"lora_bias": True}, "lora_bias"),
    ({"init_lora_weights": "pissa_niter_4"}, "pissa"), ({"target_modules": ".*wq"}, "regular expression"),
    ({"layers_to_transform": [1], "layers_pattern": "layers"}, "layers_pattern"), ({"peft_type": "IA3"}, "IA3"),
    ({"rank_pattern": {"wq": 7}}, "rank")])
def test_what_minilora_cannot_compute_is_refused_by_name(change, message):
    """A PEFT config minilora would read wrongly is refused, naming the field."""
    peft, raw, _ = peft_files("lora_wq_wv")
    with pytest.raises(ValueError, match=message):
        config_from_peft({**peft, **change}, state_from_peft(raw))


def test_a_folder_with_only_a_pickle_file_is_refused(tmp_path):
    """adapter_model.bin is never unpickled; the message says how to get safetensors."""
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        read_peft_adapter(tmp_path)


# --------------------------------------------------------------------------- the real PEFT
@pytest.mark.reference
def test_peft_loads_minilora_adapter_without_warning_to_the_same_logits(tmp_path):
    """PeftModel.from_pretrained on the torch mirror: no warning, logits within 1e-5 of minilora's (float32)."""
    torch_gpt = torch_mirror()
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    lm = trained_lora_model(RICH, dtype=np.float32)
    with lm.disable_adapter():
        base = {k: lm.model.params[k].copy() for k in lm.model.own_param_names()}
    write_peft_adapter(tmp_path, RICH, lora_modules(lm), lm.adapter_state())
    mirror = torch_gpt.from_minilora_params(lm.config, base)
    with no_warnings_or_log_records("peft", "transformers"):
        model = peft.PeftModel.from_pretrained(mirror, tmp_path).eval()
    idx = np.random.default_rng(0).integers(0, lm.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).numpy()
    ours, _ = lm.forward(idx)
    err = max_abs(ours, theirs)
    assert err < 1e-5, f"expected max |minilora - PEFT| < 1e-5, received {err:.2e}"


@pytest.mark.reference
def test_peft_writes_pattern_keys_sorted(tmp_path):
    """Why patterns_for_file exists: PEFT's save sorts rank_pattern keys, and first-match depends on order."""
    torch_gpt = torch_mirror()
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["wq"], rank_pattern={"wq": 4, "blocks.0.attn.wq": 3})
    model = peft.get_peft_model(torch_gpt.TorchGPT(GPT(*read_base(np.float32)).config), config)
    model.save_pretrained(tmp_path)
    written = list(json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"])
    assert written == ["blocks.0.attn.wq", "wq"], f"expected sorted keys, received {written}"


def test_peft_wrapper_names_of_a_saved_module_read_as_the_module_itself():
    """bias='all' with modules_to_save makes PEFT write ln_f.modules_to_save.bias (a duplicate of the trained
    ln_f.bias) and ln_f.original_module.bias (the base's value): minilora keeps the trained copy only."""
    trained, base = np.ones(3), np.zeros(3)
    raw = {PREFIX + "ln_f.bias": trained, PREFIX + "ln_f.modules_to_save.bias": trained,
           PREFIX + "ln_f.original_module.bias": base, PREFIX + "ln_f.weight": trained}
    got = state_from_peft(raw)
    assert sorted(got) == ["ln_f.bias", "ln_f.weight"] and got["ln_f.bias"] is trained, f"received {got}"
