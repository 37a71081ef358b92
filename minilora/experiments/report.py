"""``minilora analyze``: every rank analysis of Hu et al. 2021, §7, on the shipped base, as one report.

``run_analysis(out_dir, task, quick)`` trains the runs of ``minilora.experiments.sweeps`` (shared between the
analyses), writes ``analysis.md`` with each of our numbers beside the paper's (docs/lora_math.md §4-5),
``results.json`` with the plain numbers, and one PNG per analysis. For every finding of the paper
the report says "held here" or "did not hold here", decided by the measured numbers with the
threshold written next to it, never by hand.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from minilora import io
from minilora.experiments import rank_choice, sweeps
from minilora.experiments.analysis import energy_rank, spectrum

# The paper's numbers (Hu et al. 2021; GPT-3 175B unless said), as docs/lora_math.md §4-5 lists them.
PAPER_TABLE5 = {"wq r=8": (70.4, 91.0), "wk r=8": (70.0, 90.8), "wv r=8": (73.0, 91.0), "wo r=8": (73.2, 91.3),
                "wq,wk r=4": (71.4, 91.3), "wq,wv r=4": (73.7, 91.3), "wq,wk,wv,wo r=2": (73.7, 91.7)}
PAPER_TABLE7 = {4: {"proj_dW": 0.32, "proj_W": 21.67, "proj_random": 0.02, "norm_dW": 6.91, "factor": 21.5},
                64: {"proj_dW": 1.90, "proj_W": 37.71, "proj_random": 0.33, "norm_dW": 3.57, "factor": 1.88}}
PAPER_NORM_WQ = 61.95


def verdict(held: bool, because: str) -> str:
    return f"**{'held here' if held else 'did not hold here'}**, because {because}"


def undecided(because: str) -> str:
    return f"**could not be judged here**, because {because}"


def learned(accs, floor: float = 0.02) -> bool:
    """Whether any of these runs learned the task at all (best accuracy >= floor); if none did,
    accuracy cannot rank them and the verdict says so."""
    return max(accs) >= floor


def no_learning(accs) -> str:
    return undecided(f"no run in the comparison learned the task in the steps given (best accuracy "
                     f"{100 * max(accs):.1f}%).")


def _points(tol: float) -> str:
    return f"{100 * tol:g} point" + ("" if 100 * tol == 1 else "s")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# --------------------------------------------------------------------------- sections
def _rank_section(sw: dict, tol: float, seed_pair: tuple | None = None) -> list[str]:
    ranks, sets = sw["ranks"], [tuple(t) for t in sw["target_sets"]]
    acc = {t: dict(zip(ranks, a)) for t, a in zip(sets, sw["accuracy"])}
    loss = {t: dict(zip(ranks, a)) for t, a in zip(sets, sw["loss"])}
    lines = ["## 1. Rank sweep (Table 6, Table 18)", "",
             f"Exact-match accuracy in % (test loss in brackets); lora_alpha = {sw['lora_alpha']:g} for every r "
             f"(§4.1: alpha is set once and not tuned), {sw['steps']} steps each.", ""]
    lines += _table(["targets"] + [f"r={r}" for r in ranks] + ["trainable at r=1"],
                    [[sweeps.targets_label(t)] + [f"{pct(acc[t][r])} ({loss[t][r]:.3f})" for r in ranks]
                     + [f"{sw['trainable'][k][0]:,}"] for k, t in enumerate(sets)])
    lines += ["", "Paper, Table 6 (GPT-3, WikiSQL accuracy, r = 1, 2, 4, 8, 64): Wq 68.8, 69.6, 70.5, 70.4, 70.0; "
              "Wq,Wv 73.4, 73.3, 73.7, 73.8, 73.5; Wq,Wk,Wv,Wo 74.1, 73.7, 74.0, 74.0, 73.9. "
              "Table 18 (GPT-2 M, E2E): validation loss is lowest at r = 16 (1.16), not at the largest r.", "",
              "![](rank_sweep.png)", ""]
    qv, r_min, r_max = ("wq", "wv"), min(ranks), max(ranks)
    if qv in acc:
        a = acc[qv]
        best_r = max(a, key=lambda r: (a[r], -r))
        lines.append(f"- Paper: with Wq,Wv a very small rank already performs competitively (r = 1 within "
                     f"0.5 points of the best). Threshold here: r = {r_min} within {_points(tol)} of the best r. "
                     + (verdict(a[r_min] >= a[best_r] - tol, f"r = {r_min} reaches {pct(a[r_min])}% and the best, "
                                f"r = {best_r}, {pct(a[best_r])}%.") if learned(a.values()) else no_learning(a.values())))
        l = loss[qv]
        best_loss_r = min(l, key=l.get)
        lines.append("- Paper (Table 18): a larger r does not keep helping; the lowest loss is at a middle r. "
                     + verdict(best_loss_r < r_max, f"the lowest test loss with wq,wv is {l[best_loss_r]:.3f} at "
                               f"r = {best_loss_r} (r = {r_max}: {l[r_max]:.3f})."))
    if seed_pair:
        (r, a0, a1) = seed_pair
        lines.append(f"- Run-to-run noise: wq,wv at r = {r} reaches {pct(a0)}% with seed 0 and {pct(a1)}% with seed 1 "
                     f"(the extra run of section 3). Each cell is one run, so differences of this size between "
                     f"cells are within noise.")
    if ("wq",) in acc and qv in acc:
        worse = [r for r in ranks if (acc[("wq",)][r], -loss[("wq",)][r]) < (acc[qv][r], -loss[qv][r])]
        both = list(acc[("wq",)].values()) + list(acc[qv].values())
        lines.append("- Paper: Wq alone is worse than Wq,Wv at every r. "
                     + (verdict(len(worse) == len(ranks), f"wq alone is below wq,wv at {len(worse)} of {len(ranks)} "
                                f"ranks (lower accuracy, or equal accuracy and higher test loss; wq: {', '.join(pct(acc[('wq',)][r]) for r in ranks)}; wq,wv: "
                                f"{', '.join(pct(acc[qv][r]) for r in ranks)}).") if learned(both) else no_learning(both)))
    return lines + [""]


def _budget_section(rows: list[dict], tol: float) -> list[str]:
    lines = ["## 2. A fixed budget of trainable parameters (Table 5)", "",
             f"Every configuration trains {rows[0]['trainable']:,} parameters (checked equal).", ""]
    lines += _table(["configuration", "accuracy %", "test loss", "paper WikiSQL", "paper MultiNLI"],
                    [[r["label"], pct(r["accuracy"]), f"{r['loss']:.3f}", *PAPER_TABLE5.get(r["label"], ("", ""))]
                     for r in rows])
    by = {r["label"]: r["accuracy"] for r in rows}
    score = {r["label"]: (r["accuracy"], -r["loss"]) for r in rows}   # accuracy, ties broken by test loss
    singles = [k for k in by if "," not in k]
    best_single = max(singles, key=score.get)
    all4 = [k for k in by if k.count(",") == 3][0]
    qk = [k for k in by if set(k.split(" ")[0].split(",")) <= {"wq", "wk"}]
    others = [k for k in by if k not in qk]
    ok = learned(by.values())
    lines += ["", "![](budget.png)", "",
              f"- Paper: spreading the budget over all four matrix types at a low rank is as good as or better "
              f"than any single type at a higher rank. Threshold: {all4} within {_points(tol)} of the best single type. "
              + (verdict(by[all4] >= by[best_single] - tol, f"{all4} reaches {pct(by[all4])}% and the best single "
                         f"type, {best_single}, {pct(by[best_single])}%.") if ok else no_learning(by.values())),
              "- Paper: the configurations that adapt only Wq and Wk (Wq 70.4, Wk 70.0, Wq,Wk 71.4 on WikiSQL) are "
              "the three worst; every configuration with Wv or Wo does better. Compared by accuracy, ties by test loss. "
              + (verdict(max(score[k] for k in qk) < min(score[k] for k in others),
                         f"the best of {', '.join(qk)} is {_acc_loss(rows, max(qk, key=score.get))} and the worst "
                         f"of the others is {_acc_loss(rows, min(others, key=score.get))}.")
                 if ok else no_learning(by.values())),
              "- Paper: Wq,Wv at r=4 beats Wq,Wk at r=4 (73.7 vs 71.4). "
              + (verdict(by["wq,wv r=4"] > by["wq,wk r=4"], f"wq,wv r=4 reaches {pct(by['wq,wv r=4'])}% and wq,wk r=4 "
                         f"{pct(by['wq,wk r=4'])}%.") if ok else no_learning(by.values())), ""]
    return lines


def _acc_loss(rows: list[dict], label: str) -> str:
    row = next(r for r in rows if r["label"] == label)
    return f"{label} ({pct(row['accuracy'])}%, loss {row['loss']:.3f})"


def _subspace_section(sub: dict) -> list[str]:
    d, k, rs, rl = sub["d_in"], sub["k"], sub["r_small"], sub["r_large"]
    lines = ["## 3. Subspace similarity (§7.2, eq. 4, Figures 3 and 4)", "",
             f"phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j) with U the right singular vectors of A. "
             f"Random baseline for d_in = {d}: E[phi] = max(i, j) / {d}, so phi(1, 1) = {sub['baseline_phi11']:.4f} "
             f"and {k} phi({k}, {k}) = {sub['baseline_shared_k']:.2f} shared directions among the top {k}.", ""]
    lines += _table(["module", f"phi(1,1), r={rs} vs r={rl}", f"shared of top {k}, seed 0 vs 1"],
                    [[s["module"], f"{s['phi11']:.3f}", f"{s['shared_k']:.2f}"] for s in sub["summary"]])
    lines += [f"| two random A ({rl} x {d}) | {sub['random_phi11']:.4f} | {sub['random_shared_k']:.2f} |", "",
              "![](subspace.png)", ""]
    per = {t: [s for s in sub["summary"] if s["target"] == t] for t in ("wq", "wv")}
    per = {t: v for t, v in per.items() if v}
    med = {t: float(np.median([s["phi11"] for s in v])) for t, v in per.items()}
    lines.append("- Paper: the top direction of the r = 8 and r = 64 adapters overlaps with phi > 0.5, for dWq and "
                 "dWv. Threshold: the median over layers of phi(1, 1) > 0.5 for each target. "
                 + verdict(all(m > 0.5 for m in med.values()),
                           "; ".join(f"dW{t[1:]}: median {m:.2f} ({sum(s['phi11'] > 0.5 for s in per[t])} of {len(per[t])} "
                                     f"layers above 0.5)" for t, m in med.items())
                           + f"; random baseline {sub['baseline_phi11']:.4f}, so the medians are "
                           f"{min(med.values()) / sub['baseline_phi11']:.0f}x chance or more."))
    if set(per) == {"wq", "wv"}:
        sq, sv = (float(np.mean([s["shared_k"] for s in per[t]])) for t in ("wq", "wv"))
        lines.append("- Paper: between two seeds dWq shares more directions than dWv (a higher intrinsic rank). "
                     + verdict(sq > sv, f"mean over layers of shared directions among the top {k}: dWq {sq:.2f}, "
                               f"dWv {sv:.2f} (random {sub['baseline_shared_k']:.2f})."))
    rk = sub["random_shared_k"] / k
    lines.append(f"- Paper: two random matrices share no direction (in d = 12288 the baseline is ~0). Here the "
                 f"baseline is not 0, so the finding reads: random matrices share no more than chance. Threshold: "
                 f"phi({k}, {k}) of two random A below twice the baseline {k / d:.3f}. "
                 + verdict(rk < 2 * k / d, f"it is {rk:.3f}, while the learned adapters give "
                           f"{min(s['shared_k'] for s in sub['summary']) / k:.2f} to "
                           f"{max(s['shared_k'] for s in sub['summary']) / k:.2f}."))
    return lines + [""]


def _position(row: dict) -> float:
    """Where ||U^T W V||_F for dW sits between random directions (0) and W's own top directions (1)."""
    return (row["proj_dW"] - row["proj_random"]) / (row["proj_W"] - row["proj_random"])


