"""The findings report: markdown and plots from the recorded data of ``run_findings`` (no training).

``write_report(data, out_dir)`` writes report.md and the PNGs it shows; ``plot_*`` draw one figure
each onto an axis, so notebooks show the same figures from ``load_findings()``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minilora import io
from minilora.experiments.findings_verdicts import forget, results, verdict_table, verdicts
from minilora.experiments.known_rank import plot_known_rank
from minilora.experiments.memory import PARTS
from minilora.experiments.results import Results, plot_bars, plot_lines
from minilora.experiments.stats import summarize


def _save(fig, path: Path) -> str:
    return io.save_figure(fig, path).name


# --------------------------------------------------------------------------- figures
def plot_rank_curves(data: dict, ax, task: str, metric: str = "accuracy"):
    """Accuracy (mean +- sd over seeds) against r for one task, full fine-tuning as a band."""
    grid, ranks = results(data, "grid"), data["config"]["ranks"]
    plot_lines(ranks, {"LoRA Wq,Wv": [grid.summary(task, f"lora r={r}", metric) for r in ranks]}, ax=ax,
               xlabel="rank r", ylabel="exact match (%)", title=task, scale=100, logx=True)
    f = grid.summary(task, "full", metric)
    ax.axhspan(100 * (f.mean - f.sd), 100 * (f.mean + f.sd), color="gray", alpha=0.3, label="full +- sd")
    ax.axhline(100 * f.mean, color="gray", ls="--")
    ax.legend(fontsize=7)


def plot_forgetting(data: dict, ax):
    """Pretraining-task accuracy after fine-tuning on each task, against r; full FT at the right."""
    grid, ranks = results(data, "grid"), data["config"]["ranks"]
    xs = list(ranks) + [2 * max(ranks)]
    for task in data["config"]["tasks"]:
        s = [forget(grid, task, f"lora r={r}") for r in ranks] + [forget(grid, task, "full")]
        ax.errorbar(xs, [100 * x.mean for x in s], yerr=[100 * x.sd for x in s], marker="o", capsize=3, label=task)
    ax.axhline(100 * np.mean(list(data["base"]["forget"].values())), color="k", ls=":", label="base = adapter off")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(r) for r in ranks] + ["full"])
    ax.minorticks_off()
    ax.set(xlabel="LoRA rank r (or full fine-tuning)", ylabel="copy/reverse/sort exact match (%)",
           title="what the pretraining tasks keep after fine-tuning")
    ax.legend(fontsize=7)


def plot_sample_efficiency(data: dict, axes):
    """Left: accuracy against training examples; right: against steps (learning curves)."""
    cfg = data["config"]
    every, curves = results(data, "grid", "curves", "sample_sizes"), results(data, "curves")
    sizes = sorted(set(cfg["sample_sizes"]) | {cfg["n_train"]})
    name = lambda m, n: m if n == cfg["n_train"] else f"{m} n={n}"
    series = {f"{t} {m}": [every.summary(t, name(m, n)) for n in sizes]
              for t in cfg["sample_tasks"] for m in ("full", "lora r=8")}
    plot_lines(sizes, series, ax=axes[0], xlabel="training examples", ylabel="exact match (%)", scale=100, logx=True,
               title=f"accuracy after {cfg['steps']} steps")
    steps = [p["step"] for p in curves.runs[0].curve]
    series = {f"{t} {m}": [summarize(next(p["accuracy"] for p in r.curve if p["step"] == s) for r in curves.select(t, m))
                           for s in steps] for t in cfg["sample_tasks"] for m in ("full", "lora r=8")}
    plot_lines(steps, series, ax=axes[1], xlabel="step", ylabel="exact match (%)", scale=100,
               title=f"learning curves, {cfg['n_train']} examples")


def plot_memory(data: dict, ax):
    """Stacked bars of one training step's memory, full vs LoRA, by part (counted arrays)."""
    meas = data["memory"]["measured"]
    left = np.zeros(2)
    for part in PARTS:
        vals = np.array([meas[m][part] for m in ("full", "lora")]) / 2**20
        ax.barh(["full", "LoRA r=8"], vals, left=left, label=part)
        left += vals
    ax.set(xlabel="MiB", title=f"one training step, B = {data['memory']['B']}, T = {data['memory']['T']}, float32")
    ax.legend(fontsize=7, loc="lower right")


# --------------------------------------------------------------------------- the report
def _md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _memory_section(data: dict) -> list[str]:
    mem = data["memory"]
    rows = [[p] + [f"{mem['measured'][m][p] / 2**20:.2f} ({mem['formula'][m][p] / 2**20:.2f})" for m in ("full", "lora")]
            for p in PARTS]
    rows.append(["traced peak of forward + backward"] + [f"{mem['traced_peak'][m] / 2**20:.2f}" for m in ("full", "lora")])
    ext = [[name, f"{e['params'] / 1e9:.2f} B", f"{sum(e['full'].values()) / 2**30:.1f}",
            f"{sum(e['lora'].values()) / 2**30:.1f}", f"{100 * e['saving']:.1f}%",
            f"{e['full']['activations'] / sum(e['full'].values()) * 100:.0f}%"] for name, e in mem["extrapolated"].items()]
    return (["## 5. Memory: what LoRA removes and what it cannot", "",
             "Counted on one real training step (MiB; the formula's figure in brackets, "
             "`minilora.experiments.memory`):", ""]
            + _md_table(["part", "full", "LoRA r=8 on Wq,Wv"], rows)
            + ["", "The formula extrapolated (fp32: Adam state and gradients 4 bytes per value; 16-bit: weights, "
               "gradients and activations in 2 bytes, AdamW state still 8 bytes per trainable parameter). "
               "Total GiB:", ""]
            + _md_table(["model, batch, precision", "parameters", "full", "LoRA r=8", "LoRA saves",
                         "activations share of full"], ext)
            + ["", "LoRA removes the gradients and the optimizer state of every frozen weight (12 of the 16 bytes "
               "per parameter full fine-tuning needs in fp32). It cannot remove the frozen weights, which every step "
               "reads, nor the activations, which its backward pass needs in every layer. So its saving shrinks as "
               "activations grow with batch and sequence length: a quoted saving such as 24.4% describes one batch "
               "and sequence length, not LoRA.", "", "![](memory.png)", ""])


