"""How the cost of a training step grows: full fine-tuning vs LoRA, against C, T and the rank r.

    python benchmarks/bench_scaling.py                 # all three sweeps, 10 timed steps per point
    python benchmarks/bench_scaling.py --steps 25      # steadier medians
    python benchmarks/bench_scaling.py --sweeps rank   # one sweep
    python benchmarks/bench_scaling.py --backend cupy  # on a GPU
    python benchmarks/bench_scaling.py --workers 2     # the batch shared by 2 threads (minilora.fast.parallel)

A step is forward, masked cross-entropy, backward and an AdamW step (as in bench_train.py): full
fine-tuning trains every parameter; LoRA (Hu et al. 2021, §4) trains r on wq, wv only, so the
backward skips every weight gradient of the frozen layers and AdamW touches the adapters only.

Three sweeps around one reference model (V = 64, L = 4, NH = 4, C = 128, T = 64, B = 8, r = 8):
  width     C in 64, 128, 256       (linear layers cost ~ C^2, LoRA's saving is a fixed share of them)
  sequence  T in 16, 32, 64, 128    (attention's T^2 products are not adapted: LoRA saves less there)
  rank      r in 1, 2, ..., 64      (the adapters are thin: LoRA's step should be nearly flat in r)
At each point the variants are timed in interleaved rounds (bench_latency.interleaved_times), so
the LoRA / full ratio compares steps taken seconds apart. Printed per point: median ms/step, the
ratio, and the ratio predicted by counting matrix-product FLOPs (common.gpt_flops: full = 3 x
forward; LoRA = 2 x forward for frozen layers + 3 x the adapters). Results go to
benchmarks/results/scaling_<backend>.json and .png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, bench_train, bench_latency

import numpy as np  # noqa: E402

import common  # noqa: E402
from bench_latency import interleaved_times  # noqa: E402
from bench_train import random_batch  # noqa: E402
from minilora.nn import backend  # noqa: E402
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.nn.model import GPT, GPTConfig, init_params  # noqa: E402
from minilora.nn.optim import AdamW  # noqa: E402
from minilora.experiments.train import to_backend  # noqa: E402
from minilora.fast import FAST, memory  # noqa: E402
from minilora.fast.parallel import loss_and_grads  # noqa: E402

# Shapes: B batch, T time, C channels, L layers, NH heads, V vocabulary, r LoRA rank.
REFERENCE = dict(vocab_size=64, n_layer=4, n_head=4, n_embd=128, T=64, B=8, r=8)
SWEEPS = {"width": ("n_embd", (64, 128, 256)), "sequence": ("T", (16, 32, 64, 128)),
          "rank": ("r", (1, 2, 4, 8, 16, 32, 64))}
LORA_TARGETS = ("wq", "wv")
LR, WEIGHT_DECAY = 1e-4, 0.01   # small, so that timed steps stay numerically ordinary


# --------------------------------------------------------------------------- one point
def step_fn(config: GPTConfig, batch: dict, *, r: int | None, seed: int, workers: int = 1):
    """A closure doing one training step: full fine-tuning (r None) or LoRA r on wq, wv."""
    model = GPT(config, init_params(config, seed=seed))
    if r is not None:
        model = LoraModel(model, LoraConfig(r=r, lora_alpha=r, target_modules=LORA_TARGETS))
    memory.keep_freed_memory()               # as the training loop does (TrainConfig.fast)
    model.kernels = FAST
    opt = AdamW(lr=LR, weight_decay=WEIGHT_DECAY)

    def step():
        _, grads = loss_and_grads(model, batch, workers=workers)
        opt.step(model.params, grads)
    return step, model.num_params(trainable_only=True)


def measure_point(spec: dict, ranks, *, steps: int, warmup: int, seed: int, workers: int = 1) -> list[dict]:
    """Rows for full fine-tuning and for LoRA at each rank in ``ranks``, timed in interleaved rounds."""
    spec = dict(spec)
    B, T = spec.pop("B"), spec.pop("T")
    spec.pop("r")
    config = GPTConfig(block_size=T, **spec)
    batch = to_backend(random_batch(config, B, T, seed))
    fns, trainable = {}, {}
    for r in (None, *ranks):
        name = "full" if r is None else f"lora r={r}"
        fns[name], trainable[name] = step_fn(config, batch, r=r, seed=seed, workers=workers)
    times = interleaved_times(fns, repeats=steps, warmup=warmup, sync=backend.synchronize)
    full_flops = common.gpt_flops(config, B, T)["train_step"]
    rows = []
    for name, ts in times.items():
        r = None if name == "full" else int(name.split("=")[1])
        flops = full_flops if r is None else common.gpt_flops(config, B, T, lora_r=r,
                                                              lora_targets=len(LORA_TARGETS))["train_step"]
        rows.append({"method": "full" if r is None else "lora", "r": r, "C": config.n_embd, "T": T, "B": B,
                     "ms": 1e3 * float(np.median(ts)), "trainable": trainable[name], "train_step_flops": flops,
                     "ratio_to_full": float(np.median(np.asarray(ts) / np.asarray(times["full"]))),
                     "flops_ratio_to_full": flops / full_flops, "times_s": ts})
    return rows


# --------------------------------------------------------------------------- report
def plot(results: dict, path: Path) -> Path:
    """One panel per sweep: ms/step of full fine-tuning and LoRA against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (sweep, rows) in zip(axes[0], results.items()):
        key = {"width": "C", "sequence": "T", "rank": "r"}[sweep]
        lora = [r for r in rows if r["method"] == "lora"]
        full = [r for r in rows if r["method"] == "full"]
        if sweep == "rank":
            ax.plot([r["r"] for r in lora], [r["ms"] for r in lora], "o-", label="LoRA (wq, wv)")
            ax.axhline(float(np.median([r["ms"] for r in full])), color="C1", ls="--", label="full fine-tuning")
            ax.set_ylim(bottom=0)    # from zero, so that "flat in r" reads as flat
        else:
            ax.plot([r[key] for r in full], [r["ms"] for r in full], "s-", color="C1", label="full fine-tuning")
            ax.plot([r[key] for r in lora], [r["ms"] for r in lora], "o-", color="C0", label=f"LoRA r={lora[0]['r']}")
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set(xlabel=key, ylabel="ms / training step (median)", title=f"{sweep} sweep")
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


