"""Golden trajectories: short fixed-seed runs must reproduce the committed losses within stated tolerances.

Two runs agreeing with each other (test_train's bit-reproducibility) would pass a change that shifts every
number; these compare against numbers written down before the change. tests/fixtures/golden_losses.json
holds the losses and each tolerance with the measurements that set it (scripts/make_golden_losses.py):
the tolerance is 4x the largest drift that rounding alone causes (textbook vs fast kernels, which sum in
another order as another BLAS would, one vs two worker threads, float64 vs float32), and the file records
which real changes (a learning rate 1% or 0.1% higher) it still catches.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import golden_runs

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_losses.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(GOLDEN["runs"]))
def test_a_short_fixed_seed_run_follows_the_committed_loss_trajectory(key):
    """20 steps (pretraining or LoRA on shift, float32 or float64) give the committed losses within rtol."""
    name, dtype = key.split()
    golden = GOLDEN["runs"][key]
    losses = np.asarray(golden_runs.RUNS[name](dtype=np.dtype(dtype).type))
    expected = np.asarray(golden["losses"])
    assert losses.shape == expected.shape, f"expected {expected.shape[0]} losses, got {losses.shape[0]}"
    first = abs(losses[0] - expected[0]) / expected[0]
    assert first <= golden["rtol_first_step"], (
        f"{key}: the loss before any update is {losses[0]!r}, committed {expected[0]!r} (relative difference "
        f"{first:.1e} > {golden['rtol_first_step']:.0e}): the forward pass or the data changed")
    relative = np.abs(losses - expected) / expected
    worst = int(np.argmax(relative))
    assert relative[worst] <= golden["rtol"], (
        f"{key}: step {worst} loss {losses[worst]!r} vs committed {expected[worst]!r} (relative difference "
        f"{relative[worst]:.1e} > rtol {golden['rtol']:.0e}, which rounding alone stays under). If the change "
        f"is intended, rerun scripts/make_golden_losses.py and say why in the commit")


@pytest.mark.parametrize("key", sorted(GOLDEN["runs"]))
def test_each_tolerance_sits_between_rounding_and_a_one_percent_change(key):
    """The committed rtol is above every measured rounding drift and below the drift of a 1% higher lr."""
    golden = GOLDEN["runs"][key]
    rounding, real = max(golden["rounding_drift"].values()), golden["real_change_drift"]["lr x 1.01"]
    assert rounding < golden["rtol"] < real, \
        f"{key}: rounding {rounding:.1e}, rtol {golden['rtol']:.0e}, lr x 1.01 {real:.1e}"
