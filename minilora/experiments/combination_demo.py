"""Adding two task adapters (PEFT's ``add_weighted_adapter``): what each task keeps.

Two LoRA adapters are trained on one frozen base, each on its own task (by default ``shift`` and
``rotate``, whose prompts start differently: ``inc:`` and ``rol:``). They are then combined with
weights (1, 1) in the three ways of ``minilora.adapters.combine``:

    cat     [A_1 ; A_2], [B_1 | B_2]: exactly the sum of the two updates (rank 2r)
    linear  sqrt-weighted sums of the factors (rank r; only an approximation: cross terms B_i A_j)
    svd     the sum truncated to rank r (the best rank-r approximation; its error is reported)

and every adapter (each single one, each combination, and none: the base) is scored on every
task. Even ``cat``, which is the exact sum of the updates, need not keep both tasks: each update
was learned with the other absent, and both now act on every input. Runs over seeds give the
spread. Results are plain JSON (``run_combination_demo``).
"""
from __future__ import annotations

import copy
import statistics

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_splits
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import TrainConfig, evaluate, train
from minilora.nn.model import GPT

COMBINATIONS = ("cat", "linear", "svd")


def _fresh(base: GPT) -> GPT:
    return GPT(copy.deepcopy(base.config), {k: v.copy() for k, v in base.params.items()})


def combine_once(base: GPT, tasks=("shift", "rotate"), weights=(1.0, 1.0), *, seed: int = 0, steps: int = 400,
                 r: int = 4, n_train: int = 4000, n_test: int = 500, batch_size: int = 32) -> dict:
    """One seed: train an adapter per task, combine them, score everything on every task."""
    lm = LoraModel(_fresh(base))
    data = {t: make_splits(t, n_train, n_test, seed=seed, block_size=base.config.block_size) for t in tasks}
    for k, task in enumerate(tasks):
        lm.add_adapter(task, LoraConfig(r=r, lora_alpha=8, target_modules=("wq", "wk", "wv", "wo"), seed=seed + k))
        train(lm, data[task][0], None, TrainConfig(steps=steps, batch_size=batch_size, lr=5e-3, warmup_steps=20,
                                                   weight_decay=0.0, seed=seed, progress=False))
    errors = {kind: lm.add_weighted_adapter(list(tasks), list(weights), kind, combination_type=kind)
              for kind in COMBINATIONS}
    accuracy = {}
    for adapter in (*tasks, *COMBINATIONS):
        lm.set_adapter(adapter)
        accuracy[adapter] = {t: evaluate(lm, data[t][1])["accuracy"] for t in tasks}
    with lm.disable_adapter():
        accuracy["base"] = {t: evaluate(lm, data[t][1])["accuracy"] for t in tasks}
    return {"seed": seed, "accuracy": accuracy,
            "rank": {kind: lm.modules[kind]["blocks.0.attn.wq"][0] for kind in COMBINATIONS},
            "relative_error": {kind: statistics.fmean(e.values()) for kind, e in errors.items()}}


def run_combination_demo(base: GPT | None = None, tasks=("shift", "rotate"), weights=(1.0, 1.0), seeds=(0, 1, 2),
                         log=print, **kw) -> dict:
    """``combine_once`` for every seed: {"tasks", "weights", "runs": [...]} (plain JSON)."""
    base = base if base is not None else load_base()[0]
    runs = []
    for seed in seeds:
        run = combine_once(base, tasks, weights, seed=seed, **kw)
        runs.append(run)
        log(f"  seed {seed}: " + "; ".join(f"{a}: " + ", ".join(f"{t} {100 * v:.0f}%" for t, v in acc.items())
                                          for a, acc in run["accuracy"].items()))
    return {"tasks": list(tasks), "weights": list(weights), "runs": runs}


def table(results: dict) -> str:
    """Markdown: one row per adapter, accuracy on each task as mean +- sd over seeds, and the
    combination's rank and mean relative error ||dW - B A|| / ||dW||."""
    tasks, runs = results["tasks"], results["runs"]
    head = "| adapter | " + " | ".join(f"{t} (mean +- sd)" for t in tasks) + " | rank | relative error |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    for adapter in runs[0]["accuracy"]:
        cells = []
        for t in tasks:
            v = [100 * r["accuracy"][adapter][t] for r in runs]
            cells.append(f"{statistics.fmean(v):.1f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}%")
        rank = runs[0]["rank"].get(adapter, "")
        err = (f"{statistics.fmean(r['relative_error'][adapter] for r in runs):.2e}"
               if adapter in runs[0]["relative_error"] else "")
        lines.append(f"| {adapter} | " + " | ".join(cells) + f" | {rank} | {err} |")
    return "\n".join(lines)