def _amplification_section(rows: list[dict]) -> list[str]:
    module = rows[0]["module"]
    lines = ["## 4. dW versus W (§7.3, Table 7)", "",
             f"{module}: U, V = the top-r singular vectors of X; the table gives ||U^T W V||_F for X = dW, X = W and "
             f"X random (mean of 16 draws; analytic r ||W||_F / sqrt(d k) in brackets). Paper values for Wq of "
             f"layer 48 of GPT-3 in brackets, ||Wq||_F = {PAPER_NORM_WQ}.", ""]
    table = []
    for r in rows:
        p = PAPER_TABLE7.get(r["r"], {}) if r["source"].startswith("LoRA") else {}
        ref = (lambda key: f" ({p[key]})" if key in p else "")
        table.append([r["source"], f"{r['proj_dW']:.3f}{ref('proj_dW')}", f"{r['proj_W']:.2f}{ref('proj_W')}",
                      f"{r['proj_random']:.3f} [{r['random_baseline']:.3f}]{ref('proj_random')}",
                      f"{r['norm_W']:.2f}", f"{r['norm_dW']:.3f}{ref('norm_dW')}",
                      f"{r['amplification_factor']:.2f}{ref('factor')}"])
    lines += _table(["update", "X = dW", "X = W", "X random", "||W||_F", "||dW||_F", "amplification"], table)
    lines += ["", "Position of dW's directions between chance (0) and W's own top directions (1): "
              "(X=dW - X random) / (X=W - X random); paper: 0.014 at r = 4, 0.042 at r = 64."]
    lora = {r["r"]: r for r in rows if r["source"].startswith("LoRA")}
    lines += ["",
              "- Paper: dW correlates with W more than a random matrix does (0.32 vs 0.02 at r = 4). "
              + verdict(all(r["proj_dW"] > r["proj_random"] for r in lora.values()),
                        "; ".join(f"r = {r}: {v['proj_dW']:.3f} vs random {v['proj_random']:.3f}" for r, v in lora.items())
                        + "."),
              "- Paper: dW amplifies directions that W does not emphasise (0.32 vs 21.67 for W's own top directions). "
              "Threshold: dW's directions lie closer to chance than to W's top directions (position < 0.5). "
              + verdict(all(_position(v) < 0.5 for v in lora.values()),
                        "; ".join(f"r = {r}: position {_position(v):.3f} ({v['proj_dW']:.3f} between "
                                  f"{v['proj_random']:.3f} and {v['proj_W']:.2f})" for r, v in lora.items()) + ".")]
    if len(lora) >= 2:
        lo, hi = min(lora), max(lora)
        lines.append("- Paper: the amplification factor is much larger at a low r (21.5 at r = 4, 1.88 at r = 64). "
                     + verdict(lora[lo]["amplification_factor"] > lora[hi]["amplification_factor"],
                               f"it is {lora[lo]['amplification_factor']:.2f} at r = {lo} and "
                               f"{lora[hi]['amplification_factor']:.2f} at r = {hi}."))
    top = lora[max(lora)]
    lines.append(f"- Scale: at r = {top['r']} a random r-dimensional projection already keeps "
                 f"{100 * top['proj_random'] / top['norm_W']:.0f}% of ||W||_F (paper: "
                 f"{100 * PAPER_TABLE7[64]['proj_random'] / PAPER_NORM_WQ:.1f}%), so on a model this small the "
                 f"large-r column separates dW from chance far less than in GPT-3.")
    return lines + [""]


