"""Helpers shared by the benchmark scripts: timing, FLOP counts, a matmul probe, tables, files.

Shapes: B batch, T time, C channels, V vocabulary, L layers, NH heads, HS = C // NH head size.

Timing rule for every benchmark: run ``warmup`` untimed calls (first calls pay for allocation,
BLAS thread start-up and caches), then time ``steps`` calls one by one and report the median,
which ignores the odd step slowed by other work on the machine. GPU work is asynchronous, so a
``sync`` callable is run before each clock read.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from minilora import io

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Environment variables that change how BLAS runs; reported, never set, by the benchmarks.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS")


# --------------------------------------------------------------------------- timing
def median_time(fn, *, warmup: int = 3, steps: int = 10, sync=None) -> dict:
    """Call ``fn()`` ``warmup`` times untimed, then ``steps`` times timed.

    Returns {"median_s", "min_s", "max_s", "times_s": [seconds of each timed call]}.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": min(times), "max_s": max(times), "times_s": times}


def matmul_gflops(m: int, k: int, n: int, *, xp=np, dtype=np.float32, min_seconds: float = 0.2,
                  sync=None) -> float:
    """GFLOP/s of one (m, k) @ (k, n) product (2 m k n FLOPs), median over repeats.

    Repeats for at least ``min_seconds`` and at least 5 times, after 2 warm-up products. The
    output buffer is reused (``out=``) so the probe measures the BLAS call, not the allocator.
    """
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((m, k)), dtype=dtype)
    b = xp.asarray(rng.standard_normal((k, n)), dtype=dtype)
    out = xp.empty((m, n), dtype=dtype)
    sync = sync or (lambda: None)
    for _ in range(2):
        xp.matmul(a, b, out=out)
    sync()
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        xp.matmul(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t0)
    return 2.0 * m * k * n / float(np.median(times)) / 1e9


# --------------------------------------------------------------------------- FLOP counts
def gpt_flops(config, B: int, T: int, *, lora_r: int = 0, lora_targets: int = 0) -> dict:
    """Matrix-product FLOPs of one forward pass and one training step of minilora's GPT.

    A product (M, K) @ (K, N) costs 2 M K N FLOPs (one multiply and one add per term).
      linear layers: every token meets every weight once. Per block Wq, Wk, Wv, Wo are C x C and
        fc, proj are 4C x C and C x 4C: 12 C^2 weights; plus the tied LM head, V x C. So
        2 * (B T) * (L * 12 C^2 + V C).
      attention: q k^T and att @ v, each (T, HS) x (HS, T)-sized per head:
        2 * 2 * B * NH * T^2 * HS = 4 B T^2 C per layer. The full T^2 is counted, although the
        causal mask makes half of the scores useless: the code computes all of them.
      training = 3 x forward: the backward pass does two products per forward product (the
        input gradient and the weight gradient).
    With LoRA (``lora_r`` > 0 on ``lora_targets`` C x C matrices per block, base frozen): the
    adapters add 2 (B T) * 2 r C per target in the forward and 3x that in training, while the
    frozen linear layers need only the input gradient: 2 x their forward, not 3 x.
    Not counted: embeddings, biases, LayerNorm, GELU, softmax, cross-entropy and the optimizer
    (elementwise work, O(B T C) or O(params), small next to the products).
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    tokens = B * T
    linear = 2 * tokens * (L * 12 * C * C + V * C)
    attention = L * 2 * 2 * B * config.n_head * T * T * (C // config.n_head)
    adapters = 2 * tokens * L * lora_targets * 2 * lora_r * C
    if lora_r:
        train = 2 * linear + 3 * attention + 3 * adapters
    else:
        train = 3 * (linear + attention)
    return {"linear_forward": linear, "attention_forward": attention, "adapter_forward": adapters,
            "forward": linear + attention + adapters, "train_step": train}


# --------------------------------------------------------------------------- memory
# Peak memory growth of one measurement = peak resident memory after it - resident memory before.
# resource.getrusage's ru_maxrss is the portable peak, but it never goes down and on Linux it even
# survives exec: a child spawned by a parent that had imported PyTorch starts with the parent's
# peak. So on Linux the peak (VmHWM) is reset to the current size first by writing 5 to
# /proc/self/clear_refs; elsewhere ru_maxrss is used, and growth below an earlier peak reads 0.
def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024          # reported in kB
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM where readable, else ru_maxrss."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)   # bytes on macOS, KiB on Linux


def rss_mark() -> int:
    """Start a peak-memory measurement; pass the result to ``rss_growth_bytes``."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                        # reset VmHWM to the current RSS
        return _proc_status_bytes("VmRSS") or max_rss_bytes()
    except OSError:
        return max_rss_bytes()


def rss_growth_bytes(mark: int) -> int:
    """How far the peak resident memory rose above ``mark`` (from ``rss_mark``)."""
    return max(max_rss_bytes() - mark, 0)


# --------------------------------------------------------------------------- environment
def blas_info() -> list[dict]:
    """Which BLAS NumPy (and anything else loaded) uses: threadpoolctl if installed, else numpy's build info."""
    try:
        import threadpoolctl

        return [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
                for d in threadpoolctl.threadpool_info()]
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            return [{"internal_api": blas.get("name"), "version": blas.get("version"),
                     "architecture": "(install threadpoolctl to see the kernel chosen at run time)"}]
        except Exception as err:  # show_config's layout differs between NumPy versions
            return [{"internal_api": f"unknown ({err})"}]


def environment() -> dict:
    """The facts a timing depends on: versions, CPU count, BLAS and its environment variables."""
    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
           "processor": platform.processor(), "cpu_count": os.cpu_count(),
           "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "blas_env": {k: os.environ.get(k) for k in BLAS_ENV}, "blas": blas_info()}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return env


# --------------------------------------------------------------------------- output
def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table. ``columns``: (key in each row, header, format spec such as '.1f').

    Missing or None values print as '-'.
    """
    def cell(row, key, spec):
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = [[header for _, header, _ in columns]] + [[cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save_json(path, obj) -> Path:
    """Write ``obj`` as JSON atomically (minilora.io.write_json), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(path, obj)
    return path


def print_conditions(env: dict, load_before) -> None:
    """One line on what the numbers were measured under: the load average before and after (other
    work on the cores slows everything, BLAS threads the most) and the BLAS variables that are set."""
    blas_env = {k: v for k, v in env["blas_env"].items() if v is not None} or "no BLAS variables set"
    load = (f"load average (1 min) before: {load_before[0]:.1f}, after: {env['load_average_1_5_15min'][0]:.1f} "
            f"on {os.cpu_count()} CPUs; " if load_before is not None else "")
    print(f"{load}BLAS env: {blas_env}")


def save_results(out_dir, stem: str, args, payload: dict, plot) -> None:
    """Write ``stem``.json (the command-line arguments and ``payload``) and ``plot(path)``'s ``stem``.png."""
    out_dir = Path(out_dir)
    save_json(out_dir / f"{stem}.json", {"args": {k: str(v) for k, v in vars(args).items()}, **payload})
    plot(out_dir / f"{stem}.png")
    print(f"saved {out_dir / stem}.json and .png")


def save_figure(fig, path) -> Path:
    """Lay out, save (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
