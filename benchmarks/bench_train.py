"""Time one full training step of minilora's GPT, and of the same model in PyTorch eager.

    python benchmarks/bench_train.py                  # both configurations, 10 timed steps each
    python benchmarks/bench_train.py --steps 30 --configs large --sdpa
    python benchmarks/bench_train.py --no-lora        # full fine-tuning rows only
    python benchmarks/bench_train.py --workers 1 2    # only these worker-thread counts
    python benchmarks/bench_train.py --backend cupy   # minilora on the GPU (PyTorch on CUDA if it can)

A step is: forward, masked cross-entropy over every position, backward, AdamW step, all
parameters trainable (in the LoRA rows: only the adapters). minilora is timed on one thread
(BLAS still uses every core for matrix products) and with the batch shared by several worker
threads (``minilora.fast.parallel``: data parallelism, one single-threaded BLAS per worker; by default
one worker per core). Tokens are random: speed does not depend
on what the tokens say. Each measurement runs in a fresh child process, so its peak-memory
growth is its own and one framework's thread pools cannot slow the other.

Printed per row: ms/step (median, after 3 warm-up steps), tokens/s = B T / step time, model
GFLOP/s = matrix-product FLOPs of the step (common.gpt_flops) / step time, the GFLOP/s of two
float32 NumPy matmuls measured in the same process right after the steps, (B T, C) @ (C, 4C)
(the MLP's fc product) and 1024^3, and the step's GFLOP/s as a fraction of each; peak RSS growth
and optimizer state bytes; the step time as a multiple of PyTorch's. A second table gives the
LoRA step as a fraction of the full fine-tuning step, both timed in interleaved rounds in one
process (the steadier figure for that ratio; the main table's "x full" compares rows measured
in different processes). Results go to
benchmarks/results/train_<backend>[_lora][_<config>].json and .png (the config only when
--configs names fewer than all).
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, bench_latency, torch_gpt

import numpy as np  # noqa: E402

import common  # noqa: E402
from bench_latency import interleaved_times  # noqa: E402
from minilora.nn import backend  # noqa: E402
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.nn.model import GPT, GPTConfig, init_params  # noqa: E402
from minilora.nn.optim import AdamW  # noqa: E402
from minilora.experiments.train import to_backend  # noqa: E402
from minilora.fast import FAST, memory  # noqa: E402
from minilora.fast.parallel import loss_and_grads  # noqa: E402

# Shapes: B batch, T time, C = n_embd, V vocabulary, L layers, NH heads.
CONFIGS = {
    "V64 d128 L4 H4 T64 B32": dict(vocab_size=64, n_embd=128, n_layer=4, n_head=4, T=64, B=32),
    "V256 d256 L6 H8 T128 B16": dict(vocab_size=256, n_embd=256, n_layer=6, n_head=8, T=128, B=16),
}
SHORT = {"small": "V64 d128 L4 H4 T64 B32", "large": "V256 d256 L6 H8 T128 B16"}
LR, WEIGHT_DECAY = 1e-4, 0.01   # small, so that timed steps stay numerically ordinary
LORA_R, LORA_TARGETS = 8, ("wq", "wv")


# --------------------------------------------------------------------------- set-up
def gpt_config(name: str) -> tuple[GPTConfig, int, int]:
    """(GPTConfig, B, T) of a named configuration."""
    spec = dict(CONFIGS[name])
    B, T = spec.pop("B"), spec.pop("T")
    return GPTConfig(block_size=T, **spec), B, T


def random_batch(config: GPTConfig, B: int, T: int, seed: int) -> dict:
    """x, y (B, T) random token ids; mask (B, T) all ones (the loss counts every position)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, config.vocab_size, (B, T)), "y": rng.integers(0, config.vocab_size, (B, T)),
            "mask": np.ones((B, T), dtype=np.float32)}


def attach_lora(model: GPT) -> LoraModel:
    """The model with LoRA r = 8 on wq and wv (Hu et al. 2021, §4.2), base frozen."""
    return LoraModel(model, LoraConfig(r=LORA_R, target_modules=LORA_TARGETS))


def as_trained(model):
    """What ``minilora.experiments.train`` switches on (TrainConfig.fast): fast kernels, freed memory kept."""
    memory.keep_freed_memory()
    model.kernels = FAST
    return model