def _spectra_section(spectra: dict, shapes_random: dict) -> list[str]:
    rows, f = spectra["rows"], spectra["fraction"]
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    get = {(r["layer"], r["kind"]): r for r in rows}
    lines = ["## 5. Spectra of the full fine-tuning update", "",
             f"dW = W_ft - W0 for every linear layer after full fine-tuning. Entry: the {100 * f:g}% energy rank "
             f"(smallest k with sum of the top-k s^2 >= {f:g} ||dW||_F^2) / the effective rank exp(H(s / sum s)) "
             f"(Roy & Vetterli 2007). Reference: a Gaussian random matrix of the same shape has "
             + ", ".join(f"{k90} ({shape[0]}x{shape[1]})" for shape, k90 in shapes_random.items())
             + f" as its {100 * f:g}% energy rank.", ""]
    lines += _table(["layer"] + kinds, [[i] + [f"{get[(i, k)]['energy_rank']} / {get[(i, k)]['effective_rank']:.1f}"
                                              for k in kinds] for i in layers])
    med = float(np.median([r["energy_rank"] for r in rows]))
    dmin = min(min(r["shape"]) for r in rows)
    lines += ["", "![](spectra.png)", "",
              f"- Paper (§7, after Aghajanyan et al. 2020): the update of a pre-trained model has a low intrinsic "
              f"rank. Threshold: the median {100 * f:g}% energy rank is at most min(d_out, d_in) / 8 = {dmin // 8}. "
              + verdict(med <= dmin // 8, f"the median over all {len(rows)} matrices is {med:g} "
                        f"(range {min(r['energy_rank'] for r in rows)}..{max(r['energy_rank'] for r in rows)}).")]
    return lines + [""]


