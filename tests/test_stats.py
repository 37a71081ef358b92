"""Specification of minilora.experiments.stats: seed summaries and the three verdicts.

Expected values are computed here by hand from the definitions in the module docstring.
"""
import math

import pytest

from minilora.experiments import stats
from minilora.experiments.stats import HELD, NOISE, NOT_HELD, summarize


def test_summary_is_mean_and_sample_standard_deviation():
    """mean and sd with ddof = 1, the usual estimate from a handful of seeds."""
    s = summarize([0.90, 0.94, 0.98])
    assert math.isclose(s.mean, 0.94), s.mean
    assert math.isclose(s.sd, 0.04), f"expected sqrt((0.04^2 + 0 + 0.04^2) / 2) = 0.04, got {s.sd}"
    assert s.n == 3 and s.values == (0.90, 0.94, 0.98)


def test_summary_of_one_value_has_zero_spread_and_bad_input_is_refused():
    """One seed has sd 0; no values, or a NaN, raise with the values named."""
    assert summarize([0.5]).sd == 0.0
    for bad in ([], [0.1, float("nan")]):
        with pytest.raises(ValueError, match="finite"):
            summarize(bad)


def test_summary_formats_as_mean_plus_minus_sd():
    """fmt scales both numbers: 100 turns fractions into percent."""
    assert summarize([0.9, 1.0]).fmt(100, 1, "%") == "95.0 +- 7.1%"


def test_spread_of_a_difference_adds_the_variances():
    """sqrt(sd_a^2 + sd_b^2): a 3-4-5 triangle."""
    a, b = summarize([1.0, 4.0, 7.0]), summarize([0.0, 4.0, 8.0])      # sd 3 and 4
    assert math.isclose(stats.spread(a, b), 5.0), stats.spread(a, b)


@pytest.mark.parametrize("a, b, expected", [
    ([0.9, 0.92, 0.94], [0.5, 0.52, 0.54], HELD),           # +0.40 against a spread of 0.028
    ([0.5, 0.52, 0.54], [0.9, 0.92, 0.94], NOT_HELD),       # the other way round
    ([0.5, 0.7, 0.9], [0.6, 0.7, 0.8], NOISE),              # 0 difference
    ([0.50, 0.60, 0.70], [0.45, 0.55, 0.65], NOISE),        # +0.05 against a spread of 0.14
])
def test_beats_needs_a_difference_larger_than_the_spread(a, b, expected):
    """held / did not hold only when |mean(A) - mean(B)| exceeds sqrt(sd_a^2 + sd_b^2)."""
    v = stats.beats(summarize(a), summarize(b), claim="A beats B")
    assert v.verdict == expected, (v.verdict, v.rule)


def test_beats_respects_the_floor_when_every_seed_agrees():
    """With no spread at all, a difference below the floor is still within noise."""
    a, b = summarize([1.0, 1.0, 1.0]), summarize([0.995, 0.995, 0.995])
    assert stats.beats(a, b, claim="", floor=0.0).verdict == HELD
    assert stats.beats(a, b, claim="", floor=0.01).verdict == NOISE


@pytest.mark.parametrize("lora, full, expected", [
    ([0.99, 0.99, 0.99], [1.0, 1.0, 1.0], HELD),            # gap 1 + floor 1 <= margin 2
    ([0.90, 0.90, 0.90], [1.0, 1.0, 1.0], NOT_HELD),        # gap 10 - floor 1 > margin 2
    ([0.96, 0.98, 1.00], [0.99, 1.0, 1.0], NOISE),          # gap 1.7 +- 2.0 straddles the margin
    ([1.0, 1.0, 1.0], [0.95, 0.95, 0.95], HELD),            # beating B is about as good
])
def test_about_as_good_allows_a_margin_and_needs_the_spread_to_tell(lora, full, expected):
    """held if gap + t <= margin, did not hold if gap - t > margin (t = max(spread, floor))."""
    v = stats.about_as_good(summarize(lora), summarize(full), margin=0.02, floor=0.01, claim="")
    assert v.verdict == expected, (v.verdict, v.rule)


def test_about_as_good_refuses_a_margin_that_is_not_positive():
    """A margin of 0 would make every equivalence impossible; it is an error."""
    with pytest.raises(ValueError, match="margin"):
        stats.about_as_good(summarize([1.0]), summarize([1.0]), margin=0.0, claim="")


def test_exceeds_and_below_compare_with_a_stated_value():
    """The paper's phi > 0.5: held when the mean clears 0.5 by more than its sd."""
    high, mid = summarize([0.8, 0.9, 1.0]), summarize([0.4, 0.5, 0.6])
    assert stats.exceeds(high, 0.5, claim="").verdict == HELD
    assert stats.exceeds(mid, 0.5, claim="").verdict == NOISE
    assert stats.below(high, 0.5, claim="").verdict == NOT_HELD
    assert stats.below(summarize([0.1, 0.2]), 0.5, claim="").verdict == HELD


def test_learned_asks_every_seed_to_clear_chance_by_the_gain():
    """One seed at chance is enough to refuse a verdict."""
    assert stats.learned(summarize([0.9, 0.8, 0.95]), chance=0.5, min_gain=0.2)
    assert not stats.learned(summarize([0.9, 0.55, 0.95]), chance=0.5, min_gain=0.2)
    assert not stats.learned(summarize([0.0, 0.0, 0.01]), chance=0.0, min_gain=0.2)


def test_binomial_standard_error_matches_its_formula():
    """sqrt(p (1 - p) / n): 0.5 on 100 examples gives 0.05; bad input raises."""
    assert math.isclose(stats.binomial_se(0.5, 100), 0.05)
    with pytest.raises(ValueError):
        stats.binomial_se(1.5, 10)
