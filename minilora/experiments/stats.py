"""Seed-to-seed statistics and the three verdicts every finding of minilora uses.

A finding compares measurements repeated over seeds (each seed draws its own data, adapter
initialisation and batch order), so a number comes with its spread. The rules, stated once:

    spread of a difference   s = sqrt(sd_a^2 + sd_b^2), sd with ddof = 1 over the seeds: how far
                             one run of A minus one run of B typically moves from seed to seed
    threshold                t = max(s, floor); floor is the smallest difference the measurement
                             resolves at all (for accuracy on a few hundred test examples, 1 point)

    "A beats B"              held if mean(A) - mean(B) > t, did not hold if < -t, else within noise
    "A is about as good as B, within a margin m"
                             held if the gap mean(B) - mean(A) plus t stays within m (A trails by
                             less than m, and the measurement can tell); did not hold if the gap
                             minus t exceeds m; else within noise

Nothing is a verdict when the runs behind it did not learn: ``learned`` is how a report checks that
first. Everything here is plain Python and NumPy on lists of floats, so the JSON a report saves
is all a notebook needs to recompute a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HELD, NOT_HELD, NOISE = "held", "did not hold", "within noise"


@dataclass(frozen=True)
class Summary:
    """mean and standard deviation (ddof = 1; 0 for a single value) of one measurement over seeds."""
    mean: float
    sd: float
    n: int
    values: tuple

    def fmt(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """'mean +- sd' with ``scale`` applied (100 for percent), e.g. '96.3 +- 1.2%'."""
        return f"{scale * self.mean:.{digits}f} +- {scale * self.sd:.{digits}f}{unit}"


def summarize(values) -> Summary:
    """Summary of a non-empty list of finite numbers (one per seed)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"summarize needs one or more finite values, got {v.tolist()}")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return Summary(float(v.mean()), sd, int(v.size), tuple(float(x) for x in v))


def spread(a: Summary, b: Summary) -> float:
    """Seed-to-seed standard deviation of (one run of A) - (one run of B): sqrt(sd_a^2 + sd_b^2)."""
    return math.hypot(a.sd, b.sd)


@dataclass(frozen=True)
class Verdict:
    """A verdict with everything it rests on: the claim, the measured difference, spread and threshold."""
    claim: str
    verdict: str                 # HELD, NOT_HELD or NOISE
    difference: float            # the measured difference the verdict reads (see the rule used)
    spread: float                # seed-to-seed spread of that difference
    threshold: float             # max(spread, floor) (+ the margin, for "about as good")
    rule: str                    # the rule in words, with numbers

    def to_dict(self) -> dict:
        return dict(vars(self))


def beats(a: Summary, b: Summary, *, claim: str, floor: float = 0.0, scale: float = 1.0,
          unit: str = "") -> Verdict:
    """Verdict on "A beats B" (larger is better): held if mean(A) - mean(B) exceeds the threshold."""
    d, s = a.mean - b.mean, spread(a, b)
    t = max(s, floor)
    verdict = HELD if d > t else NOT_HELD if d < -t else NOISE
    rule = (f"difference {scale * d:+.2f}{unit} vs threshold {scale * t:.2f}{unit} "
            f"(spread {scale * s:.2f}, floor {scale * floor:.2f})")
    return Verdict(claim, verdict, d, s, t, rule)


def about_as_good(a: Summary, b: Summary, *, margin: float, claim: str, floor: float = 0.0,
                  scale: float = 1.0, unit: str = "") -> Verdict:
    """Verdict on "A is about as good as B": A trails B by less than ``margin`` (larger is better).

    gap = mean(B) - mean(A). held if gap + t <= margin; did not hold if gap - t > margin; else
    within noise (the spread is too large to tell). A that beats B counts as about as good.
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    gap, s = b.mean - a.mean, spread(a, b)
    t = max(s, floor)
    eps = 1e-12 * max(1.0, abs(margin))                    # 1.0 - 0.99 is 0.010000000000000009 in floats
    verdict = HELD if gap + t <= margin + eps else NOT_HELD if gap - t > margin + eps else NOISE
    rule = (f"gap {scale * gap:+.2f}{unit} +- {scale * t:.2f}{unit} vs margin {scale * margin:.2f}{unit} "
            f"(spread {scale * s:.2f}, floor {scale * floor:.2f})")
    return Verdict(claim, verdict, gap, s, t + margin, rule)


def exceeds(a: Summary, value: float, *, claim: str, floor: float = 0.0, scale: float = 1.0,
            unit: str = "") -> Verdict:
    """Verdict on "A is above a fixed value" (a threshold the paper states, e.g. phi > 0.5):
    held if mean(A) - value exceeds max(sd_A, floor), did not hold if it is below minus that."""
    d, t = a.mean - value, max(a.sd, floor)
    verdict = HELD if d > t else NOT_HELD if d < -t else NOISE
    rule = (f"mean {scale * a.mean:.3f}{unit} vs {scale * value:.3f}{unit}: difference {scale * d:+.3f} "
            f"vs threshold {scale * t:.3f} (sd {scale * a.sd:.3f}, floor {scale * floor:.3f})")
    return Verdict(claim, verdict, d, a.sd, t, rule)


def below(a: Summary, value: float, *, claim: str, floor: float = 0.0, scale: float = 1.0,
          unit: str = "") -> Verdict:
    """Verdict on "A is below a fixed value": ``exceeds`` with the sides swapped."""
    d, t = value - a.mean, max(a.sd, floor)
    verdict = HELD if d > t else NOT_HELD if d < -t else NOISE
    rule = (f"mean {scale * a.mean:.3f}{unit} vs {scale * value:.3f}{unit}: margin {scale * d:+.3f} "
            f"vs threshold {scale * t:.3f} (sd {scale * a.sd:.3f}, floor {scale * floor:.3f})")
    return Verdict(claim, verdict, d, a.sd, t, rule)


def learned(summary: Summary, *, chance: float, min_gain: float = 0.2) -> bool:
    """True when every seed beat ``chance`` by at least ``min_gain`` (accuracy 0..1).

    A verdict drawn from runs that stayed at chance teaches the wrong thing: reports check this
    before comparing methods, and say "did not learn" instead of judging.
    """
    return min(summary.values) >= chance + min_gain


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent test examples: sqrt(p (1 - p) / n)."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 1 and 0 <= p <= 1, got n = {n}, p = {p}")
    return math.sqrt(p * (1.0 - p) / n)
