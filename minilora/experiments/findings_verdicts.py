"""The verdicts of ``minilora findings``, computed from its recorded data alone (no training).

``verdicts(data)`` returns one row per judged claim: {"section", "claim", "measured", "verdict",
"rule"}; the rules and their constants (ACC_FLOOR, MARGIN, MIN_GAIN) are those of
``minilora.experiments.findings_rules``, which apply ``minilora.experiments.stats``.
"""
from __future__ import annotations

import numpy as np

from minilora.experiments import stats
# the rules and helpers, re-exported so a notebook imports every verdict tool from one module
from minilora.experiments.findings_rules import (ACC_FLOOR, MARGIN, MIN_GAIN, NOT_JUDGED, chance,  # noqa: F401
                                                 guarded, if_learned, not_learned, pct, results, row)
from minilora.experiments.findings_section7 import section7_rows
from minilora.experiments.results import Results
from minilora.experiments.stats import Summary, summarize


# --------------------------------------------------------------------------- helpers
def forget(res: Results, task: str, method: str) -> Summary:
    """Mean accuracy over the pretraining tasks after fine-tuning, one value per seed."""
    return summarize(np.mean(list(r.extra["forget"].values())) for r in res.select(task, method))


def at_step(res: Results, task: str, method: str, step: int) -> Summary:
    return summarize(next(p["accuracy"] for p in r.curve if p["step"] == step) for r in res.select(task, method))


def sized_name(data, method: str, n: int) -> str:
    return method if n == data["config"]["n_train"] else f"{method} n={n}"


