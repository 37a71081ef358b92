"""The small learning-rate sweep behind the findings' learning rates (one per method and task).

Hu et al. 2021 tune the learning rate per method and task (their Table 9 lists one per GLUE task),
so a comparison at one shared rate would measure the rate, not the method. This sweep trains full
fine-tuning and LoRA at the paper's default setting (Wq, Wv, r = 8) at a few rates on every
downstream task, with the findings' budget, and picks for each method and task the rate with the
best accuracy (ties go to the method's best rate over all tasks, then to the smaller rate). One
shared rate would misjudge LoRA: the rate that learns `double` best is not the one that learns
`ordered` best. ``run_lr_sweep`` writes lr_sweep.json (a ``Results``) and lr_sweep.md;
the recorded copy is ``minilora/experiments/recorded/lr_sweep.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minilora import io
from minilora.experiments.pretrain import load_base
from minilora.experiments.results import Results
from minilora.experiments.runner import Runner, full_method, lora_method, run_methods

FULL_LRS = (3e-4, 1e-3, 3e-3)
LORA_LRS = (2e-3, 5e-3, 1e-2, 2e-2)
RECORDED = Path(__file__).resolve().parent / "recorded" / "lr_sweep.json"


def sweep_methods(cfg) -> list:
    """Full fine-tuning at every rate of FULL_LRS, LoRA r = 8 (cfg.lora_alpha) at every rate of LORA_LRS."""
    return ([full_method(lr=lr, name=f"full lr={lr:g}") for lr in FULL_LRS]
            + [lora_method(8, lr=lr, lora_alpha=cfg.lora_alpha, name=f"lora r=8 lr={lr:g}") for lr in LORA_LRS])


def best_lr(results: Results, prefix: str) -> float:
    """The rate of the ``prefix`` methods ("full", "lora r=8") with the best mean accuracy over every
    task and seed (ties go to the smaller rate)."""
    names = [m for m in results.method_names if m.startswith(prefix + " lr=")]
    score = {m: np.mean([r.accuracy for r in results.select(method=m)]) for m in names}
    rate = lambda m: float(m.split("lr=")[1])
    return rate(max(names, key=lambda m: (score[m], -rate(m))))


def chosen_lrs(results: Results, prefix: str) -> dict:
    """{task: lr} for the ``prefix`` methods: the best accuracy on that task; ties go to the method's
    ``best_lr`` over all tasks, then to the smaller rate."""
    names = [m for m in results.method_names if m.startswith(prefix + " lr=")]
    rate = lambda m: float(m.split("lr=")[1])
    overall = best_lr(results, prefix)
    return {t: rate(max(names, key=lambda m: (results.summary(t, m).mean, rate(m) == overall, -rate(m))))
            for t in results.tasks}


def sweep_table(results: Results) -> str:
    """Markdown: tasks x rates, mean +- sd accuracy, and the chosen rate per method and task."""
    chosen = {p: chosen_lrs(results, p) for p in ("full", "lora r=8")}
    return "\n".join([results.table(), "", "Chosen (best accuracy per task; ties to the method's best mean): "
                       + "; ".join(f"{p}: " + ", ".join(f"{t} {lr:g}" for t, lr in c.items()) for p, c in chosen.items())
                       + "."])


def run_lr_sweep(out_dir, cfg, *, base=None, seeds=(0,), log=print) -> Results:
    """Every rate of FULL_LRS and LORA_LRS on every task of ``cfg`` (a findings.FindingsConfig: its tasks,
    budget and lora_alpha), with ``seeds``; writes the files. (The config is passed in, not imported, because
    the findings' report reads this module's tables.)"""
    runner = Runner(base if base is not None else load_base()[0], cfg.budget(), log=log)
    results = run_methods(sweep_methods(cfg), cfg.tasks, seeds, runner=runner)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.save(out / "lr_sweep.json")
    io.write_text(out / "lr_sweep.md", "# Learning-rate sweep\n\n" + sweep_table(results) + "\n")
    log(sweep_table(results))
    return results
