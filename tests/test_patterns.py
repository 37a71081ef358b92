"""Spec of minilora.adapters.patterns: PEFT's target and rank/alpha pattern rules.

The reference is what PEFT itself chose for the committed adapters (resolved.json, written by
scripts/make_reference_fixtures.py from the live PeftModel's layers).
"""
import json

import pytest

from minilora.adapters import patterns
from minilora.io import load_tensors
from minilora.nn.model import GPTConfig

from interop_fixtures import ADAPTERS, ALL_CASES, adapted_names

LINEARS = GPTConfig(n_layer=2).linear_names()          # blocks.{0,1}.{attn.wq, ..., mlp.proj}


def case(name):
    folder = ADAPTERS / name
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors, _ = load_tensors(folder / "adapter_model.safetensors")
    return config, {k.removeprefix("base_model.model."): v for k, v in tensors.items()}, \
        json.loads((folder / "resolved.json").read_text())


@pytest.mark.parametrize("name", ALL_CASES)
def test_resolution_matches_the_ranks_and_alphas_peft_chose(name):
    """patterns.resolve gives every module the r, alpha and scale PEFT gave it."""
    config, _, peft_choice = case(name)
    received = patterns.resolve(sorted(peft_choice), config["r"], config["lora_alpha"], config["rank_pattern"],
                                config["alpha_pattern"], config["use_rslora"])
    for module, want in peft_choice.items():
        got = dict(zip(("r", "lora_alpha", "scaling"), received[module]))
        assert got == pytest.approx(want, rel=1e-12), f"{module}: expected PEFT's {want}, received {got}"


@pytest.mark.parametrize("name", ALL_CASES)
def test_targets_are_exactly_the_modules_peft_adapted(name):
    """PEFT's target rule over minilora's linear layers picks the modules found in PEFT's file."""
    config, tensors, _ = case(name)
    received = sorted(patterns.targets(LINEARS, config))
    assert received == adapted_names(tensors), f"expected {adapted_names(tensors)}, received {received}"


def test_first_matching_key_wins_not_the_longest():
    """{'attn.wq': 3, 'blocks.0.attn.wq': 5}: blocks.0.attn.wq gets 3, the first key that matches."""
    received = patterns.pattern_value({"attn.wq": 3, "blocks.0.attn.wq": 5}, "blocks.0.attn.wq", 8)
    assert received == 3, f"expected 3 (first match), received {received}"


@pytest.mark.parametrize("key, name, matches", [
    ("wq", "blocks.0.attn.wq", True), ("attn.wq", "blocks.0.attn.wq", True), ("q", "blocks.0.attn.wq", False),
    ("attn.wq", "blocks.0.xattn.wq", False), (r"blocks\.[1-9]\.attn\.wv", "blocks.1.attn.wv", True),
    (r"blocks\.[1-9]\.attn\.wv", "blocks.0.attn.wv", False), ("blocks.1.attn.wq", "blocks.1.attn.wq", True)])
def test_a_key_is_a_regex_matched_after_a_whole_dotted_prefix(key, name, matches):
    """A key matches the end of the name after a complete dotted prefix, never part of a component."""
    received = patterns.pattern_key([key], name) is not None
    assert received == matches, f"{key!r} vs {name!r}: expected match = {matches}, received {received}"


def test_a_pattern_whose_meaning_depends_on_order_is_written_order_free():
    """{'wq': 4, 'blocks.0.attn.wq': 2} means r = 4 everywhere (first match); sorted it would mean 2 for
    block 0, so the file gets one anchored key per module, right in any key order."""
    pattern = {"wq": 4, "blocks.0.attn.wq": 2}
    names = ["blocks.0.attn.wq", "blocks.1.attn.wq", "blocks.0.attn.wv"]
    wanted = {n: patterns.pattern_value(pattern, n, 8) for n in names}
    assert wanted["blocks.0.attn.wq"] == 4, f"expected first-match r = 4, received {wanted}"
    written = patterns.patterns_for_file(pattern, wanted, 8)
    for order in (sorted(written), sorted(written, reverse=True)):
        got = {n: patterns.pattern_value({k: written[k] for k in order}, n, 8) for n in names}
        assert got == wanted, f"keys in order {order}: expected {wanted}, received {got}"


def test_an_order_free_pattern_is_kept_as_the_user_wrote_it():
    """{'wv': 4} means the same in any order, so it is written unchanged."""
    names = ["blocks.0.attn.wq", "blocks.0.attn.wv"]
    written = patterns.patterns_for_file({"wv": 4}, {"blocks.0.attn.wq": 8, "blocks.0.attn.wv": 4}, 8)
    assert written == {"wv": 4}, f"expected {{'wv': 4}}, received {written} for {names}"


def test_layers_to_transform_needs_layers_pattern_blocks_for_minilora_names():
    """Without layers_pattern PEFT reads no layer index from 'blocks.1.attn.wq', so nothing is adapted."""
    without = patterns.is_target("blocks.1.attn.wq", ["wq"], [1], None)
    with_blocks = patterns.is_target("blocks.1.attn.wq", ["wq"], [1], "blocks")
    assert (without, with_blocks) == (False, True), f"expected (False, True), received {(without, with_blocks)}"


def test_unmatched_keys_are_reported():
    """A key that matches no adapted module is listed (PEFT would ignore it with a warning)."""
    received = patterns.unmatched_keys({"wq": 2, "fc": 4}, ["blocks.0.attn.wq"])
    assert received == ["fc"], f"expected ['fc'], received {received}"
