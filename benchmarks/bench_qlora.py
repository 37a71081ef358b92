"""QLoRA and QDoRA training steps against a LoRA step: what dequantizing the 4-bit base for every product costs.

    python benchmarks/bench_qlora.py                     # both configurations, 20 interleaved rounds
    python benchmarks/bench_qlora.py --rounds 40 --configs small
    python benchmarks/bench_qlora.py --workers 2         # the batch shared by 2 worker threads

The models and steps are those of ``bench_train.py`` (random tokens, loss on every position, AdamW,
fast kernels as the training loop uses them): LoRA r = 8 on wq and wv over a float32 base, and
QLoRA, the same adapters over the same base after ``quantize_base(model, "nf4", double_quant=True)``
(every block linear in 4 bits, dequantized to float32 for each matrix product: once in the forward,
once in the backward). A third step, "QLoRA (textbook dequant)", replaces the one-gather
dequantizer with the textbook ``QuantizedTensor.dequantize`` to show what the fast form buys.
DoRA and QDoRA are the same adapters with ``use_dora=True`` (Liu et al. 2024; the §4.3 detached
norm) on the float and on the 4-bit base, so QDoRA / QLoRA is what DoRA adds on a 4-bit base and
QDoRA / DoRA what the 4-bit base adds to DoRA.

All steps are built in one process and timed in interleaved rounds (``bench_latency.interleaved_times``:
every round runs every step, in rotating order), so a slow spell of a shared machine falls on all
of them; a ratio is the median over rounds of one step's time / another's in the same round. The
dequantization share is measured in separate rounds of the QLoRA step with the dequantizer wrapped
in a timer: the seconds inside it, summed over the worker threads, / (workers x the step's
seconds), median over rounds. With 2 workers each shard dequantizes every weight for itself, so a
step makes twice the dequantizations of a 1-worker step.

Results: benchmarks/results/qlora_step_<backend>.json and .png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, bench_latency, bench_train

import numpy as np  # noqa: E402

import common  # noqa: E402
from bench_latency import interleaved_times  # noqa: E402
from bench_train import (CONFIGS, LORA_R, LORA_TARGETS, LR, SHORT, WEIGHT_DECAY, as_trained,  # noqa: E402
                         gpt_config, random_batch)
from minilora.adapters import qlinear  # noqa: E402
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.adapters.qbase import quantize_base  # noqa: E402
from minilora.experiments.train import to_backend  # noqa: E402
from minilora.fast.parallel import loss_and_grads  # noqa: E402
from minilora.nn import backend  # noqa: E402
from minilora.nn.model import GPT  # noqa: E402
from minilora.nn.optim import AdamW  # noqa: E402

METHODS = ("lora", "qlora", "qlora_textbook", "dora", "qdora")
ON_4BIT = ("qlora", "qlora_textbook", "qdora")
TARGET = 1.3          # the bound: a QLoRA step costs at most 1.3 LoRA steps
RATIOS = {"ratio": ("qlora", "lora"), "ratio_textbook": ("qlora_textbook", "lora"), "dora_vs_lora": ("dora", "lora"),
          "qdora_vs_lora": ("qdora", "lora"), "qdora_vs_qlora": ("qdora", "qlora"), "qdora_vs_dora": ("qdora", "dora")}


FAST_DEQUANT = qlinear.dequantize_fast     # what every 4-bit product calls (the layers look it up per call)


def textbook_dequant(qweight, dtype=None):
    """The textbook dequantizer in the fast one's place (the same numbers, five passes)."""
    return qweight.dequantize(dtype)


class DequantTimer:
    """Stands in for qlinear.dequantize_fast and adds up the seconds spent in it."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    def __call__(self, qweight, dtype=None):
        t0 = time.perf_counter()
        W = FAST_DEQUANT(qweight, dtype)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return W


def build_step(name: str, method: str, workers: int, seed: int):
    """A closure running one training step of ``method`` ("lora", "qlora", ...) on configuration ``name``."""
    config, B, T = gpt_config(name)
    model = GPT(config, seed=seed)
    if method in ON_4BIT:
        quantize_base(model, "nf4", double_quant=True)
    lora = LoraConfig(r=LORA_R, target_modules=LORA_TARGETS, use_dora=method in ("dora", "qdora"))
    model = as_trained(LoraModel(model, lora))                # bench_train's LoRA: r = 8 on wq and wv
    opt = AdamW(lr=LR, weight_decay=WEIGHT_DECAY)
    batch = to_backend(random_batch(config, B, T, seed))
    textbook = method == "qlora_textbook"

    def step():
        if textbook:                 # the textbook dequantizer for this step only
            qlinear.dequantize_fast = textbook_dequant
        try:
            opt.step(model.params, loss_and_grads(model, batch, workers=workers)[1])
        finally:
            qlinear.dequantize_fast = FAST_DEQUANT
    return step, model


def frozen_bytes(model) -> dict:
    """Bytes of the block linears' weights (float or their 4-bit parts) and of the whole frozen base."""
    block = [p for n in model.config.linear_names() for p in model.weight_parts.get(f"{n}.weight", [f"{n}.weight"])]
    return {"block_weight_bytes": sum(int(model.params[n].nbytes) for n in block),
            "frozen_bytes": sum(int(model.params[n].nbytes) for n in model.base_param_names())}