def matmul_probe(config: GPTConfig, B: int, T: int, xp=np, sync=None) -> dict:
    """float32 GFLOP/s of (B T, C) @ (C, 4C) and of 1024 x 1024 x 1024, on ``xp``."""
    C = config.n_embd
    return {"mm_fc_gflops": common.matmul_gflops(B * T, C, 4 * C, xp=xp, sync=sync),
            "mm_1024_gflops": common.matmul_gflops(1024, 1024, 1024, xp=xp, sync=sync)}


# --------------------------------------------------------------------------- measurements (child processes)
def measure_minilora(name: str, *, backend_name: str, lora: bool, workers: int, steps: int, warmup: int,
                     seed: int) -> dict:
    """One row: minilora's float32 training step on ``backend_name`` with ``workers`` threads."""
    backend.set_backend(backend_name)
    config, B, T = gpt_config(name)
    rss0 = common.rss_mark()
    model = GPT(config, seed=seed)
    if lora:
        model = attach_lora(model)
    as_trained(model)
    opt = AdamW(lr=LR, weight_decay=WEIGHT_DECAY)
    batch = to_backend(random_batch(config, B, T, seed))

    def step():
        _, grads = loss_and_grads(model, batch, workers=workers)
        opt.step(model.params, grads)

    timing = common.median_time(step, warmup=warmup, steps=steps, sync=backend.synchronize)
    impl = f"minilora {backend_name}" + (" lora" if lora else "") + (f" x{workers}" if workers > 1 else "")
    row = {"impl": impl, "workers": workers, "lora": lora, **timing,
           "rss_growth_bytes": common.rss_growth_bytes(rss0), "optimizer_state_bytes": opt.state_bytes(),
           "params": model.num_params(), "trainable_params": model.num_params(trainable_only=True)}
    if lora:
        row.update(lora_r=LORA_R, lora_targets=len(LORA_TARGETS))
    xp = backend.xp if backend_name == "cupy" else np
    return {**row, **matmul_probe(config, B, T, xp=xp, sync=backend.synchronize)}


def measure_lora_ratio(name: str, *, backend_name: str, workers: int, rounds: int, warmup: int, seed: int) -> dict:
    """LoRA step / full fine-tuning step, both built in this process and timed in interleaved rounds.

    Separate rows of the main table come from separate processes seconds apart; on a noisy
    machine their ratio drifts. Here every round times both steps back to back (in an order
    that alternates), and the ratio is the median over rounds of lora time / full time.
    """
    backend.set_backend(backend_name)
    config, B, T = gpt_config(name)
    batch = to_backend(random_batch(config, B, T, seed))
    steps = {}
    for method in ("full", "lora"):
        model = GPT(config, seed=seed)
        model = as_trained(attach_lora(model) if method == "lora" else model)
        opt = AdamW(lr=LR, weight_decay=WEIGHT_DECAY)
        steps[method] = lambda model=model, opt=opt: opt.step(model.params,
                                                              loss_and_grads(model, batch, workers=workers)[1])
    times = interleaved_times(steps, repeats=rounds, warmup=warmup, sync=backend.synchronize)
    ratios = np.asarray(times["lora"]) / np.asarray(times["full"])
    flops = [common.gpt_flops(config, B, T, **kw)["train_step"] for kw in ({}, {"lora_r": LORA_R,
                                                                              "lora_targets": len(LORA_TARGETS)})]
    return {"config": name, "workers": workers, "rounds": rounds,
            "full_ms": 1e3 * float(np.median(times["full"])), "lora_ms": 1e3 * float(np.median(times["lora"])),
            "ratio": float(np.median(ratios)), "ratio_q25": float(np.quantile(ratios, 0.25)),
            "ratio_q75": float(np.quantile(ratios, 0.75)), "flops_ratio": flops[1] / flops[0]}


RATIO_COLUMNS = [("config", "config", "s"), ("workers", "workers", "d"), ("full_ms", "full ms", ".1f"),
                 ("lora_ms", "LoRA ms", ".1f"), ("ratio", "LoRA / full", ".3f"), ("ratio_q25", "q25", ".3f"),
                 ("ratio_q75", "q75", ".3f"), ("flops_ratio", "FLOPs ratio", ".3f")]


