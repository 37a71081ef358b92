"""Specification of minilora.checks: user values are checked, never converted behind the user's back."""
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import checks


@given(st.integers(-10**6, 10**6))
def test_integer_accepts_every_int_at_or_above_the_minimum_and_nothing_below(n):
    """integer() returns ints >= minimum unchanged (NumPy ints too) and refuses the others."""
    if n >= 1:
        assert checks.integer("n", n, minimum=1) == n and checks.integer("n", np.int64(n), minimum=1) == n
    else:
        with pytest.raises(ValueError, match="n must be a positive integer"):
            checks.integer("n", n, minimum=1)


@pytest.mark.parametrize("value", [2.0, 2.5, True, "2", None, [2]])
def test_integer_refuses_what_is_not_an_int_even_when_it_looks_like_one(value):
    """2.0, True and "2" are not ints: silently converting them would hide a mistake."""
    with pytest.raises(ValueError, match=r"\(" + type(value).__name__ + r"\)"):
        checks.integer("steps", value)


@given(st.one_of(st.floats(), st.integers(-100, 100)))
def test_number_accepts_exactly_the_finite_values_inside_the_bounds(x):
    """number(above=0, below=1) passes finite 0 < x < 1 and refuses everything else, NaN and inf included."""
    inside = math.isfinite(x) and 0 < x < 1
    if inside:
        assert checks.number("p", x, above=0, below=1) == x
    else:
        with pytest.raises(ValueError, match="p must be a finite number > 0 and < 1"):
            checks.number("p", x, above=0, below=1)


@dataclass
class _Example:
    n: int = 1
    rate: float = 0.5
    name: str | None = None


def test_from_fields_names_the_missing_unknown_or_mistyped_field():
    """A config dict from a file must hold every field, no other, each with its JSON type."""
    assert checks.from_fields(_Example, {"n": 2, "rate": 1, "name": None}, "f.json") == _Example(2, 1, None)
    cases = [({"rate": 0.5, "name": None}, "'n'.*missing"),
             ({"n": 1, "rate": 0.5, "name": None, "x": 0}, "unknown field 'x'"),
             ({"n": True, "rate": 0.5, "name": None}, "'n' must be int"),
             ({"n": 1, "rate": "0.5", "name": None}, "'rate'"),
             ({"n": 1, "rate": None, "name": None}, "'rate'"),
             ({"n": 1, "rate": 0.5, "name": 3}, "'name'")]
    for data, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            checks.from_fields(_Example, data, "f.json")


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, "bfloat16", None, "x"])
def test_only_float32_and_float64_are_dtypes_of_a_model(dtype):
    """float_dtype refuses any dtype but float32 and float64."""
    with pytest.raises(ValueError, match="float32 or float64"):
        checks.float_dtype(dtype)
    assert checks.float_dtype("float64") is np.float64 and checks.float_dtype(np.float32) is np.float32