def _lr_section(data: dict) -> list[str]:
    """The learning-rate sweep behind the two rates, if the data carries it."""
    if not data.get("lr_sweep"):
        return []
    from minilora.experiments.lr_sweep import sweep_table

    sweep = Results.from_dict(data["lr_sweep"])
    return ["## The learning rates", "", f"Each method at each rate, {sweep.budget.get('steps')} steps, seed(s) "
            f"{sorted({r.seed for r in sweep.runs})}; exact match, mean +- sd:", "", sweep_table(sweep), ""]


def _rates(lr) -> str:
    """'1e-3' or 'rotate 1e-3, double 5e-3' for a rate or a {task: rate} map."""
    return ", ".join(f"{t} {v:g}" for t, v in lr.items()) if isinstance(lr, dict) else f"{lr:g}"


def write_report(data: dict, out_dir) -> Path:
    """report.md and its figures in ``out_dir``; returns the report's path."""
    import matplotlib.pyplot as plt

    out, cfg = Path(out_dir), data["config"]
    out.mkdir(parents=True, exist_ok=True)
    grid = results(data, "grid")
    rows = verdicts(data)
    fig, axes = plt.subplots(1, len(cfg["tasks"]), figsize=(4 * len(cfg["tasks"]), 3.4), squeeze=False)
    for ax, t in zip(axes[0], cfg["tasks"]):
        plot_rank_curves(data, ax, t)
    figs = {"rank": _save(fig, out / "rank.png")}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    plot_bars(grid, ax=ax, methods=["full", "lora r=4", "lora r=8"], title="LoRA (Wq,Wv) vs full fine-tuning")
    figs["claim1"] = _save(fig, out / "claim1.png")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    plot_forgetting(data, ax)
    figs["forget"] = _save(fig, out / "forgetting.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot_sample_efficiency(data, axes)
    figs["sample"] = _save(fig, out / "sample_efficiency.png")
    plot_known_rank(data["known_rank"], out / "known_rank.png")
    fig, ax = plt.subplots(figsize=(8, 2.6))
    plot_memory(data, ax)
    _save(fig, out / "memory.png")
    m = data["machine"]
    kr = data["known_rank"]
    lines = ["# minilora findings: what LoRA does on a small model, measured", "",
             f"Every comparison below runs on {len(cfg['seeds'])} seeds (each seed draws its own data split, adapter "
             f"initialisation and batch order) and shows mean +- standard deviation. Every run: {cfg['steps']} AdamW "
             f"steps of {cfg['batch_size']} examples from {cfg['n_train']} generated ones, {cfg['n_test']} held-out "
             f"test examples; learning rates per task from the sweep below: full fine-tuning {_rates(cfg['full_lr'])}, "
             f"LoRA on Wq,Wv {_rates(cfg['lora_lr'])}, with lora_alpha = {cfg['lora_alpha']:g} for every r (§4.1). "
             f"Tasks: {', '.join(cfg['tasks'])}. A verdict is drawn only from runs that learned (docs/findings.md).",
             "", f"Run time {m['wall_seconds'] / 60:.1f} min ({m['cpu_seconds'] / 60:.1f} CPU-min) on {m['cpu_count']} "
             f"cores, load average {m['load_average_start']} at the start: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in m["timings"].items()) + ".", "",
             "## Verdicts", "", verdict_table(rows), "",
             *_lr_section(data),
             "## 1. LoRA vs full fine-tuning, and 4. the rank", "", grid.table(), "", f"![](claim1.png)", "",
             "![](rank.png)", "",
             "## 2. Forgetting", "", "Exact match on copy, reverse and sort (mean of the three) after fine-tuning "
             "on each task; with the adapter disabled the model is the base exactly.", "",
             f"![](forgetting.png)", "",
             "## 3. Sample efficiency", "", "![](sample_efficiency.png)", "",
             *_memory_section(data),
             "## 6. Speed", "", f"One training step, interleaved rounds on one batch: LoRA / full = "
             f"{data['memory']['speed']['ratio']:.3f}; the matrix-product FLOPs allow {data['memory']['speed']['flops_ratio']:.3f} "
             "(LoRA skips only the frozen weights' gradient products; the machine may be shared).", "",
             "## What rank does, without noise", "",
             f"A teacher = the base + a rank-{kr['k']} update of {', '.join(kr['config']['targets'])} in every block; "
             f"LoRA students of rank r fitted to each teacher layer's output on the inputs the layer sees in the base "
             f"(`minilora.experiments.known_rank`). Fraction of the teacher's update the students miss (mean over "
             f"the matrices): " + ", ".join(f"r = {r}: {x:.2e}" for r, x in zip(kr["ranks"], kr["error"]))
             + "; the best rank-r update misses " + ", ".join(f"{x:.2f}" for x in kr["residual"]) + " (Eckart-Young).",
             "", "![](known_rank.png)", ""]
    io.write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