def measure_torch(name: str, *, sdpa: bool, device: str, steps: int, warmup: int, seed: int) -> dict:
    """One row: the same model and step in PyTorch eager (torch.optim.AdamW, same decay groups)."""
    import torch

    import torch_gpt

    torch.set_num_threads(os.cpu_count())    # every core, as OpenBLAS uses for NumPy
    config, B, T = gpt_config(name)
    params = init_params(config, seed=seed)  # the same initial weights as the minilora row
    rss0 = common.rss_mark()
    model = torch_gpt.from_minilora_params(config, params, sdpa=sdpa, device=device)
    del params
    # minilora's AdamW skips weight decay on 1-d parameters (biases, LayerNorm gains): do the same.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    batch = random_batch(config, B, T, seed)
    x, y = (torch.from_numpy(batch[k]).to(device) for k in ("x", "y"))
    step = torch_gpt.training_step(model, opt, x, y)

    sync = torch.cuda.synchronize if device == "cuda" else None
    timing = common.median_time(step, warmup=warmup, steps=steps, sync=sync)
    state = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    row = {"impl": f"torch {device}" + (" sdpa" if sdpa else ""), **timing,
           "rss_growth_bytes": common.rss_growth_bytes(rss0), "optimizer_state_bytes": state,
           "params": sum(p.numel() for p in model.parameters()),
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return {**row, **matmul_probe(config, B, T)}


def run_isolated(fn, isolate: bool, **kwargs) -> dict:
    """``fn(**kwargs)`` in a fresh spawned process (clean memory peak and thread pools), or here."""
    if not isolate:
        return fn(**kwargs)
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, kwds=kwargs)


# --------------------------------------------------------------------------- report
def finish_row(row: dict, name: str) -> dict:
    """Add the derived numbers: ms/step, tokens/s, GFLOP/s and the fractions of matmul GFLOP/s."""
    config, B, T = gpt_config(name)
    flops = common.gpt_flops(config, B, T, lora_r=row.get("lora_r", 0), lora_targets=row.get("lora_targets", 0))
    s = row["median_s"]
    gflops = flops["train_step"] / s / 1e9
    return {**row, "config": name, "B": B, "T": T, "ms_per_step": 1e3 * s, "tokens_per_s": B * T / s,
            "train_step_flops": flops["train_step"], "gflops": gflops,
            "frac_mm_fc": gflops / row["mm_fc_gflops"], "frac_mm_1024": gflops / row["mm_1024_gflops"],
            "rss_growth_mb": row["rss_growth_bytes"] / 2**20, "opt_state_mb": row["optimizer_state_bytes"] / 2**20}


COLUMNS = [("config", "config", "s"), ("impl", "implementation", "s"), ("ms_per_step", "ms/step", ".1f"),
           ("tokens_per_s", "tokens/s", ",.0f"), ("gflops", "GFLOP/s", ".1f"),
           ("mm_fc_gflops", "mm(BT,C,4C)", ".0f"), ("frac_mm_fc", "frac", ".2f"),
           ("mm_1024_gflops", "mm 1024^3", ".0f"), ("frac_mm_1024", "frac", ".2f"),
           ("rss_growth_mb", "RSS+ MB", ".0f"), ("opt_state_mb", "opt MB", ".1f"),
           ("vs_torch", "x torch", ".2f"), ("vs_full", "x full", ".2f")]


