"""The paper's §7 findings judged from the recorded findings data (Hu et al. 2021, §7, Tables 5-7, 18,
Figures 3-4), with the rules of ``minilora.experiments.stats`` and the constants of findings_verdicts.

Each finding is the paper's sentence, the measurement on this model (mean +- sd over seeds) and a
verdict. Where the paper states a number as its threshold (phi > 0.5), that number is the threshold;
where it compares two settings, the seed-to-seed spread decides.
"""
from __future__ import annotations

import numpy as np

from minilora.experiments import stats
from minilora.experiments.findings_rules import ACC_FLOOR, MARGIN, guarded, if_learned, pct, results, row
from minilora.experiments.stats import summarize

S7 = "§7"


def _neg(s: stats.Summary) -> stats.Summary:
    return summarize(-v for v in s.values)


def rank_rows(data: dict) -> list[dict]:
    """Table 6 (small r suffices for Wq, Wv; Wq alone needs more) and Table 18 (loss not lowest at max r)."""
    cfg, grid = data["config"], results(data, "grid")
    rows, lo, hi = [], min(cfg["ranks"]), max(cfg["ranks"])
    for task in cfg["tasks"]:
        s = {r: grid.summary(task, f"lora r={r}") for r in cfg["ranks"]}
        best = max(s, key=lambda r: s[r].mean)
        rows.append(guarded(S7, f"Table 6, {task}: with Wq,Wv r={lo} is about as good as the best r",
                            {f"lora r={best}": s[best]}, task, lambda: (stats.about_as_good(s[lo], s[best], margin=MARGIN,
                                                                             floor=ACC_FLOOR, claim="", scale=100,
                                                                             unit=" pt"),
                                                         f"r={lo} {pct(s[lo])} vs best r={best} {pct(s[best])}")))
        loss = {r: grid.summary(task, f"lora r={r}", "loss") for r in cfg["ranks"]}
        mid = min((r for r in cfg["ranks"] if r != hi), key=lambda r: loss[r].mean)
        rows.append(guarded(S7, f"Table 18, {task}: the lowest test loss is at a middle r, not at r={hi}",
                            {f"lora r={mid}": s[mid], f"lora r={hi}": s[hi]}, task,
                            lambda: (stats.beats(_neg(loss[mid]), _neg(loss[hi]), claim="", floor=0.0),
                                     f"loss r={mid} {loss[mid].fmt(1, 4)} vs r={hi} {loss[hi].fmt(1, 4)}")))
    s7 = results(data, "grid", "section7_runs")
    task = cfg["section7_task"]
    for r in cfg["wq_ranks"]:
        a, b = s7.summary(task, f"lora r={r}"), s7.summary(task, f"lora wq r={r}")
        rows.append(guarded(S7, f"Table 6, {task}: Wq,Wv beats Wq alone at r={r}",
                            {f"lora r={r}": a, f"lora wq r={r}": b}, task, lambda: (stats.beats(
                                a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                f"Wq,Wv {pct(a)} vs Wq {pct(b)}"), any_ok=True))
    if len(cfg["wq_ranks"]) > 1:
        r0, r1 = min(cfg["wq_ranks"]), max(cfg["wq_ranks"])
        a, b = s7.summary(task, f"lora wq r={r1}"), s7.summary(task, f"lora wq r={r0}")
        rows.append(guarded(S7, f"Table 6, {task}: Wq alone climbs with r (r={r1} beats r={r0})",
                            {f"lora wq r={r1}": a, f"lora wq r={r0}": b}, task, lambda: (stats.beats(
                                a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                f"r={r1} {pct(a)} vs r={r0} {pct(b)}"), any_ok=True))
    return rows


def budget_rows(data: dict) -> list[dict]:
    """Table 5: a fixed budget spread over more matrix types at lower rank does at least as well."""
    cfg, s7 = data["config"], results(data, "grid", "section7_runs")
    task = cfg["section7_task"]
    names = [f"lora {','.join(t)} r={r}" for t, r in cfg["budget_configs"]]
    singles = [n for n in names if "," not in n.split(" ")[1]]
    many = max(names, key=lambda n: n.count(","))
    s = {n: s7.summary(task, n) for n in names}
    rows = []
    if singles:
        best = max(singles, key=lambda n: s[n].mean)
        rows.append(guarded(S7, f"Table 5, {task}: {many} is about as good as the best single type ({best})",
                            {many: s[many], best: s[best]}, task, lambda: (stats.about_as_good(s[many], s[best], margin=MARGIN,
                                                                       floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                                   f"{many} {pct(s[many])} vs {best} {pct(s[best])}"), any_ok=True))
    qv = [n for n in names if n.startswith("lora wq,wv ")]
    wq = [n for n in singles if n.startswith("lora wq ")]
    if qv and wq:
        a, b = s[qv[0]], s[wq[0]]
        rows.append(guarded(S7, f"Table 5, {task}: {qv[0]} beats {wq[0]} (the same budget)", {qv[0]: a, wq[0]: b},
                            task, lambda: (stats.beats(a, b, floor=ACC_FLOOR, claim="", scale=100, unit=" pt"),
                                     f"{pct(a)} vs {pct(b)}"), any_ok=True))
    return rows


def _matrix_guard(data: dict, names) -> tuple:
    """(summaries, task) of the §7 task's runs whose weights a matrix finding reads: it is judged only
    if they learned (a matrix of a run that learned nothing says nothing about the paper's claim)."""
    task = data["config"]["section7_task"]
    s7 = results(data, "grid", "section7_runs")
    return {n: s7.summary(task, n) for n in names}, task


def subspace_rows(data: dict) -> list[dict]:
    """Figures 3 and 4: the top directions of r = 8 and r = 64 overlap; dWq shares more across seeds."""
    s7 = data["section7"]
    sub, rows = s7["subspace"], []
    per_seed = summarize(np.median(list(v.values())) for v in sub["phi11"].values())
    rows.append(row(S7, stats.exceeds(per_seed, 0.5, claim=f"Figure 3: phi(A_r=8, A_r={s7['r_large']}, 1, 1) > 0.5 "
                                      f"(median over the {len(sub['modules'])} adapted matrices)"),
                    f"{per_seed.fmt(1, 3)} per seed (random: {sub['baseline_phi11']:.4f})"))
    mean_of = lambda pair, t: float(np.mean([v for mod, v in pair.items() if mod.endswith("." + t)]))
    q = summarize(mean_of(p, "wq") for p in sub["shared_k"].values())
    v_ = summarize(mean_of(p, "wv") for p in sub["shared_k"].values())
    k = sub["k"]
    rows.append(row(S7, stats.beats(q, v_, claim=f"Figure 4: across seeds dWq shares more of its top {k} directions "
                                    "than dWv"), f"Wq {q.fmt(1, 2)} vs Wv {v_.fmt(1, 2)} of {k} shared, over "
                    f"{q.n} pairs of seeds (random: {sub['baseline_shared_k']:.2f})"))
    rnd = summarize(sub["random_shared_k"])
    rows.append(row(S7, stats.below(rnd, 2 * sub["baseline_shared_k"], claim="two random matrices share no more "
                                    f"than chance (below twice k^2/d = {2 * sub['baseline_shared_k']:.2f})"),
                    f"{rnd.fmt(1, 2)} over {rnd.n} random pairs"))
    return rows


def amplification_rows(data: dict) -> list[dict]:
    """Table 7: dW correlates with W more than random; amplifies directions W does not emphasise;
    the amplification factor is larger at a small r."""
    s7 = data["section7"]
    amp, small, large = s7["amplification"], s7["r_small"], s7["r_large"]
    get = lambda r, key: summarize(x[key] for x in amp[f"lora r={r}"].values())
    pos = lambda r: summarize((x["proj_dW"] - x["proj_random"]) / (x["proj_W"] - x["proj_random"])
                              for x in amp[f"lora r={r}"].values())
    rows = []
    for r in (small, large):
        a, b = get(r, "proj_dW"), get(r, "proj_random")
        rows.append(row(S7, stats.beats(a, b, claim=f"Table 7, r={r}: ||U^T W V|| for dW's directions exceeds "
                                        "random directions'"), f"{a.fmt(1, 3)} vs {b.fmt(1, 3)} ({amp['module']})"))
    p = pos(small)
    rows.append(row(S7, stats.below(p, 0.5, claim=f"Table 7, r={small}: dW's directions lie closer to chance than to "
                                    "W's own top directions (position < 0.5)"),
                    f"position {p.fmt(1, 3)} (paper: 0.014)"))
    a, b = get(small, "amplification_factor"), get(large, "amplification_factor")
    rows.append(row(S7, stats.beats(a, b, claim=f"Table 7: the amplification factor is larger at r={small} than at "
                                    f"r={large}"), f"{a.fmt(1, 2)} vs {b.fmt(1, 2)} (paper: 21.5 vs 1.88)"))
    return rows


def spectra_row(data: dict) -> dict:
    """§7 (after Aghajanyan et al. 2020): the update of a pre-trained model has a low intrinsic rank."""
    sp = data["section7"]["spectra"]
    med = summarize(np.median([r["energy_rank"] for r in rows]) for rows in sp["by_seed"].values())
    dmin = min(min(r["shape"]) for rows in sp["by_seed"].values() for r in rows)
    v = stats.below(med, dmin / 8, claim=f"the full fine-tuning update has a low rank: median {100 * sp['fraction']:g}% "
                    f"energy rank <= min(d_out, d_in) / 8 = {dmin / 8:g}")
    return row(S7, v, f"{med.fmt(1, 1)} over seeds (random matrices: "
                      + ", ".join(f"{k} {v}" for k, v in sp["random_energy_rank"].items()) + ")")


def section7_rows(data: dict) -> list[dict]:
    s7 = data["section7"]
    small, large = f"lora r={s7['r_small']}", f"lora r={s7['r_large']}"
    return (rank_rows(data) + budget_rows(data)
            + if_learned(subspace_rows(data)[:-1], *_matrix_guard(data, ["lora r=8", large]))
            + subspace_rows(data)[-1:]                        # two random matrices: no training behind it
            + if_learned(amplification_rows(data), *_matrix_guard(data, [small, large]))
            + if_learned([spectra_row(data)], *_matrix_guard(data, ["full"])))
