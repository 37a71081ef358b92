"""Timings for the tutorials that do not mislead on a busy machine (as the benchmarks time).

A notebook that times A, then B, then A again under load compares the load, not A and B.
``interleaved_times`` runs every variant once per round, in an order that rotates from round to
round, so a slow spell falls on all of them; ``timing_summary`` reports the minimum (the least
disturbed run) with the spread of the rounds; ``timing_plot`` shows every round, not one number.
"""
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np


def interleaved_times(fns: dict, *, rounds: int = 30, warmup: int = 2, sync=None) -> dict[str, list[float]]:
    """Seconds of each call of each ``fns[name]()``, ``rounds`` rounds, every variant in every round.

    Round i runs the variants in the order rotated by i. ``sync`` runs before each clock read
    (GPU work is asynchronous: ``minilora.nn.backend.synchronize``).
    """
    sync = sync or (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times = {name: [] for name in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def timing_summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """name -> {"min_ms", "median_ms", "spread_pct"}: spread = (q75 - q25) / median, in percent."""
    out = {}
    for name, t in times.items():
        ms = 1000.0 * np.asarray(t)
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        out[name] = {"min_ms": float(ms.min()), "median_ms": float(q50), "spread_pct": float(100 * (q75 - q25) / q50)}
    return out


def timing_plot(times: dict[str, list[float]], ax=None, title: str = "time per call"):
    """Every round as a dot per variant, the minimum as a bar: the spread is visible at a glance.

    The scale is logarithmic, so that one round slowed by the machine does not flatten the rest.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.0))
    summary = timing_summary(times)
    for i, (name, t) in enumerate(times.items()):
        ms = 1000.0 * np.asarray(t)
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(ms))
        ax.plot(i + jitter, ms, ".", alpha=0.5, color=f"C{i}")
        ax.hlines(summary[name]["min_ms"], i - 0.3, i + 0.3, color="black", lw=2)
    ax.set_xticks(range(len(times)), [f"{n}\nmin {summary[n]['min_ms']:.3g} ms" for n in times], fontsize=8)
    ax.set(ylabel="ms per call (log scale)", yscale="log",
           title=f"{title} ({len(next(iter(times.values())))} interleaved rounds)")
    return ax
