"""Inference latency of one forward pass: base, LoRA merged and unmerged, AdapterH, AdapterL.

    python benchmarks/bench_latency.py                    # the shipped base's width and depth, 50 repeats
    python benchmarks/bench_latency.py --repeats 20       # quicker
    python benchmarks/bench_latency.py --n-embd 256 --n-layer 6 --n-head 8
    python benchmarks/bench_latency.py --backend cupy     # on a GPU, where Table 1 of the paper was measured

The LoRA paper's Table 1 (Hu et al. 2021, §3) times GPT-2 medium on one GPU with adapters, at
batch/sequence 32/512, 16/256 and 1/128, to show that adapter layers add latency and that a
merged LoRA adds none. This script builds the same comparison on minilora's GPT:

  base           the frozen GPT
  LoRA merged    r = 4 on wq, wv, then W = W0 + s B A (§4.1): the very same products as base
  LoRA unmerged  the same adapter kept apart: two thin products (x A^T) B^T per adapted matrix
  AdapterH       Houlsby adapters after attn.wo and mlp.proj (two per block)
  AdapterL       one adapter per block, after mlp.proj
  (bottleneck m of each adapter variant: the m whose trainable count is nearest LoRA's)

The model has the shipped base's width and depth (minilora.experiments.pretrain.base_config: C = 128, L = 4,
NH = 4, V = 56) but block_size 64 and random weights: latency does not depend on what the
weights are. Shapes B x T default to 32x64, 16x64, 1x16. Every repeat times each variant once,
in a rotated order, so slow spells of a busy machine hit all variants alike; the overhead of a
variant is the median over repeats of (its time / base's time in the same repeat), in percent.
Forward only, float32, no gradient work (the caches a forward returns are built all the same).
Results go to benchmarks/results/latency_<backend>.json and .png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common

import numpy as np  # noqa: E402

import common  # noqa: E402
from minilora.classroom import timing  # noqa: E402
from minilora.nn import backend  # noqa: E402
from minilora.adapters.bottleneck import AdapterConfig, AdapterModel, expected_trainable_count  # noqa: E402
from minilora.adapters.config import LoraConfig  # noqa: E402
from minilora.fast import FAST, memory  # noqa: E402
from minilora.adapters.lora_model import LoraModel  # noqa: E402
from minilora.nn.model import GPT, GPTConfig, init_params  # noqa: E402
from minilora.experiments.pretrain import base_config  # noqa: E402

# Shapes: B batch, T time, C channels, L layers, m adapter bottleneck, r LoRA rank.
SHAPES = ((32, 64), (16, 64), (1, 16))
LORA_R, LORA_TARGETS = 4, ("wq", "wv")
VARIANTS = ("base", "lora_merged", "lora_unmerged", "adapter_h", "adapter_l")
LABELS = {"base": "base", "lora_merged": "LoRA merged", "lora_unmerged": "LoRA unmerged",
          "adapter_h": "AdapterH", "adapter_l": "AdapterL"}
# Hu et al. 2021, Table 1 (GPT-2 medium, one forward pass, ms; overhead vs Fine-Tune/LoRA in percent),
# at batch/sequence 32/512, 16/256, 1/128. Unmerged LoRA is not in the table.
PAPER_SHAPES = ("32/512", "16/256", "1/128")
PAPER = {"base": (1449.4, 338.0, 19.8), "lora_merged": (0.0, 0.0, 0.0),
         "adapter_l": (2.2, 5.0, 20.7), "adapter_h": (3.0, 8.4, 30.3)}


# --------------------------------------------------------------------------- timing
def interleaved_times(fns: dict, *, repeats: int, warmup: int = 2, sync=None) -> dict[str, list[float]]:
    """Seconds of each call of each ``fns[name]()``, ``repeats`` rounds, all variants in every round,
    the order rotated each round so that a slow spell of the machine falls on all of them (the same
    timer the tutorials use: ``minilora.classroom.timing.interleaved_times``)."""
    return timing.interleaved_times(fns, rounds=repeats, warmup=warmup, sync=sync)


def paired_overhead_pct(times: list[float], ref: list[float]) -> float:
    """Median over rounds of (time / reference time in the same round) - 1, in percent."""
    return 100.0 * (float(np.median(np.asarray(times) / np.asarray(ref))) - 1.0)


# --------------------------------------------------------------------------- the variants
def nearest_bottleneck(variant: str, target: int, n_layer: int, d_model: int) -> int:
    """The bottleneck m >= 1 whose adapter trainable count is nearest ``target``."""
    return min(range(1, d_model + 1), key=lambda m: abs(
        expected_trainable_count(AdapterConfig(variant=variant, bottleneck=m), n_layer, d_model) - target))


def build_variants(config: GPTConfig, *, seed: int = 0) -> tuple[dict, dict]:
    """name -> model with a ``forward``, and name -> facts (trainable count, bottleneck)."""
    params = init_params(config, seed=seed)
    rng = backend.rng(seed + 1)

    def fresh():
        return GPT(config, {k: v.copy() for k, v in params.items()})

    def randomize(model, part):   # non-zero adapters: a forward does the same work either way, but honestly so
        for k, v in model.params.items():
            if part in k:
                v[...] = backend.asarray(0.02 * rng.standard_normal(v.shape), dtype=v.dtype)

    lora_cfg = LoraConfig(r=LORA_R, lora_alpha=LORA_R, target_modules=LORA_TARGETS)
    merged, unmerged = LoraModel(fresh(), lora_cfg), LoraModel(fresh(), lora_cfg)
    randomize(unmerged, ".lora_B.")
    for k in unmerged.params:                      # both LoRA models carry the same adapter
        if ".lora_" in k:
            merged.params[k][...] = unmerged.params[k]
    merged.merge_adapter()
    n_lora = unmerged.num_params(trainable_only=True)
    L, C = config.n_layer, config.n_embd
    m_h, m_l = (nearest_bottleneck(v, n_lora, L, C) for v in ("houlsby", "lin"))
    adapter_h = AdapterModel(fresh(), AdapterConfig(variant="houlsby", bottleneck=m_h))
    adapter_l = AdapterModel(fresh(), AdapterConfig(variant="lin", bottleneck=m_l))
    randomize(adapter_h, ".adapter_up."), randomize(adapter_l, ".adapter_up.")
    base = fresh()
    base.freeze()
    models = {"base": base, "lora_merged": merged, "lora_unmerged": unmerged,
              "adapter_h": adapter_h, "adapter_l": adapter_l}
    for model in models.values():                  # the kernels the training loop and evaluation use
        model.kernels = FAST
    facts = {"base": {"trainable": 0}, "lora_merged": {"trainable": n_lora, "r": LORA_R},
             "lora_unmerged": {"trainable": n_lora, "r": LORA_R},
             "adapter_h": {"trainable": adapter_h.num_params(True), "m": m_h},
             "adapter_l": {"trainable": adapter_l.num_params(True), "m": m_l}}
    return models, facts


def forward_flops(config: GPTConfig, B: int, T: int, facts: dict) -> dict[str, int]:
    """Matrix-product FLOPs of one forward pass of each variant (common.gpt_flops, plus adapters).

    An adapter on (B T) rows costs two products, (BT, C) x (C, m) and (BT, m) x (m, C): 4 B T C m.
    """
    base = common.gpt_flops(config, B, T)["forward"]
    lora = common.gpt_flops(config, B, T, lora_r=LORA_R, lora_targets=len(LORA_TARGETS))["forward"]
    L, C = config.n_layer, config.n_embd
    return {"base": base, "lora_merged": base, "lora_unmerged": lora,
            "adapter_h": base + L * 2 * 4 * B * T * C * facts["adapter_h"]["m"],
            "adapter_l": base + L * 1 * 4 * B * T * C * facts["adapter_l"]["m"]}


# --------------------------------------------------------------------------- report
def plot(rows: list[dict], shapes, path: Path) -> Path:
    """Overhead in percent per shape and variant (bars), the paper's Table 1 overheads as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    for j, row in enumerate(rows):
        xs = [i + j * width for i in range(len(shapes))]
        ax.bar(xs, [row[f"pct_{B}x{T}"] for B, T in shapes], width, label=LABELS[row["variant"]])
        paper = PAPER.get(row["variant"])
        if paper and row["variant"] != "base":
            ax.plot(xs, paper[:len(shapes)], "k_", markersize=14, mew=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))],
                  [f"B={B}, T={T}\n(paper {p})" for (B, T), p in zip(shapes, PAPER_SHAPES)])
    ax.set(ylabel="forward-pass overhead vs base (%)",
           title="inference latency overhead (bars: measured; black marks: Hu et al. 2021, Table 1)")
    ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    base = base_config()
    ap.add_argument("--n-embd", type=int, default=base.n_embd, help="C (default: the shipped base's)")
    ap.add_argument("--n-layer", type=int, default=base.n_layer, help="L (default: the shipped base's)")
    ap.add_argument("--n-head", type=int, default=base.n_head, help="NH (default: the shipped base's)")
    ap.add_argument("--vocab-size", type=int, default=base.vocab_size, help="V (default: the shipped base's)")
    ap.add_argument("--shapes", default=",".join(f"{B}x{T}" for B, T in SHAPES), help="BxT list, e.g. 32x64,1x16")
    ap.add_argument("--repeats", type=int, default=50, help="timed rounds (each times every variant once)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    backend.set_backend(args.backend)
    memory.keep_freed_memory()    # as training does: no fresh pages (and page faults) on every forward pass
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    config = GPTConfig(vocab_size=args.vocab_size, block_size=max(T for _, T in shapes), n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    models, facts = build_variants(config, seed=args.seed)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(args.seed)
    rows = {name: {"variant": name, "label": LABELS[name], **facts[name]} for name in VARIANTS}
    checks = {}
    for B, T in shapes:
        idx = backend.asarray(rng.integers(0, config.vocab_size, (B, T)))
        logits = {name: backend.to_numpy(m.forward(idx)[0]) for name, m in models.items()}
        diff = float(np.abs(logits["lora_merged"] - logits["lora_unmerged"]).max())
        checks[f"{B}x{T}"] = {"merged_vs_unmerged_max_abs": diff}
        print(f"B={B} T={T}: {args.repeats} rounds x {len(models)} variants", flush=True)
        fns = {name: (lambda m=m: m.forward(idx)) for name, m in models.items()}
        times = interleaved_times(fns, repeats=args.repeats, warmup=args.warmup, sync=backend.synchronize)
        flops = forward_flops(config, B, T, facts)
        for name in VARIANTS:
            rows[name].update({f"ms_{B}x{T}": 1e3 * float(np.median(times[name])),
                               f"pct_{B}x{T}": paired_overhead_pct(times[name], times["base"]),
                               f"flops_pct_{B}x{T}": 100.0 * (flops[name] / flops["base"] - 1.0),
                               f"times_s_{B}x{T}": times[name]})
    rows = list(rows.values())
    for row in rows:
        paper = PAPER.get(row["variant"])
        for i, p in enumerate(PAPER_SHAPES):
            row[f"paper_{p}"] = None if paper is None else paper[i]
        row["name"] = row["label"] + (f" (m={row['m']})" if "m" in row else f" (r={row['r']})" if "r" in row else "")

    env = {**common.environment(), "load_average_before": load_before, "backend": args.backend}
    columns = [("name", "variant", "s"), ("trainable", "trainable", ",d")]
    for B, T in shapes:
        columns += [(f"ms_{B}x{T}", f"{B}x{T} ms", ".2f"), (f"pct_{B}x{T}", "+%", "+.1f")]
    columns += [(f"flops_pct_{shapes[0][0]}x{shapes[0][1]}", "FLOPs +%", "+.1f")]
    columns += [(f"paper_{p}", f"paper {p}", ".1f") for p in PAPER_SHAPES]
    print()
    print(common.format_table(rows, columns))
    print(f"\nmodel: V={config.vocab_size} C={config.n_embd} L={config.n_layer} NH={config.n_head}, random "
          f"weights, float32, backend {args.backend}. ms: median of {args.repeats} rounds; +%: median over rounds of "
          f"the time ratio to base in the same round. FLOPs +%: matrix products only (common.gpt_flops), at "
          f"{shapes[0][0]}x{shapes[0][1]}. paper: Hu et al. 2021, Table 1, GPT-2 medium on one GPU (base row: ms; "
          f"other rows: +% vs base).")
    print(f"LoRA r={LORA_R} on {'+'.join(LORA_TARGETS)}; adapter bottlenecks chosen as the m whose trainable count is "
          f"nearest LoRA's ({facts['lora_unmerged']['trainable']:,}). merged vs unmerged logits, max |diff|: "
          f"{max(c['merged_vs_unmerged_max_abs'] for c in checks.values()):.1e}")
    common.print_conditions(env, load_before)
    common.save_results(args.out, f"latency_{args.backend}", args,
                        {"model": vars(config), "environment": env, "checks": checks,
                         "paper_table1": {"shapes": PAPER_SHAPES, **PAPER}, "results": rows},
                        lambda path: plot(rows, shapes, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
