"""Specification of LoraConfig's checks (minilora.adapters.config): every value is checked before it is used,
and none is silently replaced or truncated."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.adapters.bottleneck import AdapterConfig
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPTConfig

from helpers import tiny_float64_base

BAD = [
    ("r", 2.5), ("r", True), ("r", "4"), ("r", 0), ("r", -1), ("r", None),
    ("lora_alpha", 0), ("lora_alpha", -8), ("lora_alpha", math.nan), ("lora_alpha", math.inf), ("lora_alpha", "16"),
    ("lora_alpha", True), ("lora_dropout", 1.0), ("lora_dropout", -0.1), ("lora_dropout", math.nan),
    ("init_std", 0.0), ("init_std", -1.0), ("init_std", math.inf), ("seed", -1), ("seed", 1.5),
    ("layers_to_transform", []), ("layers_to_transform", [0.5]), ("layers_to_transform", [-1]),
    ("rank_pattern", {"wq": 0}), ("alpha_pattern", {"wq": math.nan}), ("target_modules", [3]),
    ("use_rslora", "yes"),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_value_is_a_clear_error_naming_the_field(field, value):
    """r = 2.5, alpha = 0 or NaN, dropout 1, an empty layer list...: a ValueError naming the field and the value."""
    with pytest.raises(ValueError) as info:
        LoraConfig(**{field: value})
    message = str(info.value)
    assert field.split("_pattern")[0] in message, f"expected {field} named in: {message}"


@settings(max_examples=60, deadline=None)
@given(r=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3),
                   st.integers(max_value=0), st.none()))
def test_r_is_accepted_only_as_an_int_of_at_least_one(r):
    """Whatever r is that is not an int >= 1 (floats, bools, strings, 0, negatives, None) is refused."""
    with pytest.raises(ValueError, match="r must be a positive integer"):
        LoraConfig(r=r)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 64), alpha=st.floats(min_value=1e-6, max_value=1e6), dropout=st.floats(0, 0.99),
       seed=st.integers(0, 2**32))
def test_every_valid_value_is_kept_exactly(r, alpha, dropout, seed):
    """Valid values come back unchanged (alpha as a float), never rounded or replaced."""
    c = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, seed=seed)
    assert (c.r, c.lora_alpha, c.lora_dropout, c.seed) == (r, alpha, dropout, seed), c


@settings(max_examples=60, deadline=None)
@given(alpha=st.one_of(st.floats(max_value=0), st.just(math.nan), st.just(math.inf), st.just(-math.inf)))
def test_alpha_must_be_finite_and_positive(alpha):
    """alpha <= 0 would train nothing (s = alpha / r = 0) or flip the update; NaN and inf poison it."""
    with pytest.raises(ValueError, match="lora_alpha must be a finite number > 0"):
        LoraConfig(lora_alpha=alpha)


def test_one_string_is_one_module_and_one_int_is_one_block():
    """modules_to_save="head" means ("head",), not ("h", "e", "a", "d"); layers_to_transform=1 means (1,) as in PEFT."""
    c = LoraConfig(modules_to_save="head", target_modules="wq", layers_to_transform=1)
    assert (c.modules_to_save, c.target_modules, c.layers_to_transform) == (("head",), ("wq",), (1,)), c


def test_an_int_layers_to_transform_adapts_exactly_that_block():
    """layers_to_transform=1 puts LoRA on block 1 only."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, layers_to_transform=1))
    blocks = sorted({m.split(".")[1] for m in lm.modules["default"]})
    assert blocks == ["1"], f"expected only block 1 adapted, got blocks {blocks}"


def test_gpt_config_sizes_must_be_ints_and_ln_eps_positive():
    """GPTConfig refuses 2.5 and "128" for a size and a zero, negative or NaN ln_eps."""
    for field, value in (("n_embd", 2.5), ("n_embd", "128"), ("n_layer", True), ("ln_eps", 0.0),
                         ("ln_eps", math.nan), ("vocab_size", 0)):
        with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
            GPTConfig(**{field: value})


def test_bottleneck_adapter_config_refuses_non_integers_and_bad_std():
    """AdapterConfig: m = 2.0 or "8" is not a size, init_std must be finite and > 0, seed >= 0."""
    for kwargs in ({"bottleneck": 2.0}, {"bottleneck": "8"}, {"init_std": math.nan}, {"seed": -2}):
        with pytest.raises(ValueError):
            AdapterConfig(**kwargs)


def test_a_value_changed_after_construction_is_checked_when_the_adapter_is_built():
    """config.lora_alpha = 0 set on an existing LoraConfig is refused when an adapter is made from it."""
    config = LoraConfig(r=2)
    config.lora_alpha = 0
    with pytest.raises(ValueError, match="lora_alpha"):
        LoraModel(tiny_float64_base(), config)
