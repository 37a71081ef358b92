"""``minilora demo``: the whole LoRA story on the shipped base model, in 18 training runs (3 seeds).

The runs are the findings' cells for full fine-tuning and LoRA r = 8; the recorded findings spent 468 s
on them on a shared 2-core machine (``--seeds 2`` takes two thirds of that).

1. Fine-tune the base on every downstream task with LoRA (the paper's default: r = 8 on Wq, Wv) and
   fully as the baseline, on 3 seeds, through the runner every comparison in minilora uses, with the
   findings' budget and learning rates (``minilora findings`` judges the same comparison).
2. Merge each adapter (W = W0 + (alpha/r) B A) and check merged logits = unmerged logits.
3. Load all adapters onto ONE base and switch between them: each task gets its own accuracy back.
4. Print the comparison table (mean +- sd over seeds) and write a report folder (markdown + PNG).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from minilora import io
from minilora.adapters.files import head_classes
from minilora.adapters.lora_model import LoraModel
from minilora.data.tasks import DOWNSTREAM_TASKS, get_task
from minilora.experiments import stats
from minilora.experiments.findings import FindingsConfig
from minilora.experiments.findings_report import _rates
from minilora.experiments.findings_verdicts import ACC_FLOOR, MARGIN
from minilora.experiments.finetune import saved_bytes
from minilora.experiments.pretrain import load_base
from minilora.experiments.results import Results, plot_bars
from minilora.experiments.runner import Runner, full_method, lora_method, run_methods
from minilora.experiments.train import evaluate, to_backend
from minilora.nn import backend


def _fmt_bytes(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:,.2f} MiB"


def results_table(results: Results) -> str:
    """Markdown: task, method, accuracy (mean +- sd over seeds), trainable parameters, AdamW state
    (8 bytes per trainable parameter), the file the method must store, median ms per step."""
    lines = ["| task | method | accuracy | trainable params | optimizer state | saved file | ms/step |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for t in results.tasks:
        for m in results.method_names:
            runs = results.select(t, m)
            lines.append(f"| {t} | {m} | {results.summary(t, m).fmt(100, 1, '%')} | {runs[0].trainable:,} | "
                         f"{_fmt_bytes(8 * runs[0].trainable)} | {_fmt_bytes(runs[0].extra['file_bytes'])} | "
                         f"{np.median([r.ms_per_step for r in runs]):.1f} |")
    return "\n".join(lines)


def merge_check(lora_model: LoraModel, test) -> float:
    """Largest |merged - unmerged| logit on 64 test examples; the model is left unmerged."""
    x = to_backend({"x": test.x[:64]})["x"]
    run = (lambda: lora_model.classify(x, backend.asarray(test.last[:64]))[0]) if hasattr(test, "last") \
        else (lambda: lora_model.forward(x)[0])
    unmerged = backend.to_numpy(run())
    lora_model.merge_adapter(safe_merge=True)
    merged = backend.to_numpy(run())
    lora_model.unmerge_adapter()
    return float(np.abs(merged - unmerged).max())


def switching_check(adapter_dirs: dict, tests: dict) -> dict[str, float]:
    """Load every adapter onto one fresh base and evaluate each task with its adapter active."""
    base, _ = load_base()
    needs_head = [t for t in adapter_dirs if get_task(t).kind == "classification"]
    if needs_head:
        base.add_classification_head(head_classes(adapter_dirs[needs_head[0]]))
    shared = LoraModel(base)
    for task, d in adapter_dirs.items():
        shared.load_adapter(d, adapter_name=task)
    accuracy = {}
    for task in adapter_dirs:
        shared.set_adapter(task)
        accuracy[task] = evaluate(shared, tests[task])["accuracy"]
    return accuracy


def run_demo(out_dir="reports/demo", *, steps: int | None = None, progress: bool = True, seeds=(0, 1, 2),
             tasks=DOWNSTREAM_TASKS) -> dict:
    """Run the demo, print the table, write ``out_dir``; returns the measurements."""
    t_start = time.perf_counter()
    out, cfg = Path(out_dir), FindingsConfig(tasks=tuple(tasks), seeds=tuple(seeds))
    if steps:
        cfg.steps = steps
    base, _ = load_base()
    print(f"minilora demo: base model {base.num_params():,} parameters, backend {backend.backend_name()}, "
          f"{len(seeds)} seeds")
    lora = lora_method(8, lr=cfg.lora_lr, lora_alpha=cfg.lora_alpha)
    runner = Runner(base, cfg.budget(), measures={"file_bytes": lambda model, task, runner: saved_bytes(model)},
                    keep_if=lambda method, task, seed: method.kind == "lora" and seed == seeds[0],
                    log=print if progress else None)
    results = run_methods([full_method(lr=cfg.full_lr), lora], tasks, seeds, runner=runner)
    adapter_dirs, merge_errors, tests = {}, {}, {}
    for task in tasks:
        model, tests[task] = runner.model(lora, task, seeds[0]), runner.data(task, seeds[0])[1]
        adapter_dirs[task] = model.save_adapter(out / "adapters" / task)
        merge_errors[task] = merge_check(model, tests[task])
    switched = switching_check(adapter_dirs, tests)
    summary = _summary(results, merge_errors, switched, seeds[0])
    seconds = time.perf_counter() - t_start
    _write_report(out, results, merge_errors, switched, summary, seconds, cfg)
    print()
    print(results_table(results))
    print()
    for line in summary:
        print(line)
    print(f"\nreport written to {out / 'report.md'} in {seconds:.0f} s")
    return {"results": results, "merge_errors": merge_errors, "switched": switched, "seconds": seconds}


def _summary(results: Results, merge_errors, switched, seed) -> list[str]:
    lines = []
    for task in results.tasks:
        lo, fu = results.summary(task, "lora r=8"), results.summary(task, "full")
        v = stats.about_as_good(lo, fu, margin=MARGIN, floor=ACC_FLOOR, claim="", scale=100, unit=" pt")
        r_lo, r_fu = results.select(task, "lora r=8")[0], results.select(task, "full")[0]
        lines.append(f"- {task}: LoRA {lo.fmt(100, 1, '%')} vs full {fu.fmt(100, 1, '%')}: about as good (within "
                     f"{100 * MARGIN:g} points): **{v.verdict}** ({v.rule}); adapter file "
                     f"{r_fu.extra['file_bytes'] / r_lo.extra['file_bytes']:.0f}x smaller, optimizer state "
                     f"{r_fu.trainable / r_lo.trainable:.0f}x smaller; merged = unmerged to {merge_errors[task]:.1e}; "
                     f"after switching on one base {100 * switched[task]:.1f}% (seed {seed}: "
                     f"{100 * r_lo.accuracy:.1f}%)")
    return lines


def _write_report(out: Path, results: Results, merge_errors, switched, summary, seconds, cfg):
    out.mkdir(parents=True, exist_ok=True)
    plot_bars(results, out / "comparison.png", title="LoRA (r = 8 on Wq, Wv) vs full fine-tuning, mean +- sd")
    results.save(out / "results.json")
    text = [
        "# minilora demo: LoRA vs full fine-tuning", "",
        f"Every run starts from the shipped pretrained base and adapts it to a task it was not trained on, "
        f"on {len(cfg.seeds)} seeds (data split, adapter initialisation, batch order). LoRA: r = 8 on Wq and Wv, "
        f"lora_alpha = {cfg.lora_alpha:g}, lr {_rates(cfg.lora_lr)} (Hu et al. 2021, §4.2); a classification task "
        f"trains its new head alongside (modules_to_save). Full: every weight trains, lr {_rates(cfg.full_lr)}. "
        f"Both: {cfg.steps} steps of {cfg.batch_size} examples; the rates come from the sweep in docs/findings.md.", "",
        results_table(results), "", "## What this shows", "", *summary, "",
        "Optimizer state counts AdamW's m and v (float32) for the trainable parameters only; a frozen "
        "weight has none. The saved file is the adapter (A, B and any saved head) for LoRA and the "
        "whole model for full fine-tuning. `minilora findings` judges this and the other claims about LoRA.", "",
        "**Merging** (§4.1): W = W0 + (alpha/r) B A is computed once; the merged model runs plain linear "
        "layers, so inference costs exactly what the base model costs. The largest logit difference "
        "between merged and unmerged models is float32 rounding: "
        + ", ".join(f"{t} {e:.1e}" for t, e in merge_errors.items()) + ".", "",
        "**Task switching**: all adapters were loaded onto one base model and activated in turn "
        "(set_adapter); each task gets its own accuracy back: "
        + ", ".join(f"{t} {100 * a:.1f}%" for t, a in switched.items()) + ".", "",
        "![comparison](comparison.png)", "",
        f"Total time: {seconds:.0f} s on backend {backend.backend_name()}.", ""]
    io.write_text(out / "report.md", "\n".join(text))