# --------------------------------------------------------------------------- the claims
def claim_rows(data: dict) -> list[dict]:
    cfg, grid = data["config"], results(data, "grid")
    rows = []
    for task in cfg["tasks"]:                                                   # 1. about as good
        for r in [r for r in (4, 8) if r in cfg["ranks"]]:
            lo, fu = f"lora r={r}", "full"
            a, b = grid.summary(task, lo), grid.summary(task, fu)
            rows.append(guarded("1. LoRA about as good as full", f"{task}: LoRA r={r} within {100 * MARGIN:g} points of "
                                "full fine-tuning", {lo: a, fu: b}, task, lambda: (stats.about_as_good(
                                    a, b, margin=MARGIN, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                    f"LoRA {pct(a)} vs full {pct(b)}")))
    base = 100 * float(np.mean(list(data["base"]["forget"].values())))
    for task in cfg["tasks"]:                                                   # 2. forgets less
        a, b = forget(grid, task, "lora r=8"), forget(grid, task, "full")
        rows.append(guarded("2. LoRA forgets less", f"{task}: after LoRA r=8 the pretraining tasks keep more "
                            "accuracy than after full fine-tuning",
                            {m: grid.summary(task, m) for m in ("lora r=8", "full")}, task, lambda: (stats.beats(a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                     f"copy/reverse/sort after LoRA {pct(a)}, after full {pct(b)}; the base (= adapter "
                                     f"disabled) {base:.1f}%")))
    every = results(data, "grid", "curves", "sample_sizes")                     # 3. sample efficiency
    for task in cfg["sample_tasks"]:
        for n in sorted(cfg["sample_sizes"]):
            fu, lo = sized_name(data, "full", n), sized_name(data, "lora r=8", n)
            a, b = every.summary(task, fu), every.summary(task, lo)
            rows.append(guarded("3. full FT more sample-efficient", f"{task}, {n} training examples: full beats "
                                "LoRA r=8", {fu: a, lo: b}, task, lambda: (stats.beats(
                                    a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                    f"full {pct(a)} vs LoRA {pct(b)}"), any_ok=True))
        step = cfg["curve_every"]
        curves = results(data, "curves")
        a, b = at_step(curves, task, "full", step), at_step(curves, task, "lora r=8", step)
        rows.append(guarded("3. full FT more sample-efficient", f"{task}, after {step} of {cfg['steps']} steps: full "
                            "beats LoRA r=8", {f"full at step {step}": a, f"lora r=8 at step {step}": b}, task,
                            lambda: (stats.beats(a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                     f"full {pct(a)} vs LoRA {pct(b)}"), any_ok=True))
    for task in cfg["tasks"]:                                                   # 4. r = 4..8
        s = {r: grid.summary(task, f"lora r={r}") for r in cfg["ranks"]}
        hi, lo = max(cfg["ranks"]), min(cfg["ranks"])
        if hi > 8:
            rows.append(guarded("4. r = 4 to 8 a good balance", f"{task}: r={hi} adds nothing over r=8",
                                {"lora r=8": s[8], f"lora r={hi}": s[hi]}, task, lambda: (stats.about_as_good(s[8], s[hi], margin=MARGIN, floor=ACC_FLOOR,
                                                                       claim="", scale=100, unit=" pt"),
                                                   f"r=8 {pct(s[8])} vs r={hi} {pct(s[hi])}")))
        rows.append(guarded("4. r = 4 to 8 a good balance", f"{task}: r={lo} trails r=8", {"lora r=8": s[8]}, task,
                            lambda: (stats.beats(s[8], s[lo], floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                     f"r=8 {pct(s[8])} vs r={lo} {pct(s[lo])}")))
    rows += memory_speed_rows(data)
    return rows


def memory_speed_rows(data: dict) -> list[dict]:
    mem = data["memory"]
    total = {k: sum(v.values()) for k, v in mem["measured"].items()}
    same = all(mem["measured"][k] == mem["formula"][k] for k in mem["measured"])
    saved = 1 - total["lora"] / total["full"]
    removed = sum(mem["measured"]["full"][p] - mem["measured"]["lora"][p] for p in ("gradients", "optimizer state"))
    rows = [{"section": "5. LoRA saves memory", "claim": "a LoRA training step holds less memory than a full one",
             "measured": f"{total['lora'] / 2**20:.1f} vs {total['full'] / 2**20:.1f} MiB ({100 * saved:.0f}% less); "
                         f"formula {'equals' if same else 'DIFFERS FROM'} the counted arrays",
             "verdict": stats.HELD if saved > 0 else stats.NOT_HELD,
             "rule": f"counted bytes (exact, no seeds): gradients + optimizer state of the frozen weights removed "
                     f"({removed / 2**20:.1f} MiB); frozen weights and activations kept"}]
    sp = mem["speed"]
    gain = summarize(1 - x for x in sp["ratios"])
    v = stats.exceeds(gain, 0.0, claim="a LoRA step takes less time than a full step", scale=100, unit="%")
    rows.append(row("6. LoRA trains faster per step", v,
                    f"LoRA / full step time {sp['ratio']:.3f} (quartiles {sp['ratio_q25']:.3f}-{sp['ratio_q75']:.3f}, "
                    f"{len(sp['ratios'])} interleaved rounds); matrix FLOPs allow {sp['flops_ratio']:.3f}"))
    return rows


def known_rank_row(data: dict) -> dict:
    kr = data["known_rank"]
    ranks, err = kr["ranks"], kr["error"]
    drops = {ranks[i]: err[i - 1] / err[i] for i in range(1, len(ranks))}
    knee = max(drops, key=drops.get)
    return {"section": "known rank", "claim": f"the loss against r has its knee at the teacher's rank k = {kr['k']}",
            "measured": "relative error " + ", ".join(f"r={r}: {x:.1e}" for r, x in zip(ranks, err)),
            "verdict": stats.HELD if knee == kr["k"] else stats.NOT_HELD,
            "rule": f"the largest drop of the error from one r to the next is at r = {knee} "
                    f"({drops[knee]:.1f}x); deterministic (one teacher, full batch)"}


def verdicts(data: dict) -> list[dict]:
    """Every verdict row: the claims, the known-rank experiment, then the paper's §7 findings."""
    return claim_rows(data) + [known_rank_row(data)] + section7_rows(data)


def verdict_table(rows: list[dict], *, rules: bool = True) -> str:
    """Markdown: section, claim, measured (mean +- sd over seeds), verdict, and (``rules``) the rule and threshold."""
    head = ["", "claim", "measured", "verdict"] + (["rule and threshold"] if rules else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["section"], r["claim"], r["measured"], f"**{r['verdict']}**"] + ([r["rule"]] if rules else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_only(rows: list[dict]) -> list[dict]:
    """The rows of the six claims learners bring and of the known-rank experiment (not the §7 findings)."""
    return [r for r in rows if r["section"][0].isdigit() or r["section"] == "known rank"]
