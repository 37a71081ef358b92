"""LoRA's family compared on the same tasks, budget and seeds: LoRA, DoRA, rsLoRA, LoRA+, PiSSA, full.

A method is a config, not a script: a plain dict

    {"name": "dora r=2", "kind": "lora" | "full", "lr": 5e-3,
     "config": {LoraConfig fields, e.g. "r": 2, "use_dora": True}, "train": {TrainConfig fields}}

(``family_methods`` builds them; LoRA+ is LoRA with ``train = {"loraplus_lr_ratio": 16}``), and
each run is one plain JSON record per (task, method, seed):

    {"task", "method", "r", "seed", "accuracy", "loss", "trainable", "optimizer_bytes",
     "ms_per_step", "seconds", "steps", "n_train"}

so a general experiment runner can take the methods and records over as they are. Every run
gets the same budget (steps, batch size, data), and seed s draws the split, the adapter's
initialisation and the batch order. ``summary_rows`` reads the runs as mean +- sd over seeds,
with each method's step time relative to LoRA's at the same rank, task and seed (the machine is
shared, so only ratios within one seed's set of runs mean much), and a verdict against LoRA
("within noise" unless the means differ by more than twice their standard error).

Shapes: not needed here (no arrays); r is the rank.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time

from minilora.adapters.config import LoraConfig
from minilora.data.datasets import ClassificationData, make_splits
from minilora.experiments.finetune import prepare
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import TrainConfig, evaluate, train

BUDGET = {"steps": 400, "batch_size": 32, "warmup_steps": 20, "weight_decay": 0.0, "n_train": 4000, "n_test": 500}
TARGETS = ("wq", "wk", "wv", "wo")          # the library's default recipe (finetune.default_lora_config)
LORA_ALPHA = 8.0                            # fixed while r changes (Hu et al. 2021, §4.1)
LORAPLUS_RATIO = 16.0                       # Hayou et al. 2024: lambda = lr_B / lr_A ~ 2^4
# name -> (LoraConfig changes, TrainConfig changes); every LoRA-family method gets LoRA's lr, except
# LoRA+, whose lr is A's: B then learns at LoRA's rate and A 16x slower. (At LoRA's lr, B's rate
# 16 x 5e-3 = 0.08 kept LoRA+ from learning shift at all: 0.0% at r = 1 and 2, test loss 3.3 and 3.1.)
FAMILY = {
    "lora": ({}, {}),
    "dora": ({"use_dora": True}, {}),                        # Liu et al. 2024
    "rslora": ({"use_rslora": True}, {}),                    # Kalajievski 2023: scale alpha / sqrt(r)
    "loraplus": ({}, {"loraplus_lr_ratio": LORAPLUS_RATIO}),  # Hayou et al. 2024
    "pissa": ({"init_lora_weights": "pissa"}, {}),           # Meng et al. 2024
    "dora_exact": ({"use_dora": True, "dora_detach_norm": False}, {}),   # DoRA without the §4.3 trick
}
DEFAULT = ("lora", "dora", "rslora", "loraplus", "pissa", "full")   # the command's default methods
LR = {"lora": 5e-3, "full": 1e-3, "loraplus": 5e-3 / LORAPLUS_RATIO}   # finetune.default_train_config's rates


def family_methods(ranks=(1, 2, 8), names=DEFAULT) -> list[dict]:
    """The method dicts: every family member at every rank, and full fine-tuning once."""
    unknown = sorted(set(names) - set(FAMILY) - {"full"})
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {[*FAMILY, 'full']}")
    methods = []
    for r in ranks:
        for name in (n for n in names if n != "full"):
            config, train_changes = FAMILY[name]
            methods.append({"name": f"{name} r={r}", "family": name, "r": int(r), "kind": "lora",
                            "lr": LR.get(name, LR["lora"]),
                            "config": {"r": int(r), "lora_alpha": LORA_ALPHA, "target_modules": list(TARGETS),
                                       **config}, "train": dict(train_changes)})
    if "full" in names:
        methods.append({"name": "full", "family": "full", "r": None, "kind": "full", "lr": LR["full"],
                        "config": None, "train": {}})
    return methods


# --------------------------------------------------------------------------- one run
def run_method(base, method: dict, task: str, seed: int, budget: dict | None = None) -> dict:
    """Train ``method`` on ``task`` with ``seed`` under ``budget``; one JSON-able record."""
    b = {**BUDGET, **(budget or {})}
    train_data, test_data = make_splits(task, b["n_train"], b["n_test"], seed=seed, block_size=base.config.block_size)
    config = None
    if method["kind"] == "lora":
        saved = ("head",) if isinstance(train_data, ClassificationData) else ()
        config = LoraConfig(**{**method["config"], "seed": seed, "modules_to_save": saved})
    model = prepare(base, method["kind"], train_data, config, seed=seed)
    cfg = TrainConfig(steps=b["steps"], batch_size=b["batch_size"], lr=method["lr"], warmup_steps=b["warmup_steps"],
                      weight_decay=b["weight_decay"], eval_every=b["steps"], seed=seed, progress=False,
                      **method["train"])
    t0 = time.perf_counter()
    history = train(model, train_data, None, cfg, desc=method["name"])
    final = evaluate(model, test_data)
    return {"task": task, "method": method["name"], "family": method["family"], "r": method["r"], "seed": int(seed),
            "accuracy": final["accuracy"], "loss": final["loss"], "trainable": history.trainable_params,
            "optimizer_bytes": history.optimizer_bytes, "ms_per_step": history.ms_per_step,
            "seconds": time.perf_counter() - t0, "steps": b["steps"], "n_train": b["n_train"]}


def run_family(tasks, seeds, methods: list[dict], *, budget: dict | None = None, base=None, runs=None,
               log=print, save=None) -> dict:
    """Every method on every task with every seed: {"budget", "methods", "runs"} (plain JSON).

    ``runs``: records already made (a saved file); those are not trained again. ``save(results)`` is
    called after every new run, so a long comparison can stop and resume.
    """
    base = base if base is not None else load_base()[0]
    names = [m["name"] for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    results = {"budget": {**BUDGET, **(budget or {})}, "methods": methods, "runs": list(runs or [])}
    done = {(r["task"], r["method"], r["seed"]) for r in results["runs"]}
    for task in tasks:
        for seed in seeds:
            for method in methods:
                if (task, method["name"], int(seed)) in done:
                    continue
                run = run_method(base, method, task, seed, budget)
                results["runs"].append(run)
                log(f"  {task:<10} {method['name']:<12} seed {seed}: {100 * run['accuracy']:5.1f}%  "
                    f"({run['ms_per_step']:.0f} ms/step, {run['seconds']:.0f} s)")
                if save is not None:
                    save(results)
    return results


# --------------------------------------------------------------------------- reading the runs
def mean_sd(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(a: list[float], b: list[float], label_a: str, label_b: str, n_test: int | None = None) -> str:
    """'label_a ahead' / 'behind' when the means differ by more than 2 standard errors, else 'within noise'.

    a, b: accuracies over seeds. With ``n_test`` each seed's sd is at least the binomial sampling
    error of one accuracy on n_test examples, sqrt(max(p (1 - p), 1 / n_test) / n_test): three
    seeds can agree by chance (100%, 100%, 100%), and a 0.2-point gap is then not a finding.
    """
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    if n_test:
        sa, sb = (max(sd, math.sqrt(max(p * (1 - p), 1 / n_test) / n_test)) for sd, p in ((sa, ma), (sb, mb)))
    se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    if abs(ma - mb) <= 2 * se or ma == mb:
        return "within noise"
    return f"{label_a} {'ahead of' if ma > mb else 'behind'} {label_b}"


def summary_rows(results: dict) -> list[dict]:
    """One row per (task, method): accuracy (mean, sd), trainable, optimizer bytes, step time vs LoRA
    at the same rank (mean, sd of per-seed ratios), n seeds, and the verdict against LoRA."""
    runs = results["runs"]
    rows = []
    for task in dict.fromkeys(r["task"] for r in runs):
        for method in results["methods"]:
            sel = sorted((r for r in runs if r["task"] == task and r["method"] == method["name"]),
                         key=lambda r: r["seed"])
            if not sel:
                continue
            # the LoRA run it is read against: same rank; full fine-tuning against LoRA's largest rank
            r_ref = method["r"] if method["r"] is not None else max(
                (m["r"] for m in results["methods"] if m["family"] == "lora"), default=None)
            lora_name = f"lora r={r_ref}"
            lora = {r["seed"]: r for r in runs if r["task"] == task and r["method"] == lora_name}
            paired = [r for r in sel if r["seed"] in lora]
            ratios = [r["ms_per_step"] / lora[r["seed"]]["ms_per_step"] for r in paired]
            acc = [r["accuracy"] for r in sel]
            rows.append({"task": task, "method": method["name"], "family": method["family"], "r": method["r"],
                         "n": len(sel), "accuracy": mean_sd(acc), "trainable": sel[0]["trainable"],
                         "optimizer_bytes": sel[0]["optimizer_bytes"],
                         "ms_vs_lora": mean_sd(ratios) if ratios else None, "vs": lora_name,
                         "verdict": (verdict(acc, [lora[r["seed"]]["accuracy"] for r in paired], method["family"],
                                             "LoRA", results.get("budget", {}).get("n_test"))
                                     if method["family"] != "lora" and paired else "")})
    return rows


def table(results: dict) -> str:
    """The summary as a markdown table."""
    lines = ["| task | method | accuracy (mean +- sd) | n | trainable | optimizer bytes | ms/step vs LoRA | vs LoRA |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in summary_rows(results):
        (m, s), ratio = row["accuracy"], row["ms_vs_lora"]
        ratio_text = f"{ratio[0]:.2f} +- {ratio[1]:.2f} (vs {row['vs']})" if ratio else "-"
        lines.append(f"| {row['task']} | {row['method']} | {100 * m:.1f} +- {100 * s:.1f}% | {row['n']} | "
                     f"{row['trainable']:,} | {row['optimizer_bytes']:,} | {ratio_text} | {row['verdict']} |")
    return "\n".join(lines)


def plot_family(results: dict, path=None):
    """Per task: accuracy against r for each method (error bars: one sd over seeds; full fine-tuning as
    a band), and the step time relative to LoRA per method."""
    import matplotlib.pyplot as plt
    import numpy as np

    from minilora import io

    rows = summary_rows(results)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.3 * len(tasks)), squeeze=False)
    for (ax_acc, ax_ms), task in zip(axes, tasks):
        sel = [r for r in rows if r["task"] == task]
        families = list(dict.fromkeys(r["family"] for r in sel if r["family"] != "full"))
        for k, fam in enumerate(families):
            pts = sorted((r for r in sel if r["family"] == fam), key=lambda r: r["r"])
            xs = np.array([r["r"] for r in pts], float) * (1 + 0.04 * (k - len(families) / 2))
            ax_acc.errorbar(xs, [100 * r["accuracy"][0] for r in pts], [100 * r["accuracy"][1] for r in pts],
                            marker="o", capsize=3, label=fam)
        for r in (r for r in sel if r["family"] == "full"):
            (m, s) = r["accuracy"]
            ax_acc.axhspan(100 * (m - s), 100 * (m + s), color="gray", alpha=0.25, label="full (mean +- sd)")
        ranks = sorted({r["r"] for r in sel if r["r"] is not None})
        ax_acc.set(xscale="log", xlabel="rank r", ylabel="exact match (%)", title=f"{task}: accuracy")
        ax_acc.set_xticks(ranks, [str(r) for r in ranks])
        ax_acc.minorticks_off()
        ax_acc.legend(fontsize=7)
        named = [r for r in sel if r["ms_vs_lora"] and r["family"] != "lora"]
        ax_ms.bar(range(len(named)), [r["ms_vs_lora"][0] for r in named], yerr=[r["ms_vs_lora"][1] for r in named],
                  capsize=2)
        ax_ms.axhline(1.0, color="k", lw=0.8)
        ax_ms.set_xticks(range(len(named)), [r["method"] for r in named], rotation=60, fontsize=7)
        ax_ms.set(ylabel="ms/step / LoRA's", title=f"{task}: step time vs LoRA (same r, seed)")
    fig.tight_layout()
    return io.save_figure(fig, path) if path is not None else fig


def quick_budget() -> dict:
    """A tiny budget for a smoke run of the command (seconds, not minutes); its numbers mean nothing."""
    return {**BUDGET, "steps": 4, "n_train": 64, "n_test": 32, "batch_size": 8, "warmup_steps": 1}


# --------------------------------------------------------------------------- the command
def run_family_report(out_dir, *, tasks=("shift",), seeds=(0, 1, 2), ranks=(1, 2, 8), names=DEFAULT,
                      budget: dict | None = None, decomposition: bool = False, combination: bool = False,
                      log=print) -> dict:
    """``minilora family``: run (or resume) the comparison and write family.json, family.md, family.png;
    with ``decomposition`` also DoRA's Delta M / Delta D study (decomposition.json, decomposition.png),
    with ``combination`` the two-task adapter combination demo (combination.json, combination.md)."""
    from pathlib import Path

    from minilora import io
    from minilora.experiments import decomposition_study

    out = Path(out_dir)
    path = out / "family.json"
    methods = family_methods(ranks, names)
    old = io.read_json(path) if path.is_file() else {}
    if old and old.get("budget") != {**BUDGET, **(budget or {})}:
        raise ValueError(f"{path} holds runs made with another budget ({old.get('budget')}); use another --out")
    results = run_family(tasks, seeds, methods, budget=budget, runs=old.get("runs"), log=log,
                         save=lambda res: io.write_json(path, res))
    io.write_json(path, results)
    io.write_text(out / "family.md", "# LoRA's family on the same budget\n\n" + table(results) + "\n")
    plot_family(results, out / "family.png")
    log("\n" + table(results) + f"\n\nwritten to {out}")
    if decomposition:
        cfg = decomposition_study.StudyConfig(seeds=tuple(seeds))
        if budget:
            cfg = dataclasses.replace(cfg, **{k: budget[k] for k in ("steps", "batch_size", "n_train", "n_test")
                                              if k in budget})
            cfg = dataclasses.replace(cfg, checkpoints=min(cfg.checkpoints, cfg.steps))
        study = decomposition_study.run_study(cfg, log=log)
        io.write_json(out / "decomposition.json", study)
        decomposition_study.plot_study(study, out / "decomposition.png")
    if combination:
        from minilora.experiments import combination_demo

        small = {k: budget[k] for k in ("steps", "n_train", "n_test") if budget and k in budget}
        demo = combination_demo.run_combination_demo(seeds=tuple(seeds), log=log, **small)
        io.write_json(out / "combination.json", demo)
        io.write_text(out / "combination.md", combination_demo.table(demo) + "\n")
    return results
