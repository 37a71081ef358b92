"""Write tests/fixtures/golden_losses.json: the losses of two short fixed-seed runs, and the tolerances
tests/test_golden.py holds new runs to, with the measurements that justify them.

The runs (tests/golden_runs.py): 20 steps of pretraining the base model and 20 steps of LoRA on shift,
in float32 (what users run), and LoRA in float64 too. To rerun (about 3 minutes on 2 cores):

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/make_golden_losses.py

The tolerances are set from measurements made here, not guessed. "Rounding" is every change that
should not count: the textbook kernels instead of the fast ones (other summation orders, like another
BLAS), one worker thread instead of two, float64 instead of float32. "Real" changes are a learning
rate 1% (and 0.1%) higher. A tolerance must sit above the largest rounding drift and below the
smallest real drift it is meant to catch; the file records both, per run and dtype.
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import golden_runs  # noqa: E402  (tests/ holds the recipes the test and this script share)

LR = {"pretrain": 1e-3, "lora": 5e-3}
# tolerance = SAFETY x the largest rounding drift measured below, rounded up to one significant digit, and
# never below FLOOR: about 170 float32 ulps (1e-5) or 10^6 float64 ulps (1e-10), since another BLAS may
# round a little differently from the kernel swaps measured here
SAFETY = 4
FLOOR = {"float32": 1e-5, "float64": 1e-10}
# pretraining in float32 already catches a 0.1% change (its rounding drift is ~1e-7), so it runs in float32
# only; LoRA in float32 is far noisier (docs/reliability.md says why), so it runs in float64 too
DTYPES = {"pretrain": (np.float32,), "lora": (np.float32, np.float64)}


def _max_relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _round_up(x: float) -> float:
    """x rounded up to one significant digit (3.2e-3 -> 4e-3)."""
    exponent = np.floor(np.log10(x))
    return float(f"{np.ceil(x / 10**exponent - 1e-9) * 10**exponent:.0e}")


def measure(name: str, dtype) -> dict:
    run = golden_runs.RUNS[name]
    losses, textbook = run(dtype=dtype), run(dtype=dtype, fast=False)
    rounding = {"textbook kernels": _max_relative(textbook, losses),
                "one worker": _max_relative(run(dtype=dtype, workers=1), losses)}
    if dtype == np.float32:
        rounding["float64"] = _max_relative(run(dtype=np.float64), losses)
    real = {f"lr x {f}": _max_relative(run(dtype=dtype, lr=LR[name] * f), losses) for f in (1.01, 1.001)}
    floor = FLOOR[np.dtype(dtype).name]
    tolerance = max(_round_up(SAFETY * max(rounding.values())), floor)
    first = max(_round_up(SAFETY * max(abs(textbook[0] - losses[0]) / losses[0], 1e-300)), floor)
    return {"losses": losses, "rtol": tolerance, "rtol_first_step": first,
            "rounding_drift": rounding, "real_change_drift": real,
            "catches": sorted(k for k, v in real.items() if v > tolerance)}


def main():
    import safetensors

    golden = {"steps": golden_runs.STEPS, "safety_factor": SAFETY, "floor": FLOOR,
              "versions": {"python": platform.python_version(), "numpy": np.__version__,
                           "safetensors": safetensors.__version__, "machine": platform.machine()},
              "runs": {f"{name} {np.dtype(dtype).name}": measure(name, dtype)
                       for name, dtypes in DTYPES.items() for dtype in dtypes}}
    path = ROOT / "tests" / "fixtures" / "golden_losses.json"
    path.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for key, run in golden["runs"].items():
        print(f"{key:<18} rtol {run['rtol']:.0e} (first step {run['rtol_first_step']:.0e}); rounding "
              f"{max(run['rounding_drift'].values()):.1e}; catches {run['catches']}")


if __name__ == "__main__":
    main()