def _init_section(rows: list[dict], classification: bool) -> list[str]:
    lines = ["## 6. Initialisation of A and B (§4.1, PEFT's options)", "",
             "Step 0 gradients on the first batch, then accuracy after the same number of steps.", ""]
    lines += _table(["init", "draws", "max abs dA at step 0", "max abs dB at step 0", "moves first", "accuracy %",
                     "test loss"],
                    [[r["label"], r["distribution"],
                      f"{r['max_abs_dA']:.3g}", f"{r['max_abs_dB']:.3g}",
                      " and ".join(n for n, m in (("A", r["A_moves"]), ("B", r["B_moves"])) if m) or "nothing",
                      pct(r["accuracy"]), f"{r['loss']:.4f}"] for r in rows])
    std = [r for r in rows if r["init"] in ("gaussian", "peft_gaussian", "kaiming")]
    rev = [r for r in rows if r["init"] == "reversed"]
    zero = [r for r in rows if r["init"] == "zeros"]
    lines += ["", "![](init.png)", ""]
    if std:
        lines.append("- §4.1: with B = 0 only B moves at step 0 (dA = s (dh B)^T x = 0 exactly). "
                     + verdict(all(not r["A_moves"] and r["B_moves"] for r in std),
                               f"dA is exactly 0 and dB is not for all {len(std)} random-A inits."))
    if rev:
        lines.append("- Reversed (A = 0, B random): A moves first (dB = s dh^T (x A^T) = 0 exactly). "
                     + verdict(all(r["A_moves"] and not r["B_moves"] for r in rev),
                               f"max abs dA = {rev[0]['max_abs_dA']:.3g}, max abs dB = {rev[0]['max_abs_dB']:.3g}."))
    if zero:
        z = zero[0]
        same = z["loss"] == z["loss_at_init"]
        held = z["stayed_zero"] and (same or classification)
        lines.append("- Both zero: every gradient is exactly 0 at every step, so nothing trains. "
                     + verdict(held, f"A and B are {'still exactly 0' if z['stayed_zero'] else 'no longer 0'} after "
                               f"training, and the test loss is {z['loss']:.6f} against {z['loss_at_init']:.6f} before "
                               f"training" + (" (the new classification head trains on its own)" if classification
                                             else (" (identical)" if same else "")) + "."))
    best = max(rows, key=lambda r: (r["accuracy"], -r["loss"]))
    lines.append(f"- Best accuracy after the same steps: {best['label']} ({pct(best['accuracy'])}%).")
    return lines + [""]


