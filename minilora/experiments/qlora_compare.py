"""LoRA against QLoRA and QDoRA (and DoRA, full fine-tuning) on the one runner, over seeds.

Each method is a ``Method`` (``minilora.experiments.runner``) trained by ``run_methods`` on the
findings' budget and read as a ``Results``:

    full    every weight trains (the findings' swept rate per task)
    lora    LoRA r = 8 on Wq, Wv, lora_alpha 16: the findings' recipe and swept rate per task
    qlora   that LoRA on a copy of the base whose block linears are stored in NF4 with double
            quantization (Dettmers et al. 2023; the "qlora" preparer), at LoRA's rate
    dora    that LoRA with use_dora=True (Liu et al. 2024), at LoRA's rate
    qdora   that DoRA on the 4-bit base, at LoRA's rate

so LoRA and QLoRA (DoRA and QDoRA) runs of one seed see the same data, initial adapter and batches
and differ only in how the frozen base is stored. QLoRA's paper trains at the 16-bit recipe's
rates; minilora does the same rather than sweeping the 4-bit methods again.

    results = run_comparison(("double", "ordered"), (0, 1, 2))
    rows = summary_rows(results, storage(base))      # accuracy, frozen bytes, step time, verdict

Measured per run: accuracy and loss on the held-out examples, ms per training step (on a shared
machine: ``benchmarks/bench_qlora.py`` gives the steadier ratio), trainable parameters; for runs on
the 4-bit base also the merge drift (measure "merge_drift": the accuracy after merging into float32
weights and into 4-bit weights again). The bytes the frozen base takes as stored depend on the
method only, not on the run: ``storage`` counts them once per method.

Verdicts (``minilora.experiments.stats``, the findings' rules): "QLoRA is about as good as LoRA"
(and QDoRA as DoRA) within a 2-point margin, with a 1-point floor; "not judged" if a run stayed at
chance.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from minilora.data.datasets import make_splits
from minilora.adapters.qmerge import update_survival_by_module
from minilora.experiments import stats
from minilora.experiments.family import BUDGET, LORA_ALPHA, TARGETS, not_learned, swept_lr
from minilora.experiments.findings_rules import ACC_FLOOR, MARGIN
from minilora.experiments.results import Results
from minilora.experiments.runner import (Method, Runner, full_method, lora_method, prepare_model,
                                         register_measure, run_methods)
from minilora.experiments.train import evaluate

METHODS = ("full", "lora", "qlora", "dora", "qdora")
QUANTIZED = ("qlora", "qdora")
PAIRS = (("qlora", "lora"), ("qdora", "dora"))       # (4-bit method, the same method on the float base)
R = 8


def qlora_methods(names=METHODS, tasks=()) -> list[Method]:
    """The methods by name (see the module docstring); tasks the sweep did not cover get the smallest swept rate."""
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    out = []
    for name in names:
        if name == "full":
            out.append(full_method(lr=swept_lr("full", tasks)))
            continue
        m = lora_method(R, lr=swept_lr("lora", tasks), targets=TARGETS, lora_alpha=LORA_ALPHA, name=name,
                        use_dora=name in ("dora", "qdora"))
        if name in QUANTIZED:                       # Dettmers et al. 2023: the frozen block linears in 4 bits
            m = dataclasses.replace(m, kind="qlora", measures=("merge_drift",))
        out.append(m)
    return out


# --------------------------------------------------------------------------- measures
def base_bytes(model) -> dict:
    """Bytes of the base's weights as stored: the block linears (float32 or 4-bit parts) and every base tensor."""
    gpt = getattr(model, "model", model)                      # an adapter host's GPT, or the GPT itself
    block = [p for n in gpt.config.linear_names() for p in gpt.weight_parts.get(f"{n}.weight", [f"{n}.weight"])]
    return {"block_weight_bytes": sum(int(gpt.params[p].nbytes) for p in block),
            "base_bytes": sum(int(gpt.params[p].nbytes) for p in gpt.base_param_names())}


def storage(base, methods=None, task: str = "rotate") -> dict:
    """{method name: base_bytes} of each method's model as prepared for ``task`` (it does not depend on the run)."""
    data, _ = make_splits(task, 8, 8, seed=0, block_size=base.config.block_size)
    return {m.name: base_bytes(prepare_model(base, data, m, 0)) for m in (methods or qlora_methods())}


