"""LoRA against QLoRA and QDoRA (and DoRA, full fine-tuning) on the downstream tasks, over several seeds.

Every method starts from the same shipped base, sees the same data and batch order for a seed, and
is trained by the same loop with ``minilora.experiments.finetune``'s recipe (LoRA r = 4 on the four
attention matrices, 400 steps). QLoRA is that LoRA on a copy of the base whose block linears are
stored in 4 bits (NF4 with double quantization), so LoRA and QLoRA runs of one seed differ only in
the base's storage, and their accuracies can be compared seed by seed (paired differences). DoRA
is the same recipe with ``use_dora=True`` (Liu et al. 2024, same lr), and QDoRA is DoRA on the
4-bit base; DoRA against QDoRA isolates the base's storage again, DoRA against LoRA the method.

    rows = run_comparison(tasks=("shift", "rotate"), seeds=(0, 1, 2))
    summary = summarize(rows)          # per task and method: mean, sd, min, max over seeds
    save(path, rows, settings) / load(path)

Measured per run: exact-match accuracy and loss on held-out examples, ms per training step (on a
machine shared with other work: the benchmark ``benchmarks/bench_qlora.py`` gives the steadier
ratio), trainable parameters, and the bytes the base's weights take as stored (its block linears
alone and the whole base). For runs on the 4-bit base (QLoRA, QDoRA) also the merge drift
(``merge_drift``): the accuracy after merging into float32 weights and into 4-bit weights again.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from minilora import io
from minilora.adapters.qmerge import update_survival_by_module
from minilora.data.datasets import make_splits
from minilora.experiments.finetune import QUANTIZED, default_train_config, finetune
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import evaluate

METHODS = ("full", "lora", "qlora", "dora", "qdora")


def base_bytes(model) -> dict:
    """Bytes of the base's weights as stored: the block linears (float32 or 4-bit parts) and every base tensor."""
    gpt = getattr(model, "model", model)                      # an adapter host's GPT, or the GPT itself
    block = [p for n in gpt.config.linear_names() for p in gpt.weight_parts.get(f"{n}.weight", [f"{n}.weight"])]
    return {"block_weight_bytes": sum(int(gpt.params[p].nbytes) for p in block),
            "base_bytes": sum(int(gpt.params[p].nbytes) for p in gpt.base_param_names())}


def run_comparison(tasks=("shift", "rotate"), seeds=(0, 1, 2), methods=METHODS, *, base=None, steps: int | None = None,
                   n_train: int = 4000, n_test: int = 500, log=print) -> list[dict]:
    """One row per (task, method, seed): accuracy, loss, ms per step, trainable parameters, base bytes."""
    base = base if base is not None else load_base()[0]
    rows = []
    for task in tasks:
        for seed in seeds:
            for method in methods:
                cfg = default_train_config(method)
                if steps is not None:
                    cfg.steps, cfg.eval_every = steps, steps
                cfg.seed, cfg.progress = seed, False
                res = finetune(task, method, base=base, train_config=cfg, n_train=n_train, n_test=n_test, seed=seed)
                row = {"task": task, "method": method, "seed": seed, "accuracy": res.accuracy, "loss": res.loss,
                       "ms_per_step": res.ms_per_step, "trainable_params": res.trainable_params, "n_test": n_test,
                       **base_bytes(res.model)}
                if method in QUANTIZED:
                    _, test = make_splits(task, n_train, n_test, seed=seed, block_size=base.config.block_size)
                    row.update(merge_drift(res.model, test))
                rows.append(row)
                log(f"{task} {method} seed {seed}: accuracy {100 * res.accuracy:.1f}%, "
                    f"{res.ms_per_step:.0f} ms/step")
    return rows


def merge_drift(model, test_data) -> dict:
    """A trained QLoRA (or QDoRA) model merged two ways: into float32 weights and into 4-bit weights again.

    Returns the test accuracy of each merged model and, over the adapted layers, the mean share of
    the update a 4-bit merge keeps (``qmerge.update_survival``: kept_fraction, error) and the mean
    size of the update relative to W0.
    """
    stats = list(update_survival_by_module(model).values())
    mean = lambda key: float(np.mean([s[key] for s in stats]))  # noqa: E731
    return {"merged_float_accuracy": evaluate(model.merge_and_unload(), test_data)["accuracy"],
            "merged_4bit_accuracy": evaluate(model.merge_and_unload(requantize=True), test_data)["accuracy"],
            "update_kept_fraction": mean("kept_fraction"), "update_error": mean("error"),
            "update_codes_kept": mean("codes_kept"), "update_relative_size": mean("relative_size")}


def summarize(rows: list[dict], reference: str = "lora") -> list[dict]:
    """Per (task, method): mean, sd (over seeds, ddof 1), min and max of accuracy; mean ms per step and base bytes;
    and the paired difference to ``reference`` seed by seed (mean, sd) with a verdict.

    Verdict: "within noise" when |mean difference| <= 2 x its standard error (sd / sqrt(seeds)) or
    the difference is below one binomial standard error of the test accuracy, else "higher"/"lower".
    """
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        ref = {r["seed"]: r["accuracy"] for r in rows if r["task"] == task and r["method"] == reference}
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            acc = np.array([r["accuracy"] for r in runs])
            row = {"task": task, "method": method, "seeds": len(runs), "mean": float(acc.mean()),
                   "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "min": float(acc.min()),
                   "max": float(acc.max()), "ms_per_step": float(np.mean([r["ms_per_step"] for r in runs])),
                   "block_weight_bytes": runs[0]["block_weight_bytes"], "base_bytes": runs[0]["base_bytes"]}
            paired = [r["accuracy"] - ref[r["seed"]] for r in runs if r["seed"] in ref]
            if method != reference and len(paired) > 1:
                d = np.array(paired)
                se = float(d.std(ddof=1)) / math.sqrt(len(d))
                binomial = math.sqrt(max(row["mean"] * (1 - row["mean"]), 1e-12) / runs[0]["n_test"])
                noise = abs(d.mean()) <= max(2 * se, binomial)
                row.update(diff_vs_reference=float(d.mean()), diff_sd=float(d.std(ddof=1)),
                           verdict="within noise" if noise else ("higher" if d.mean() > 0 else "lower"))
            out.append(row)
    return out


def save(path, rows: list[dict], settings: dict) -> Path:
    """Write the rows, their summary and the settings that made them as JSON (atomically)."""
    io.write_json(path, {"settings": settings, "rows": rows, "summary": summarize(rows)})
    return Path(path)


def load(path) -> dict:
    """Read a file written by ``save``: {"settings", "rows", "summary"}."""
    return io.read_json(path)
