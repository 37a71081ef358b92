"""LoRA's family on the one runner: LoRA, DoRA, rsLoRA, LoRA+, PiSSA and full fine-tuning, same budget.

Every member is a ``Method`` (``minilora.experiments.runner``): LoRA's recipe with one change to its
LoraConfig (DoRA, rsLoRA, PiSSA) or to the training loop (LoRA+), so the comparison is a list of
configs, trained by ``run_methods`` and read as a ``Results`` (mean +- sd over seeds, JSON):

    methods = family_methods(ranks=(1, 8))        # "lora r=1", "dora r=1", ..., "full"
    results = run_family(["double"], [0, 1, 2], methods)
    rows = summary_rows(results)                  # per (task, method): accuracy, verdict vs LoRA, ...

The recipe is the findings' (docs/findings.md): LoRA on Wq, Wv with lora_alpha = 16 at every r,
400 steps of 32 examples, and each task's learning rate from the findings' sweep (finetune.SWEPT_LR).
The family's other members were not swept: each takes LoRA's rate, except LoRA+, whose rate is A's,
so that B trains at LoRA's rate and A 16 times slower (at LoRA's rate for A, B's 16 x 5e-3 = 0.08
kept LoRA+ from learning at all: 0.0% on shift at r = 1 and 2 in an earlier run).

Verdicts (``minilora.experiments.stats``, the findings' rules): each member against LoRA at the same
rank and full fine-tuning against LoRA at the largest rank, "A beats B" held / did not hold / within
noise with a 1-point floor, and "not judged" when a run behind it stayed at chance. Step time is read
seed by seed against LoRA at the same rank (the machine is shared, so only these ratios mean much).

Shapes: none here (no arrays); r is the rank.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from minilora import io
from minilora.experiments import stats
from minilora.experiments.finetune import BATCH_SIZE, STEPS, SWEPT_LR
from minilora.experiments.findings_rules import ACC_FLOOR, MIN_GAIN, NOT_JUDGED, chance
from minilora.experiments.results import Results, plot_lines
from minilora.experiments.runner import Budget, Method, Runner, full_method, lora_method, run_methods

BUDGET = Budget(steps=STEPS, batch_size=BATCH_SIZE, warmup_steps=STEPS // 10, n_train=4000, n_test=500)
TARGETS = ("wq", "wv")                      # the paper's default (§4.2), as in the findings
LORA_ALPHA = 16.0                           # fixed while r changes (Hu et al. 2021, §4.1), the findings' value
LORAPLUS_RATIO = 16.0                       # Hayou et al. 2024: lambda = lr_B / lr_A ~ 2^4
# name -> (LoraConfig changes, TrainConfig changes)
FAMILY = {
    "lora": ({}, {}),
    "dora": ({"use_dora": True}, {}),                        # Liu et al. 2024
    "rslora": ({"use_rslora": True}, {}),                    # Kalajievski 2023: scale alpha / sqrt(r)
    "loraplus": ({}, {"loraplus_lr_ratio": LORAPLUS_RATIO}),  # Hayou et al. 2024
    "pissa": ({"init_lora_weights": "pissa"}, {}),           # Meng et al. 2024
    "dora_exact": ({"use_dora": True, "dora_detach_norm": False}, {}),   # DoRA without the §4.3 trick
}
DEFAULT = ("lora", "dora", "rslora", "loraplus", "pissa", "full")   # the command's default methods


def swept_lr(method: str, tasks=()) -> dict:
    """{task: lr} from the findings' sweep for "full" or "lora" (finetune.SWEPT_LR), plus each of
    ``tasks`` the sweep did not cover at the method's smallest swept rate (as finetune's recipe does)."""
    rates = SWEPT_LR["full" if method == "full" else "lora"]
    return {**{t: min(rates.values()) for t in tasks}, **rates}


def family_methods(ranks=(1, 8), names=DEFAULT, tasks=()) -> list[Method]:
    """Every family member at every rank ("dora r=1"), then full fine-tuning once ("full"); rsLoRA at
    r = 1 is left out when LoRA is in, since its scale alpha / sqrt(1) is LoRA's alpha / 1.

    tasks: tasks beyond the swept ones that the methods will run on (they get the smallest swept rate).
    """
    unknown = sorted(set(names) - set(FAMILY) - {"full"})
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {[*FAMILY, 'full']}")
    lora_lr = swept_lr("lora", tasks)
    methods = []
    for r in ranks:
        for name in (n for n in names if n != "full"):
            if name == "rslora" and r == 1 and "lora" in names:
                continue                     # alpha / sqrt(1) = alpha / 1: rsLoRA at r = 1 is LoRA, run for run
            config, train = FAMILY[name]
            ratio = train.get("loraplus_lr_ratio", 1.0)     # LoRA+: the lr is A's, B's is LoRA's
            m = lora_method(int(r), lr={t: lr / ratio for t, lr in lora_lr.items()}, targets=TARGETS,
                            lora_alpha=LORA_ALPHA, name=f"{name} r={r}", **config)
            methods.append(dataclasses.replace(m, train=tuple(sorted(train.items()))))
    if "full" in names:
        methods.append(full_method(lr=swept_lr("full", tasks)))
    return methods


def member(method_name: str) -> tuple[str, int | None]:
    """("dora", 8) from "dora r=8"; ("full", None) from "full"."""
    name, _, r = method_name.partition(" r=")
    return name, (int(r) if r else None)


# --------------------------------------------------------------------------- running
def run_family(tasks, seeds, methods: list[Method], *, budget: Budget | None = None, base=None,
               runner: Runner | None = None, saved: Results | None = None, save=None, log=print) -> Results:
    """Every method on every task with every seed through ``run_methods``: one Results.

    saved: results of an earlier call (same budget); runs it holds of the same recipe are not
    trained again. save(results) is called after each (task, seed), so a long comparison can resume.
    """
    runner = runner or Runner(base, budget or BUDGET, log=log)
    results = Results([], {m.name: m.to_dict() for m in methods}, dataclasses.asdict(runner.budget))
    if saved is not None:
        runner.remember(saved)
    for task in tasks:
        for seed in seeds:
            results = results + run_methods(methods, [task], [seed], runner=runner)
            if save is not None:
                save(results)
    return results


# --------------------------------------------------------------------------- reading
def reference(results: Results, method_name: str) -> str | None:
    """The LoRA run a method is judged against: LoRA at its rank; full fine-tuning against LoRA at
    the largest rank in the results."""
    name, r = member(method_name)
    if name == "lora":
        return None
    ranks = [member(m)[1] for m in results.method_names if member(m)[0] == "lora"]
    ref = f"lora r={r if r is not None else max(ranks, default=0)}"
    return ref if ref in results.method_names else None


def summary_rows(results: Results) -> list[dict]:
    """One row per (task, method): accuracy (Summary), trainable parameters, optimizer bytes (AdamW's
    m and v in float32: 8 bytes per trainable parameter), step time / LoRA's at the same seed
    (Summary or None), the reference, and the verdict against it (stats.Verdict, a "not judged"
    reason, or None for LoRA itself)."""
    rows = []
    for task in results.tasks:
        for name in results.method_names:
            runs = results.select(task, name)
            if not runs:
                continue
            acc, ref = results.summary(task, name), reference(results, name)
            row = {"task": task, "method": name, "member": member(name)[0], "r": member(name)[1], "accuracy": acc,
                   "trainable": runs[0].trainable, "optimizer_bytes": 8 * runs[0].trainable, "vs": ref,
                   "ms_vs_lora": None, "verdict": None}
            if ref is not None and results.select(task, ref):
                lora_ms = {x.seed: x.ms_per_step for x in results.select(task, ref)}
                ratios = [x.ms_per_step / lora_ms[x.seed] for x in runs if x.seed in lora_ms]
                row["ms_vs_lora"] = stats.summarize(ratios) if ratios else None
                row["verdict"] = judge(results, task, name, ref)
            rows.append(row)
    return rows


def judge(results: Results, task: str, name: str, ref: str):
    """stats.beats: "``name`` beats ``ref`` on ``task``" (1-point floor), or "not judged: why"."""
    a, b = results.summary(task, name), results.summary(task, ref)
    why = not_learned({name: a, ref: b}, task)
    if why:
        return why
    return stats.beats(a, b, claim=f"{name} beats {ref} on {task}", floor=ACC_FLOOR, scale=100, unit=" pts")


def not_learned(summaries: dict, task: str) -> str | None:
    """"not judged: ..." naming each of {name: Summary} with a seed less than MIN_GAIN above chance, or None."""
    c = chance(task)
    bad = [f"{m} (worst seed {100 * min(s.values):.1f}%)" for m, s in summaries.items()
           if not stats.learned(s, chance=c, min_gain=MIN_GAIN)]
    return f"{NOT_JUDGED}: a seed of {', '.join(bad)} did not learn {task} (chance {100 * c:.0f}%)" if bad else None


def verdict_text(verdict) -> str:
    return "" if verdict is None else verdict if isinstance(verdict, str) else f"{verdict.verdict} ({verdict.rule})"


def table(results: Results) -> str:
    """Markdown: per (task, method) accuracy mean +- sd, n, trainable, optimizer bytes, step time vs
    LoRA and the verdict against LoRA."""
    lines = ["| task | method | accuracy (mean +- sd) | n | trainable | optimizer bytes | ms/step vs LoRA | "
             "beats LoRA? |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in summary_rows(results):
        ms = row["ms_vs_lora"]
        ms_text = f"{ms.fmt(1, 2)} (vs {row['vs']})" if ms else "-"
        lines.append(f"| {row['task']} | {row['method']} | {row['accuracy'].fmt(100, 1, '%')} | {row['accuracy'].n} | "
                     f"{row['trainable']:,} | {row['optimizer_bytes']:,} | {ms_text} | {verdict_text(row['verdict'])} |")
    return "\n".join(lines)


def plot_family(results: Results, path=None):
    """Per task: accuracy against r for each member (error bars: one sd over seeds), full
    fine-tuning drawn at every r."""
    import matplotlib.pyplot as plt

    tasks = results.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    all_ranks = sorted({member(m)[1] for m in results.method_names if member(m)[1] is not None})
    for ax, task in zip(axes[0], tasks):
        for name in dict.fromkeys(member(m)[0] for m in results.method_names):
            at = {r: f"{name} r={r}" if name != "full" else "full" for r in all_ranks}
            at = {r: m for r, m in at.items() if results.select(task, m)}
            label = name if name != "full" else "full (no r)"
            plot_lines(list(at), {label: [results.summary(task, m) for m in at.values()]}, xlabel="rank r",
                       ylabel="exact match (%)", title=task, scale=100, logx=True, ax=ax)
    fig.tight_layout()
    return io.save_figure(fig, path) if path is not None else fig


def quick_budget() -> Budget:
    """A tiny budget for a smoke run of the command (seconds, not minutes); its numbers mean nothing."""
    return Budget(steps=4, batch_size=8, warmup_steps=1, n_train=64, n_test=32)


# --------------------------------------------------------------------------- the command
def run_family_report(out_dir, *, tasks=("double",), seeds=(0, 1, 2), ranks=(1, 8), names=DEFAULT,
                      budget: Budget | None = None, decomposition: bool = False, combination: bool = False,
                      log=print) -> Results:
    """``minilora family``: run (or resume) the comparison and write family.json (a Results),
    family.md, family.png; with ``decomposition`` also DoRA's Delta M / Delta D study (decomposition.json,
    decomposition.png), with ``combination`` the two-task adapter combination demo (combination.json/.md)."""
    out = Path(out_dir)
    path = out / "family.json"
    methods = family_methods(ranks, names, tasks)
    saved = Results.load(path) if path.is_file() else None
    results = run_family(tasks, seeds, methods, budget=budget, saved=saved, save=lambda res: res.save(path), log=log)
    results.save(path)
    io.write_text(out / "family.md", "# LoRA's family on the same budget\n\n" + table(results) + "\n")
    plot_family(results, out / "family.png")
    log("\n" + table(results) + f"\n\nwritten to {out}")
    b = budget or BUDGET
    if decomposition:
        from minilora.experiments import decomposition_study

        cfg = decomposition_study.StudyConfig(seeds=tuple(seeds))
        if budget is not None:
            cfg = dataclasses.replace(cfg, steps=b.steps, batch_size=b.batch_size, n_train=b.n_train,
                                      n_test=b.n_test, checkpoints=min(cfg.checkpoints, b.steps))
        study = decomposition_study.run_study(cfg, log=log)
        io.write_json(out / "decomposition.json", study)
        decomposition_study.plot_study(study, out / "decomposition.png")
    if combination:
        from minilora.experiments import combination_demo

        small = {"steps": b.steps, "n_train": b.n_train, "n_test": b.n_test} if budget is not None else {}
        demo = combination_demo.run_combination_demo(seeds=tuple(seeds), log=log, **small)
        io.write_json(out / "combination.json", demo)
        io.write_text(out / "combination.md", combination_demo.table(demo) + "\n")
    return results