@register_measure("merge_drift")
def merge_drift(model, test_data) -> dict:
    """A trained QLoRA (or QDoRA) model merged two ways: into float32 weights and into 4-bit weights again.

    Returns the test accuracy of each merged model and, over the adapted layers, the mean share of
    the update a 4-bit merge keeps (``qmerge.update_survival``: kept_fraction, error) and the mean
    size of the update relative to W0.
    """
    survival = list(update_survival_by_module(model).values())
    mean = lambda key: float(np.mean([s[key] for s in survival]))  # noqa: E731
    return {"merged_float_accuracy": evaluate(model.merge_and_unload(), test_data)["accuracy"],
            "merged_4bit_accuracy": evaluate(model.merge_and_unload(requantize=True), test_data)["accuracy"],
            "update_kept_fraction": mean("kept_fraction"), "update_error": mean("error"),
            "update_codes_kept": mean("codes_kept"), "update_relative_size": mean("relative_size")}


# --------------------------------------------------------------------------- running and reading
def run_comparison(tasks=("double", "ordered"), seeds=(0, 1, 2), names=METHODS, *, base=None, budget=None,
                   runner: Runner | None = None, saved: Results | None = None, log=print) -> Results:
    """Every method on every task with every seed through ``run_methods``; runs ``saved`` (an earlier
    Results under the same budget, e.g. the family's) holds of the same recipe are not trained again."""
    runner = runner or Runner(base, budget or BUDGET, log=log)
    if saved is not None:
        runner.remember(saved)
    return run_methods(qlora_methods(names, tasks), tasks, seeds, runner=runner)


def judge(results: Results, task: str, name: str, ref: str):
    """stats.about_as_good: "``name`` is about as good as ``ref`` on ``task``" (2-point margin, 1-point
    floor), or "not judged: why" when a run stayed at chance."""
    a, b = results.summary(task, name), results.summary(task, ref)
    why = not_learned({name: a, ref: b}, task)
    if why:
        return why
    return stats.about_as_good(a, b, margin=MARGIN, claim=f"{name} is about as good as {ref} on {task}",
                               floor=ACC_FLOOR, scale=100, unit=" pts")


def summary_rows(results: Results, bytes_by_method: dict | None = None) -> list[dict]:
    """One row per (task, method): accuracy (Summary), trainable, ms/step (Summary), step time / LoRA's
    at the same seed (Summary), frozen bytes (``storage``, if given) and, for a 4-bit method, the
    verdict against the same method on the float base."""
    rows = []
    for task in results.tasks:
        lora_ms = {r.seed: r.ms_per_step for r in results.select(task, "lora")}
        for name in results.method_names:
            runs = results.select(task, name)
            if not runs:
                continue
            ratios = [r.ms_per_step / lora_ms[r.seed] for r in runs if r.seed in lora_ms]
            ref = dict(PAIRS).get(name)
            rows.append({"task": task, "method": name, "accuracy": results.summary(task, name),
                         "trainable": runs[0].trainable, "ms_per_step": results.summary(task, name, "ms_per_step"),
                         "ms_vs_lora": stats.summarize(ratios) if ratios else None,
                         **(bytes_by_method or {}).get(name, {}),
                         "vs": ref if ref and results.select(task, ref) else None,
                         "verdict": judge(results, task, name, ref) if ref and results.select(task, ref) else None})
    return rows


def table(results: Results, bytes_by_method: dict | None = None) -> str:
    """Markdown of ``summary_rows``."""
    lines = ["| task | method | accuracy (mean +- sd) | n | trainable | block weight bytes | ms/step vs LoRA | "
             "about as good as the float-base method? |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in summary_rows(results, bytes_by_method):
        v, ms = row["verdict"], row["ms_vs_lora"]
        verdict = "" if v is None else v if isinstance(v, str) else f"{v.verdict} vs {row['vs']} ({v.rule})"
        nbytes = f"{row['block_weight_bytes']:,}" if "block_weight_bytes" in row else "-"
        lines.append(f"| {row['task']} | {row['method']} | {row['accuracy'].fmt(100, 1, '%')} | {row['accuracy'].n} | "
                     f"{row['trainable']:,} | {nbytes} | "
                     f"{ms.fmt(1, 2) if ms else '-'} | {verdict} |")
    return "\n".join(lines)


def drift_table(results: Results) -> str:
    """Markdown: for each 4-bit method and task, accuracy trained, merged into float32 and into 4 bits
    again (mean +- sd over seeds), and the mean share of the update a 4-bit merge keeps."""
    cols = (("accuracy", "trained"), ("extra.merge_drift.merged_float_accuracy", "merged into float32"),
            ("extra.merge_drift.merged_4bit_accuracy", "merged into 4 bits"))
    lines = ["| task | method | " + " | ".join(c for _, c in cols) + " | update kept by a 4-bit merge |",
             "|---|---|" + "---:|" * (len(cols) + 1)]
    for task in results.tasks:
        for name in (n for n in results.method_names if n in QUANTIZED and results.select(task, n)):
            cells = [results.summary(task, name, metric).fmt(100, 1, "%") for metric, _ in cols]
            kept = results.summary(task, name, "extra.merge_drift.update_kept_fraction").fmt(1, 3)
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + f" | {kept} |")
    return "\n".join(lines)
