"""One LoRA training step on a model of GPT-2 124M's shape: minilora against PyTorch + PEFT, on the CPU.

    python benchmarks/bench_lora_gpt2.py                 # 2 rounds, 5 timed steps per measurement
    python benchmarks/bench_lora_gpt2.py --rounds 3 --steps 8

The model is GPT-2 small's shape (V = 50257, C = 768, L = 12, NH = 12, 1024 positions, 124M
parameters) with random weights (speed does not depend on them), float32. A step: forward over
B = 4 windows of T = 256 random tokens, cross-entropy over every position, backward, AdamW (lr 1e-4)
on the adapters only: LoRA r = 8, lora_alpha = 16 on the four attention matrices Wq, Wk, Wv, Wo of
every block, the base frozen.

  minilora     ``LoraModel`` on ``GPT``, the training loop's settings (fast kernels, freed memory kept,
               the batch shared by one worker thread per core: ``minilora.fast``)
  torch+peft   ``benchmarks/torch_gpt.py`` (the same model and weights in eager PyTorch, minilora's
               module names) wrapped by ``peft.get_peft_model`` with the same LoraConfig;
               ``torch.optim.AdamW`` on the trainable parameters; ``torch.set_num_threads(cpu count)``

Each measurement runs in a fresh child process (``bench_train.run_isolated``), so its memory is
its own: the resident growth from building the model (each library's own random init, one copy of
the weights), then how far the peak rose during the steps (activations, gradients, optimizer state,
library workspaces and caches), and their sum; the two alternate
for ``--rounds`` rounds and the ratio is the median over rounds of minilora's median step time
over PyTorch's of the same round. Results: benchmarks/results/lora_gpt2_124m.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from bench_train import as_trained, matmul_probe, random_batch, run_isolated  # noqa: E402
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.experiments.train import to_backend  # noqa: E402
from minilora.fast.parallel import loss_and_grads  # noqa: E402
from minilora.nn.model import GPT, GPTConfig  # noqa: E402
from minilora.nn.optim import AdamW  # noqa: E402

# Shapes: B batch, T time, C = n_embd, V vocabulary, L layers, NH heads.
GPT2_124M = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
B, T, R, ALPHA, TARGETS, LR = 4, 256, 8, 16, ("wq", "wk", "wv", "wo"), 1e-4


def memory_rows(rss0: int, rss1: int) -> dict:
    """model_mb: resident growth from building the model (rss0 -> rss1, no transient peak); step_peak_mb:
    how far the peak rose above that during the steps; peak_mb: their sum, the whole run's peak growth."""
    model, step = (rss1 - rss0) / 2**20, common.rss_growth_bytes(rss1) / 2**20
    return {"model_mb": model, "step_peak_mb": step, "peak_mb": model + step}


def measure_minilora(*, steps: int, warmup: int, seed: int) -> dict:
    rss0 = common.rss_mark()
    model = as_trained(LoraModel(GPT(GPT2_124M, seed=seed), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS)))
    opt = AdamW(lr=LR, weight_decay=0.0)
    batch = to_backend(random_batch(GPT2_124M, B, T, seed))
    rss1 = common.rss_mark()                     # the model is built: the peak restarts from here

    def step():
        _, grads = loss_and_grads(model, batch)
        opt.step(model.params, grads)

    timing = common.median_time(step, warmup=warmup, steps=steps)
    return {"impl": "minilora", **timing, **memory_rows(rss0, rss1),
            "params": model.num_params(), "trainable_params": model.num_params(trainable_only=True),
            **matmul_probe(GPT2_124M, B, T)}


def measure_torch_peft(*, steps: int, warmup: int, seed: int) -> dict:
    import peft
    import torch

    import torch_gpt

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(seed)
    rss0 = common.rss_mark()
    base = torch_gpt.TorchGPT(GPT2_124M)                    # PyTorch's own random init: no second copy in NumPy
    model = peft.get_peft_model(base, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(TARGETS)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    batch = random_batch(GPT2_124M, B, T, seed)
    x, y = (torch.from_numpy(batch[k]) for k in ("x", "y"))
    rss1 = common.rss_mark()
    step = torch_gpt.training_step(model, opt, x, y)
    timing = common.median_time(step, warmup=warmup, steps=steps)
    return {"impl": "torch+peft", **timing, **memory_rows(rss0, rss1),
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "torch": torch.__version__, "peft": peft.__version__, "torch_threads": torch.get_num_threads(),
            **matmul_probe(GPT2_124M, B, T)}


COLUMNS = [("round", "round", "d"), ("impl", "implementation", "s"), ("ms_per_step", "ms/step", ",.0f"),
           ("tokens_per_s", "tokens/s", ",.0f"), ("model_mb", "model MB", ",.0f"),
           ("step_peak_mb", "steps' peak+ MB", ",.0f"), ("peak_mb", "peak RSS+ MB", ",.0f"),
           ("trainable_params", "trainable", ",d"), ("mm_1024_gflops", "mm 1024^3 GFLOP/s", ".0f")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating minilora / PyTorch measurements")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows, timing = [], dict(steps=args.steps, warmup=args.warmup, seed=args.seed)
    for r in range(args.rounds):
        order = (measure_minilora, measure_torch_peft) if r % 2 == 0 else (measure_torch_peft, measure_minilora)
        for fn in order:
            print(f"round {r}: {fn.__name__}", flush=True)
            row = run_isolated(fn, True, **timing)
            rows.append({**row, "round": r, "ms_per_step": 1e3 * row["median_s"],
                         "tokens_per_s": B * T / row["median_s"]})
    by = {impl: [r for r in rows if r["impl"] == impl] for impl in ("minilora", "torch+peft")}
    ratios = [a["median_s"] / b["median_s"] for a, b in zip(by["minilora"], by["torch+peft"])]
    summary = {"ratio_median": float(np.median(ratios)), "ratios_per_round": ratios, "target": "<= 1.0",
               **{f"peak_mb_{k}": float(np.median([r["peak_mb"] for r in v])) for k, v in by.items()}}
    env = {**common.environment(), "load_average_before": load_before}
    print()
    print(common.format_table(rows, COLUMNS))
    print(f"\nminilora step / PyTorch+PEFT step: {summary['ratio_median']:.2f} "
          f"(per round {[f'{x:.2f}' for x in ratios]}); "
          f"peak RSS growth: minilora {summary['peak_mb_minilora']:,.0f} MB, PyTorch+PEFT "
          f"{summary['peak_mb_torch+peft']:,.0f} MB")
    print(f"GPT-2 124M shape, B = {B}, T = {T}, LoRA r = {R} on {TARGETS}, float32, {args.steps} timed steps after "
          f"{args.warmup} warm-up, a fresh process per measurement")
    common.print_conditions(env, load_before)
    common.save_json(args.out / "lora_gpt2_124m.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                        "summary": summary, "environment": env, "results": rows})
    print(f"saved {args.out / 'lora_gpt2_124m.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