def plot(rows: list[dict], path: Path) -> Path:
    """Two panels: ms/step and GFLOP/s (with the matmul probes as marks) per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["config"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / len(impls)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, impl in enumerate(impls):
        for ax, key in zip(axes, ("ms_per_step", "gflops")):
            xs = [i + j * width for i, n in enumerate(names) for r in rows if r["config"] == n and r["impl"] == impl]
            ys = [r[key] for n in names for r in rows if r["config"] == n and r["impl"] == impl]
            ax.bar(xs, ys, width, label=impl)
    for i, n in enumerate(names):
        probe = next(r for r in rows if r["config"] == n)
        for key, style in (("mm_fc_gflops", "--"), ("mm_1024_gflops", ":")):
            axes[1].hlines(probe[key], i - width / 2, i + 0.8 - width / 2, colors="k", linestyles=style)
    axes[0].set(title="one training step (median)", ylabel="ms / step")
    axes[1].set(title="model GFLOP/s (-- mm(BT,C,4C), .. mm 1024^3)", ylabel="GFLOP/s")
    for ax in axes:
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=8)
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--configs", nargs="+", default=list(SHORT), choices=list(SHORT))
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--no-lora", action="store_true", help="skip the rows that train LoRA r = 8 on wq, wv only")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds of the LoRA / full ratio")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="worker-thread counts to time minilora with (default: 1 and one per core)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    ap.add_argument("--sdpa", action="store_true", help="add a PyTorch row with fused scaled_dot_product_attention")
    ap.add_argument("--in-process", action="store_true", help="no child processes (for profilers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    # Only ask whether PyTorch is installed: importing it here would grow this process for nothing.
    has_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    device = "cpu"
    if has_torch and args.backend == "cupy":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_variants = ((False, True) if args.sdpa else (False,)) if has_torch else ()
    timing = dict(steps=args.steps, warmup=args.warmup, seed=args.seed)
    isolate = not args.in_process

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    worker_counts = args.workers or ([1] if args.backend == "cupy" else sorted({1, backend.cpu_count()}))
    variants = [(lora, w) for lora in ((False,) if args.no_lora else (False, True)) for w in worker_counts]
    rows = []
    for name in (SHORT[c] for c in args.configs):
        for lora, workers in variants:
            print(f"{name}: minilora {args.backend}" + (" lora" if lora else "") + f", {workers} worker(s)",
                  flush=True)
            rows.append(finish_row(run_isolated(measure_minilora, isolate, name=name, backend_name=args.backend,
                                                lora=lora, workers=workers, **timing), name))
        for sdpa in torch_variants:
            print(f"{name}: torch {device}" + (" sdpa" if sdpa else ""), flush=True)
            rows.append(finish_row(run_isolated(measure_torch, isolate, name=name, sdpa=sdpa, device=device,
                                                **timing), name))
    if not rows:
        print("nothing measured")
        return 1
    ratios = [] if args.no_lora else [
        run_isolated(measure_lora_ratio, isolate, name=SHORT[c], backend_name=args.backend, workers=w,
                     rounds=args.rounds, warmup=args.warmup, seed=args.seed)
        for c in args.configs for w in worker_counts]
    for r in rows:   # the step time as a multiple of PyTorch eager's (same configuration, no sdpa)
        ref = next((t for t in rows if t["config"] == r["config"] and t["impl"] == f"torch {device}"), None)
        r["vs_torch"] = r["ms_per_step"] / ref["ms_per_step"] if ref else None
        # a LoRA step as a multiple of the full fine-tuning step with the same worker count
        full = next((t for t in rows if t["config"] == r["config"] and t.get("lora") is False
                     and t["workers"] == r.get("workers")), None)
        r["vs_full"] = r["ms_per_step"] / full["ms_per_step"] if r.get("lora") and full else None

    env = {**common.environment(), "load_average_before": load_before}
    print()
    print(common.format_table(rows, COLUMNS))
    print(f"\nFLOPs: matrix products only, training = 3 x forward (frozen layers 2 x), full T^2 attention "
          f"(see common.gpt_flops). "
          f"{args.steps} timed steps after {args.warmup} warm-up; float32.")
    if ratios:
        print(f"\nLoRA step / full step, timed back to back in {args.rounds} interleaved rounds in one process "
              f"(median over rounds, quartiles q25-q75); FLOPs ratio: matrix products only (common.gpt_flops).")
        print(common.format_table(ratios, RATIO_COLUMNS))
    libs = [(b.get("internal_api"), b.get("version"), b.get("architecture"), b.get("num_threads")) for b in env["blas"]]
    print(f"BLAS (api, version, kernel, threads): {libs}")
    common.print_conditions(env, load_before)
    stem = f"train_{args.backend}"
    if set(args.configs) != set(SHORT):   # a partial run does not overwrite the full one
        stem += "_" + "_".join(args.configs)
    common.save_results(args.out, stem, args, {"environment": env, "results": rows, "lora_vs_full": ratios},
                        lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
