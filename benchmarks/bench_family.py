"""Time one training step of each LoRA-family method against a LoRA step, in interleaved rounds.

    python benchmarks/bench_family.py                    # both configurations, 20 rounds
    python benchmarks/bench_family.py --configs small --rounds 40 --workers 1

The methods, on the models of bench_train.py (random tokens, loss on every position), all at
r = 8 on wq, wv with the base frozen: LoRA, DoRA (norm detached, PEFT's default), DoRA with the
exact gradient, rsLoRA, LoRA+ (ratio 16), PiSSA, and full fine-tuning as the yardstick. A step is
forward, cross-entropy, backward and an AdamW step, as ``minilora.experiments.train`` runs it
(fast kernels, freed memory kept, the batch shared by ``--workers`` threads).

Every method is built in one process and every round times each method once, in an order that
rotates (bench_latency.interleaved_times), so a slow spell of the shared machine falls on all of
them. The figure of merit is the median over rounds of (method step / LoRA step in the same
round); DoRA's target is <= 1.3. Results: benchmarks/results/family_<backend>.json and .png.
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
from bench_train import (LORA_R, LORA_TARGETS, LR, SHORT, WEIGHT_DECAY, as_trained, gpt_config,  # noqa: E402
                         random_batch)
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.experiments.train import to_backend  # noqa: E402
from minilora.fast.parallel import loss_and_grads  # noqa: E402
from minilora.nn import backend  # noqa: E402
from minilora.nn.model import GPT  # noqa: E402
from minilora.nn.optim import AdamW, loraplus_lr_scale  # noqa: E402

TARGET = 1.3                     # the DoRA step may cost at most 1.3 LoRA steps
LORAPLUS_RATIO = 16.0            # Hayou et al. 2024's suggested lambda = 2^4
# method -> (LoraConfig changes, LoRA+ ratio); None: full fine-tuning
METHODS = {
    "lora": ({}, None),
    "dora": ({"use_dora": True}, None),
    "dora exact": ({"use_dora": True, "dora_detach_norm": False}, None),
    "rslora": ({"use_rslora": True}, None),
    "lora+": ({}, LORAPLUS_RATIO),
    "pissa": ({"init_lora_weights": "pissa"}, None),
    "full": None,
}


def build_step(method: str, name: str, batch: dict, workers: int, seed: int):
    """The model of ``method`` and a function running one training step on ``batch``."""
    config, _, _ = gpt_config(name)
    model = GPT(config, seed=seed)
    spec = METHODS[method]
    ratio = None
    if spec is None:
        model.unfreeze()
    else:
        changes, ratio = spec
        model = LoraModel(model, LoraConfig(r=LORA_R, target_modules=LORA_TARGETS, **changes))
    as_trained(model)
    opt = AdamW(lr=LR, weight_decay=WEIGHT_DECAY, lr_scale=loraplus_lr_scale(ratio) if ratio else None)

    def step():
        opt.step(model.params, loss_and_grads(model, batch, workers=workers)[1])
    return model, opt, step


def measure(name: str, *, workers: int, rounds: int, warmup: int, seed: int, methods) -> list[dict]:
    """One row per method: median ms, median ratio to LoRA in the same round (with quartiles)."""
    config, B, T = gpt_config(name)
    batch = to_backend(random_batch(config, B, T, seed))
    built = {m: build_step(m, name, batch, workers, seed) for m in methods}
    times = interleaved_times({m: step for m, (_, _, step) in built.items()}, repeats=rounds, warmup=warmup,
                              sync=backend.synchronize)
    rows = []
    for m, (model, opt, _) in built.items():
        ratios = np.asarray(times[m]) / np.asarray(times["lora"])
        rows.append({"config": name, "workers": workers, "method": m, "ms": 1e3 * float(np.median(times[m])),
                     "vs_lora": float(np.median(ratios)), "q25": float(np.quantile(ratios, 0.25)),
                     "q75": float(np.quantile(ratios, 0.75)), "trainable": model.num_params(trainable_only=True),
                     "optimizer_bytes": opt.state_bytes(), "times_s": times[m]})
    return rows


COLUMNS = [("config", "config", "s"), ("workers", "workers", "d"), ("method", "method", "s"), ("ms", "ms/step", ".1f"),
           ("vs_lora", "x LoRA", ".3f"), ("q25", "q25", ".3f"), ("q75", "q75", ".3f"),
           ("trainable", "trainable", ",d"), ("optimizer_bytes", "optimizer bytes", ",d")]


def plot(rows: list[dict], path: Path) -> Path:
    """Step time relative to LoRA per method (median over rounds, bars: quartiles), one panel per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["config"], r["workers"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.6), squeeze=False)
    for ax, (name, workers) in zip(axes[0], keys):
        sel = [r for r in rows if (r["config"], r["workers"]) == (name, workers)]
        x = np.arange(len(sel))
        ax.bar(x, [r["vs_lora"] for r in sel], yerr=[[r["vs_lora"] - r["q25"] for r in sel],
                                                    [r["q75"] - r["vs_lora"] for r in sel]], capsize=3)
        ax.axhline(TARGET, color="tab:red", ls="--", lw=1, label=f"DoRA target {TARGET}x")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [r["method"] for r in sel], rotation=30, fontsize=8)
        ax.set(title=f"{name}, {workers} worker(s)", ylabel="step time / LoRA step")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(SHORT), choices=list(SHORT))
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (each times every method once)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="worker threads (default: one per core)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    backend.set_backend(args.backend)
    methods = ["lora"] + [m for m in args.methods if m != "lora"]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for c in args.configs:
        for w in args.workers or [1 if args.backend == "cupy" else backend.cpu_count()]:
            print(f"{SHORT[c]}: {len(methods)} methods, {w} worker(s), {args.rounds} rounds", flush=True)
            rows += measure(SHORT[c], workers=w, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
                            methods=methods)
    env = {**common.environment(), "load_average_before": load_before}
    print()
    print(common.format_table(rows, COLUMNS))
    print(f"\nx LoRA: median over {args.rounds} interleaved rounds of (step / LoRA step in the same round), "
          f"quartiles q25-q75; r = {LORA_R} on {', '.join(LORA_TARGETS)}; float32.")
    for r in rows:
        if r["method"] == "dora":
            verdict = "meets" if r["vs_lora"] <= TARGET else "MISSES"
            print(f"DoRA / LoRA on {r['config']} ({r['workers']} worker(s)): {r['vs_lora']:.3f} "
                  f"({verdict} the {TARGET}x target)")
    common.print_conditions(env, load_before)
    stem = f"family_{args.backend}" + ("" if set(args.configs) == set(SHORT) else "_" + "_".join(args.configs))
    common.save_results(args.out, stem, args, {"environment": env, "results": rows, "target": TARGET},
                        lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