COLUMNS = [("sweep", "sweep", "s"), ("C", "C", "d"), ("T", "T", "d"), ("method", "method", "s"), ("r", "r", "d"),
           ("trainable", "trainable", ",d"), ("ms", "ms/step", ".1f"), ("ratio_to_full", "/ full", ".2f"),
           ("flops_ratio_to_full", "FLOPs / full", ".2f")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    ap.add_argument("--steps", type=int, default=10, help="timed rounds per point (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--batch", type=int, default=REFERENCE["B"], help="B")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="threads sharing each batch (default 1: the plain step)")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    backend.set_backend(args.backend)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    reference = {**REFERENCE, "B": args.batch}
    results = {}
    for sweep in args.sweeps:
        key, values = SWEEPS[sweep]
        rows = []
        if sweep == "rank":        # one point: full fine-tuning and every rank, interleaved
            print(f"rank sweep: C={reference['n_embd']} T={reference['T']}, r in {values}", flush=True)
            rows = measure_point(reference, values, steps=args.steps, warmup=args.warmup, seed=args.seed,
                                 workers=args.workers)
        else:
            for v in values:
                print(f"{sweep} sweep: {key}={v}", flush=True)
                rows += measure_point({**reference, key: v}, (reference["r"],), steps=args.steps,
                                      warmup=args.warmup, seed=args.seed, workers=args.workers)
        results[sweep] = [{"sweep": sweep, **r} for r in rows]

    env = {**common.environment(), "load_average_before": load_before, "backend": args.backend}
    print()
    print(common.format_table([r for rows in results.values() for r in rows], COLUMNS))
    print(f"\nreference: V={REFERENCE['vocab_size']} L={REFERENCE['n_layer']} NH={REFERENCE['n_head']} "
          f"C={REFERENCE['n_embd']} T={REFERENCE['T']} B={args.batch} r={REFERENCE['r']} (LoRA on wq, wv), float32, "
          f"AdamW, backend {args.backend}, {args.workers} worker thread(s). ms/step: median of {args.steps} rounds after {args.warmup} warm-up; "
          f"/ full: median over rounds of the time ratio to full fine-tuning at the same point; FLOPs / full: "
          f"the same ratio predicted from matrix-product FLOPs (common.gpt_flops).")
    common.print_conditions(env, load_before)
    stem = f"scaling_{args.backend}" + (f"_x{args.workers}" if args.workers > 1 else "")
    if set(args.sweeps) != set(SWEEPS):   # a partial run does not overwrite the full one
        stem += "_" + "_".join(args.sweeps)
    common.save_results(args.out, stem, args, {"reference": reference, "environment": env, "results": results},
                        lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