def measure(name: str, *, workers: int, rounds: int, warmup: int, seed: int) -> dict:
    """Interleaved rounds of the five steps, then rounds of the QLoRA step with its dequantizer timed."""
    steps, models = {}, {}
    for method in METHODS:
        steps[method], models[method] = build_step(name, method, workers, seed)
    times = interleaved_times(steps, repeats=rounds, warmup=warmup, sync=backend.synchronize)
    ratios = {key: np.asarray(times[a]) / np.asarray(times[b]) for key, (a, b) in RATIOS.items()}
    shares, calls = [], 0
    for _ in range(rounds):
        timer = DequantTimer()
        qlinear.dequantize_fast = timer
        t0 = time.perf_counter()
        try:
            steps["qlora"]()
            backend.synchronize()
        finally:
            qlinear.dequantize_fast = FAST_DEQUANT
        # seconds inside the dequantizer, summed over the worker threads, per thread-second of the step
        shares.append(timer.seconds / (workers * (time.perf_counter() - t0)))
        calls = timer.calls
    config, B, T = gpt_config(name)
    lora_bytes, qlora_bytes = frozen_bytes(models["lora"].model), frozen_bytes(models["qlora"].model)
    return {"config": name, "workers": workers, "rounds": rounds,
            **{f"{m}_ms": 1e3 * float(np.median(times[m])) for m in METHODS},
            **{key: float(np.median(r)) for key, r in ratios.items()},
            **{f"{key}_q{q}": float(np.quantile(r, q / 100)) for key, r in ratios.items() for q in (25, 75)},
            "dequant_share": float(np.median(shares)), "dequant_share_q25": float(np.quantile(shares, 0.25)),
            "dequant_share_q75": float(np.quantile(shares, 0.75)), "dequant_calls_per_step": calls,
            "quantized_layers": len(models["qlora"].model.weight_parts),
            "float_block_weight_bytes": lora_bytes["block_weight_bytes"],
            "nf4_block_weight_bytes": qlora_bytes["block_weight_bytes"],
            "block_weight_ratio": lora_bytes["block_weight_bytes"] / qlora_bytes["block_weight_bytes"],
            "float_frozen_bytes": lora_bytes["frozen_bytes"], "nf4_frozen_bytes": qlora_bytes["frozen_bytes"],
            "frozen_ratio": lora_bytes["frozen_bytes"] / qlora_bytes["frozen_bytes"], "meets_target": bool(
                np.median(ratios["ratio"]) <= TARGET)}


COLUMNS = [("config", "config", "s"), ("workers", "workers", "d"), ("lora_ms", "LoRA ms", ".1f"),
           ("qlora_ms", "QLoRA ms", ".1f"), ("ratio", "QLoRA/LoRA", ".3f"), ("ratio_q25", "q25", ".3f"),
           ("ratio_q75", "q75", ".3f"), ("dequant_share", "dequant share", ".3f"),
           ("dequant_calls_per_step", "dequants/step", "d"), ("qlora_textbook_ms", "textbook ms", ".1f"),
           ("ratio_textbook", "textbook/LoRA", ".3f"), ("qdora_ms", "QDoRA ms", ".1f"),
           ("qdora_vs_lora", "QDoRA/LoRA", ".3f"), ("qdora_vs_qlora", "QDoRA/QLoRA", ".3f"),
           ("qdora_vs_qlora_q25", "q25", ".3f"), ("qdora_vs_qlora_q75", "q75", ".3f"),
           ("qdora_vs_dora", "QDoRA/DoRA", ".3f"), ("dora_vs_lora", "DoRA/LoRA", ".3f"),
           ("block_weight_ratio", "block bytes f32/nf4", ".2f"), ("frozen_ratio", "frozen bytes f32/nf4", ".2f")]


def plot(rows: list[dict], path: Path) -> Path:
    """Step times per configuration (LoRA, QLoRA, QLoRA with the textbook dequantizer, DoRA, QDoRA), 1.3x LoRA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{r['config']}\nx{r['workers']}" for r in rows]
    for j, (m, label) in enumerate(zip(METHODS, ("LoRA", "QLoRA", "QLoRA, textbook dequant", "DoRA", "QDoRA"))):
        ax.bar(np.arange(len(rows)) + 0.17 * (j - 2), [r[f"{m}_ms"] for r in rows], 0.17, label=label)
    ax.scatter(np.arange(len(rows)), [TARGET * r["lora_ms"] for r in rows], marker="_", s=900, color="k",
               label=f"{TARGET} x LoRA", zorder=3)
    ax.set_xticks(np.arange(len(rows)), labels, fontsize=8)
    ax.set(ylabel="ms / step (median of interleaved rounds)", title="one training step, float32 compute")
    ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (and dequantization-share rounds)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(SHORT), choices=list(SHORT))
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="worker-thread counts (minilora.fast.parallel)")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    backend.set_backend(args.backend)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for c in args.configs:
        for w in args.workers:
            print(f"{SHORT[c]}, {w} worker(s) ...", flush=True)
            rows.append(measure(SHORT[c], workers=w, rounds=args.rounds, warmup=args.warmup, seed=args.seed))
    env = {**common.environment(), "load_average_before": load_before}
    print()
    print(common.format_table(rows, COLUMNS))
    print(f"\nQLoRA/LoRA and the other ratios: median over {args.rounds} interleaved rounds of the per-round ratio "
          f"(quartiles q25-q75); QLoRA target <= {TARGET}. dequant share: seconds in the dequantizer / (workers x "
          f"QLoRA step seconds).")
    common.print_conditions(env, load_before)
    common.save_results(args.out, f"qlora_step_{args.backend}", args, {"environment": env, "results": rows,
                                                                      "target": TARGET, "configs": CONFIGS},
                        lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
