"""PEFT's rules for which modules an adapter covers and which rank and alpha each one gets.

Written out from PEFT's documented behaviour (``LoraConfig``: target_modules, layers_to_transform,
layers_pattern, rank_pattern, alpha_pattern) and checked against the ranks PEFT itself chose
(tests/fixtures/peft_adapters/*/resolved.json):

  * a module is a target when its full name is in ``target_modules`` or ends with "." + one of them;
    with ``layers_to_transform`` it must also sit in one of those layers, whose index is read after
    ``layers_pattern`` ("blocks" for minilora, "h" for Hugging Face GPT-2);
  * a rank_pattern / alpha_pattern key is a regular expression matched against the END of the full
    module name, after a whole dotted prefix: ``re.match(rf"(.*\\.)?({key})$", name)``;
  * the FIRST key in the dict's order that matches wins (not the longest or most specific one).

The last rule makes order matter, and PEFT writes adapter_config.json with sorted keys: a
pattern whose meaning depends on its order can change when PEFT saves and reloads it (PEFT 0.21.2
then fails to load its own adapter). ``patterns_for_file`` writes patterns that mean the same in
any order.
"""
from __future__ import annotations

import re

from minilora.adapters.lora import lora_scale


# --------------------------------------------------------------------------- rank and alpha
def pattern_key(keys, name: str) -> str | None:
    """The first of ``keys`` (in order) that matches module ``name`` by PEFT's rule, or None."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def pattern_value(pattern: dict, name: str, default):
    """pattern[first matching key] for module ``name``, or ``default`` when no key matches."""
    key = pattern_key(pattern, name)
    return default if key is None else pattern[key]


def resolve(names, r: int, lora_alpha: float, rank_pattern: dict, alpha_pattern: dict,
            use_rslora: bool = False) -> dict[str, tuple[int, float, float]]:
    """Module name -> (r, lora_alpha, scale) exactly as PEFT resolves them.

    scale = ``minilora.adapters.lora.lora_scale(alpha, r, use_rslora)`` (Hu et al. 2021, §4.1, or rsLoRA's).
    """
    out = {}
    for name in names:
        rank = int(pattern_value(rank_pattern, name, r))
        alpha = float(pattern_value(alpha_pattern, name, lora_alpha))
        out[name] = (rank, alpha, lora_scale(alpha, rank, use_rslora))
    return out


def unmatched_keys(pattern: dict, names) -> list[str]:
    """Keys of ``pattern`` that match none of ``names`` (PEFT ignores them with a warning)."""
    return sorted(k for k in pattern if not any(re.match(rf"(.*\.)?({k})$", n) for n in names))


def patterns_for_file(pattern: dict, wanted: dict, default) -> dict:
    """A pattern for adapter_config.json that gives every module its ``wanted`` value in any key order.

    pattern: the adapter's own pattern; wanted: module name -> value it must resolve to; default: the
    config's r or lora_alpha. The pattern is kept when PEFT's first-match rule over its keys SORTED (as
    PEFT's save writes them) gives exactly ``wanted``; otherwise each module whose value differs from
    ``default`` gets its own anchored key (its full name, dots escaped), which matches only that module.
    """
    names = list(wanted)
    kept = {k: pattern[k] for k in sorted(pattern)}
    if all(pattern_value(kept, n, default) == wanted[n] for n in names) and not unmatched_keys(kept, names):
        return kept
    return {re.escape(n): v for n, v in sorted(wanted.items()) if v != default}


# --------------------------------------------------------------------------- targets
def layer_index(name: str, layers_pattern) -> int | None:
    """The layer index PEFT reads from ``name``: the number after ``layers_pattern`` (or after the
    second dotted component when there is no pattern), or None."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [])
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = next((m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name))), None)
    return None if match is None else int(match.group("idx"))


def is_target(name: str, target_modules, layers_to_transform=None, layers_pattern=None) -> bool:
    """Whether PEFT puts an adapter on module ``name`` (list-valued target_modules).

    A regex string for target_modules must match the whole name (``re.fullmatch``).
    """
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    if name in target_modules:
        return True                                      # an exact name ignores layers_to_transform
    if not any(name.endswith("." + t) for t in target_modules):
        return False
    if layers_to_transform is None or layers_to_transform == []:
        return True
    index = layer_index(name, layers_pattern)
    layers = [layers_to_transform] if isinstance(layers_to_transform, int) else layers_to_transform
    return index is not None and index in layers


def targets(names, peft_config: dict) -> list[str]:
    """The modules among ``names`` that a PEFT adapter_config.json dict adapts."""
    return [n for n in names if is_target(n, peft_config.get("target_modules") or [],
                                          peft_config.get("layers_to_transform"), peft_config.get("layers_pattern"))]
