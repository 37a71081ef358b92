"""Checks of the values users give: numbers, dtypes, and config fields read from JSON files.

Every check raises ValueError naming the setting, the value it got and what it accepts, so a
mistake reads as a mistake (a TypeError or a NumPy message from deep inside a layer reads as a
bug). Nothing is silently converted: 2.5 is not an int, True is not a number, "128" is not 128.

    integer("LoraConfig.r", 2.5, minimum=1)         ValueError: LoraConfig.r must be a positive integer, got 2.5 (float)
    number("LoraConfig.lora_alpha", 0, above=0)     ValueError: ... must be a finite number > 0, got 0
    from_fields(LoraConfig, meta, "adapter_config.json", envelope={"format", ...})
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np


# --------------------------------------------------------------------------- numbers
def _kind(value) -> str:
    return type(value).__name__


def integer(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int; refuses bools, floats (2.0 included), strings and ints below ``minimum``."""
    what = {1: "a positive integer", 0: "an integer >= 0"}.get(minimum, f"an integer{_bound_text(minimum, None, None)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {what}, got {value!r} ({_kind(value)})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def number(name: str, value, *, minimum: float | None = None, above: float | None = None,
           below: float | None = None) -> float:
    """``value`` as a finite Python float with ``minimum <= value``, ``above < value``, ``value < below``.

    Refuses bools, strings, None, NaN and inf (a NaN passes every comparison test, so it is checked first).
    """
    bounds = _bound_text(minimum, above, below)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r} ({_kind(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value}")
    if (minimum is not None and value < minimum) or (above is not None and value <= above) or \
            (below is not None and value >= below):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value}")
    return value


def _bound_text(minimum, above, below) -> str:
    parts = ([f">= {minimum}"] if minimum is not None else []) + ([f"> {above}"] if above is not None else []) \
        + ([f"< {below}"] if below is not None else [])
    return " " + " and ".join(parts) if parts else ""


def float_dtype(dtype, name: str = "dtype"):
    """``dtype`` as np.float32 or np.float64; anything else (float16, int32, "x") is refused.

    minilora computes in float32 (speed) or float64 (gradient checks); a float16 model would lose
    its weights' low bits and an integer one would round every weight to an integer.
    """
    try:
        kind = None if dtype is None else np.dtype(dtype).type      # np.dtype(None) would be float64
    except TypeError:
        kind = None
    if kind not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got {dtype!r}")
    return kind


# --------------------------------------------------------------------------- config fields from files
_JSON_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "str": (str,), "bool": (bool,),
               "tuple": (list, tuple), "list": (list, tuple), "dict": (dict,), "None": (type(None),)}


def _type_text(annotation) -> str:
    """A field's annotation as written ("int", "float | None"), whether or not annotations are postponed."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("NoneType", "None")


def _accepts(annotation: str, value) -> bool | None:
    """Whether a JSON value fits a dataclass field's annotation ("int", "float | None", "tuple", ...).

    None when the annotation names a type this table does not know (the class's own checks decide).
    """
    allowed = []
    for part in _type_text(annotation).replace(" ", "").split("|"):
        if part not in _JSON_TYPES:
            return None
        allowed.append(part)
    if isinstance(value, bool):                    # JSON true is not a number, even though bool is an int
        return "bool" in allowed
    return any(isinstance(value, _JSON_TYPES[p]) for p in allowed)


def from_fields(cls, data: dict, where: str, *, envelope=frozenset()):
    """Build dataclass ``cls`` from ``data`` (a dict read from JSON), checking every field first.

    Every field of ``cls`` must be present, no other key may be (``envelope`` names the keys that
    belong to the file rather than the config), and each value must have its field's JSON type.
    A missing ``lora_alpha`` is an error here, never the class's default. ``where`` names the file.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of {cls.__name__} fields, got {_kind(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in data]
    unknown = sorted(set(data) - set(names) - set(envelope))
    if missing:
        raise ValueError(f"{where}: field {missing[0]!r} of {cls.__name__} is missing (missing: {missing}); "
                         f"a value is never filled in from a default. Re-create the file, or add the field")
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (unknown: {unknown}); {cls.__name__} has "
                         f"the fields {names}. Remove it, or use the minilora version that wrote the file")
    for f in dataclasses.fields(cls):
        if _accepts(f.type, data[f.name]) is False:
            raise ValueError(f"{where}: field {f.name!r} must be {_type_text(f.type)}, got {data[f.name]!r} "
                             f"({_kind(data[f.name])})")
    try:
        return cls(**{n: data[n] for n in names})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