# --------------------------------------------------------------------------- the whole report
def run_analysis(out_dir, task: str = "shift", quick: bool = False, *, config=None, base=None) -> Path:
    """Run every analysis on ``task``, write out_dir/analysis.md, results.json and the PNGs.

    quick=True: SweepConfig.quick (fewer ranks, target sets and steps; under a minute on 2 cores,
    for tests and notebooks; its accuracies mean little). ``config`` overrides both presets.
    """
    t_start = time.perf_counter()
    load_start = _load()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or (sweeps.SweepConfig.quick(task) if quick else sweeps.SweepConfig(task=task))
    lab = sweeps.Lab(cfg, base=base)
    m = lab.base.config
    tol = 0.01
    timings, results = {}, {}

    def section(name, fn):
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t0
        return value

    sw = section("rank sweep", lambda: sweeps.rank_sweep(lab))
    budget = section("fixed budget", lambda: sweeps.budget_sweep(lab))
    sub = section("subspace similarity", lambda: sweeps.subspace_analysis(lab))
    amp = section("dW vs W", lambda: sweeps.amplification_analysis(lab))
    spectra = section("full fine-tuning spectra", lambda: rank_choice.full_finetune_spectra(lab))
    init = section("initialisation", lambda: rank_choice.init_ablation(lab))
    recs = rank_choice.recommend_rank(task, full_ft_result=spectra, sweep=sw, tolerance=tol)

    print("[plots]", flush=True)
    sweeps.plot_rank_sweep(sw, out / "rank_sweep.png")
    sweeps.plot_budget(budget, out / "budget.png", task)
    sweeps.plot_subspace(sub, out / "subspace.png")
    rank_choice.plot_spectra(spectra, out / "spectra.png")
    rank_choice.plot_init_ablation(init, out / "init.png", task)
    gen = np.random.default_rng(0)
    shapes = sorted({r["shape"] for r in spectra["rows"]})
    random_k = {s: energy_rank(spectrum(gen.standard_normal(s)), spectra["fraction"]) for s in shapes}

    wall = time.perf_counter() - t_start
    full = lab.full()
    lines = [f"# Rank analyses of LoRA on the task {task!r}", "",
             f"Hu et al. 2021 (arXiv 2106.09685), §7 and Tables 5-7, 18 and Figures 3-4, repeated on a small model. "
             f"{'QUICK settings: few steps, the accuracies mean little. ' if quick else ''}Every verdict below is "
             f"computed from the measured numbers with the threshold stated in its line.", "",
             f"- Model: the shipped base GPT, {m.n_layer} layers, {m.n_head} heads, C = {m.n_embd}, block size "
             f"{m.block_size}, vocabulary {m.vocab_size}: {lab.base.num_params():,} parameters (the paper: GPT-3 "
             f"175B, d = 12,288, 96 layers). Adapted matrices are {m.n_embd} x {m.n_embd} (attention) and "
             f"{4 * m.n_embd} x {m.n_embd} (MLP).",
             f"- Task {task!r}: {cfg.n_train} training and {cfg.n_test} held-out examples; exact-match accuracy.",
             f"- Every run: {cfg.steps} AdamW steps, batch {cfg.batch_size}, lr {cfg.lr:g} (LoRA) / "
             f"{cfg.full_lr:g} (full fine-tuning: {pct(full.accuracy)}%, loss {full.loss:.3f}), warmup "
             f"{cfg.warmup_steps}, no weight decay; LoRA init {cfg.init!r} "
             f"({rank_choice.init_distribution(cfg.init, None, 8, m.n_embd)}{' at r = 8' if cfg.init == 'peft_gaussian' else ''}"
             f", B = 0), "
             f"lora_alpha = {cfg.lora_alpha:g} for every r.",
             f"- Wall time: {wall:.0f} s for {len(lab.runs)} training runs ({lab.seconds:.0f} s in training "
             f"and evaluation): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ". "
             f"Machine: {os.cpu_count()} CPU cores, load average {load_start} at the start and {_load()} at the end, "
             f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}.", ""]
    seed_pair = (sub["r_large"], lab.lora(("wq", "wv"), sub["r_large"], seed=0).accuracy,   # both cached by
                 lab.lora(("wq", "wv"), sub["r_large"], seed=1).accuracy)                     # subspace_analysis
    lines += _rank_section(sw, tol, seed_pair)
    lines += _budget_section(budget, tol)
    lines += _subspace_section(sub)
    lines += _amplification_section(amp)
    lines += _spectra_section(spectra, random_k)
    lines += _init_section(init, lab.classification)
    lines += ["## 7. Which rank to use", "", "```", rank_choice.format_recommendation(recs), "```", ""]
    io.write_text(out / "analysis.md", "\n".join(lines))

    results = {"task": task, "quick": quick, "wall_seconds": wall, "timings": timings,
               "model": {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "params": lab.base.num_params()},
               "rank_sweep": sw, "budget": budget, "amplification": amp,
               "subspace": {k: sub[k] for k in ("d_in", "r_small", "r_large", "k", "summary", "random_phi11",
                                                "random_shared_k", "baseline_phi11", "baseline_shared_k")},
               "spectra": [{k: v for k, v in r.items() if k != "s"} | {"s": r["s"].tolist()} for r in spectra["rows"]],
               "init": init, "recommendation": [vars(r) for r in recs]}
    io.write_text(out / "results.json", json.dumps(results, indent=1, default=_plain))
    print(f"wrote {out / 'analysis.md'} in {wall:.0f} s", flush=True)
    return out / "analysis.md"


def _load() -> str:
    """The 1-minute load average (how busy the machine was: timings depend on it), or "n/a"."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "n/a"


def _plain(x):
    """JSON for NumPy scalars and tuples."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
