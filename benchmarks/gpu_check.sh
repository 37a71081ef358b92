#!/usr/bin/env bash
# One prepared check of minilora on a machine with an NVIDIA GPU. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh              # writes into ./gpu_out
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# GPU_CHECK_BACKEND=numpy runs the same parts on the CPU (a dry run of this script's plumbing).
#
# Parts, in order of importance, each with its own time limit inside one overall budget
# (GPU_CHECK_BUDGET_S, default 330 s, so the whole check ends within 6 minutes):
#   1. nvidia-smi, Python and package versions
#   2. wheels from .whl/ into /tmp/site, if that folder exists and the machine lacks a package
#      (GPU_CHECK_FORCE_WHEELS=1 installs them anyway; benchmarks/README.md says how to make them)
#   3. the GPU tests: pytest -m gpu (CuPy vs NumPy: forward, backward, AdamW, adapters)
#   4. bench_train.py --backend cupy (full fine-tuning and LoRA rows), with PyTorch on CUDA
#      beside it when torch sees the GPU
#   5. bench_latency.py --backend cupy (Table 1 of the LoRA paper was measured on a GPU)
#   6. bench_scaling.py --backend cupy
# Fail-soft: a part that fails or runs out of time is recorded and the next one runs. $OUT gets
# gpu_check.log (everything printed, and one "part rc seconds" line per part at the end) and at
# most six result files (JSON and PNG).
set -u

OUT="${OUT:-./gpu_out}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-330}"
BACKEND="${GPU_CHECK_BACKEND:-cupy}"   # numpy: a dry run of the script's own plumbing on a machine without a GPU
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SCRATCH="$(mktemp -d)"            # every benchmark writes here; chosen files are copied to $OUT
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # minilora from this checkout, not installed
START=$SECONDS
SUMMARY=()

# part NAME LIMIT_S CMD...: run CMD with a time limit cut to what is left of the budget; never exits.
part() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: skipped, ${left}s left of the ${BUDGET}s budget"
    SUMMARY+=("$name skipped 0")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] && echo "--- $name: stopped at its ${limit}s limit"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  SUMMARY+=("$name $rc $((SECONDS - t0))")
}

main() {
# --------------------------------------------------------------------------- 1. the machine
echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $PWD, OUT=$OUT"
part nvidia-smi 30 nvidia-smi
echo "git commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# --------------------------------------------------------------------------- 2. carried wheels
NEEDED="import numpy, cupy, pytest, safetensors, tqdm, matplotlib, threadpoolctl"
if ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -c "$NEEDED" 2>/dev/null && [ -z "${GPU_CHECK_FORCE_WHEELS:-}" ]; then
    # Installing a second CuPy (say cupy-cuda12x over an image's cupy-cuda13x) would shadow a working one.
    echo "=== wheels: this Python already has numpy, cupy, pytest, safetensors, tqdm, matplotlib and threadpoolctl; .whl/ not installed"
  else
    part wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
fi
part versions 60 "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "cupy", "safetensors", "tqdm", "matplotlib", "threadpoolctl", "pytest", "torch"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')} from {getattr(mod, '__file__', '?')}")
    except Exception as err:
        print(f"{name}: not importable ({type(err).__name__}: {err})")
from minilora.nn import backend
print("minilora sees a CUDA GPU through CuPy:", backend.cupy_available())
if backend.cupy_available():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print("device:", props["name"].decode(), "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "| driver", cupy.cuda.runtime.driverGetVersion())
try:
    import torch
    print("torch CUDA available:", torch.cuda.is_available())
except Exception:
    pass
EOF

# --------------------------------------------------------------------------- 3. GPU tests
# --continue-on-collection-errors: a test module that cannot import here must not hide the GPU tests.
part pytest-gpu 150 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --continue-on-collection-errors -rs

# --------------------------------------------------------------------------- 4-6. benchmarks
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  TORCH_ARGS=(--sdpa)              # minilora on CuPy, then PyTorch eager on CUDA (plain and fused attention)
else
  echo "=== torch with CUDA is not importable: bench_train runs minilora alone"
  TORCH_ARGS=(--no-torch)
fi
part bench-train 180 "$PY" benchmarks/bench_train.py --backend "$BACKEND" --steps 20 "${TORCH_ARGS[@]}" --out "$SCRATCH"
part bench-latency 60 "$PY" benchmarks/bench_latency.py --backend "$BACKEND" --repeats 100 --out "$SCRATCH"
part bench-scaling 90 "$PY" benchmarks/bench_scaling.py --backend "$BACKEND" --steps 15 --out "$SCRATCH"

# --------------------------------------------------------------------------- results
for f in "train_$BACKEND.json" "train_$BACKEND.png" "latency_$BACKEND.json" \
         "latency_$BACKEND.png" "scaling_$BACKEND.json" "scaling_$BACKEND.png"; do
  [ -f "$SCRATCH/$f" ] && cp "$SCRATCH/$f" "$OUT/"
done
echo "=== summary (part rc seconds), $((SECONDS - START))s in all"
printf '%s\n' "${SUMMARY[@]}"
}

main 2>&1 | tee "$LOG"
rm -rf "$SCRATCH"
exit 0
