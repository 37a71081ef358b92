"""Choosing an adapter's rank and initialisation: the experiments beyond the paper's §7 tables.

Each experiment fine-tunes through a ``minilora.experiments.sweeps.Lab`` (a base, one downstream task's data,
every run cached) and returns plain data (lists, dicts, NumPy arrays); the first two have a
``plot_*`` function that saves a PNG.

    full_finetune_spectra   singular values of the full fine-tuning update W_ft - W0
    init_ablation           §4.1: which factor moves first for each initialisation of A and B
    recommend_rank          a rank per target matrix, with its evidence

The full fine-tuning run is the ``Lab``'s, the same one ``sweeps.amplification_analysis`` reads.
``recommend_rank`` weighs a ``sweeps.rank_sweep`` and these spectra; given neither, it measures both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minilora.experiments import analysis
from minilora.nn.backend import to_numpy
from minilora.data.datasets import iterate_batches
from minilora.experiments.finetune import prepare
from minilora.adapters.config import LoraConfig
from minilora.nn.model import SHORT_NAMES
from minilora.nn.model import BLOCK_LINEARS
from minilora.experiments.pretrain import load_base
from minilora.experiments.sweeps import Lab, SweepConfig, rank_sweep, save_plot, targets_label
from minilora.experiments.train import evaluate, to_backend
from minilora.nn.loss import loss_and_grads


# --------------------------------------------------------------------------- 1. full fine-tuning spectra
def full_finetune_spectra(lab: Lab, *, fraction: float = 0.9, model=None) -> dict:
    """Singular values, energy rank and effective rank of dW = W_ft - W0 for every linear layer.

    model: a fully fine-tuned copy of lab.base (default: lab.full()). Returns {"fraction",
    "rows": [{"module", "kind", "layer", "shape", "s" (NumPy), "energy_rank", "effective_rank",
    "relative_norm" = ||dW||_F / ||W0||_F}]}.
    """
    model = model if model is not None else lab.full().model
    rows = []
    for i in range(lab.base.config.n_layer):
        for kind in BLOCK_LINEARS:
            name = f"blocks.{i}.{kind}.weight"
            W0 = to_numpy(lab.base.params[name]).astype(np.float64)
            dW = to_numpy(model.params[name]).astype(np.float64) - W0
            s = analysis.spectrum(dW)
            rows.append({"module": name[:-7], "kind": kind.split(".")[-1], "layer": i, "shape": dW.shape, "s": s,
                         "energy_rank": analysis.energy_rank(s, fraction), "effective_rank": analysis.effective_rank(s),
                         "relative_norm": float(np.linalg.norm(dW) / np.linalg.norm(W0))})
    return {"fraction": fraction, "rows": rows}


def plot_spectra(spectra: dict, path):
    """s_a / s_1 against a for each matrix type, one line per layer."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in spectra["rows"]))
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.5), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        for row in (r for r in spectra["rows"] if r["kind"] == kind):
            ax.plot(np.arange(1, len(row["s"]) + 1), row["s"] / row["s"][0],
                    label=f"layer {row['layer']}: k90={row['energy_rank']}")
        ax.set(yscale="log", title=f"dW {kind} (full fine-tuning)", xlabel="index a", ylabel="s_a / s_1")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    return save_plot(fig, path)


# --------------------------------------------------------------------------- 2. initialisation (§4.1)
def step0_gradients(base, train_data, lora_config: LoraConfig, *, batch_size: int = 32, seed: int = 0) -> dict:
    """The gradients of A and B on the first batch of a fresh adapter, reduced to exact facts.

    B = 0 (gaussian, kaiming): du = s dh B = 0, so dA = du^T x = 0 exactly and only B moves.
    A = 0 (reversed): u = x A^T = 0, so dB = s dh^T u = 0 exactly and only A moves.
    Both 0: every gradient is 0, and stays 0 (nothing ever moves).
    """
    model = prepare(base, "lora", train_data, lora_config, seed=seed)
    batch = to_backend(next(iterate_batches(train_data, min(batch_size, len(train_data)), seed)))
    loss, grads = loss_and_grads(model, batch)
    dA = [np.abs(to_numpy(g)).max() for k, g in grads.items() if ".lora_A." in k]
    dB = [np.abs(to_numpy(g)).max() for k, g in grads.items() if ".lora_B." in k]
    return {"loss": float(loss), "max_abs_dA": float(max(dA)), "max_abs_dB": float(max(dB)),
            "A_moves": bool(max(dA) > 0), "B_moves": bool(max(dB) > 0)}


def init_distribution(init: str, std, r: int, d_in: int) -> str:
    """What ``init_lora_pair`` draws for this init, with numbers: "A ~ N(0, 0.088^2)", "A, B = 0", ..."""
    if init in ("gaussian", "peft_gaussian", "reversed"):
        std = std if std is not None else (1.0 / r if init == "peft_gaussian" else 1.0 / math.sqrt(d_in))
        return f"{'B' if init == 'reversed' else 'A'} ~ N(0, {std:.3g}^2)"
    if init == "kaiming":
        return f"A ~ U(-{1 / math.sqrt(d_in):.3g}, {1 / math.sqrt(d_in):.3g})"
    return "A = B = 0"


def init_ablation(lab: Lab, *, targets=("wq", "wv"), r: int = 8, variants=None) -> list[dict]:
    """For each initialisation: the step-0 gradient facts, then accuracy after lab.config.steps.

    "stayed_zero": A and B are still exactly 0 after training. With AdamW a parameter whose
    gradient was ever non-zero has a non-zero first moment and moves, so exact zeros after
    training mean every gradient of every step was exactly 0.
    """
    start = evaluate(prepare(lab.base, "lora", lab.train_data, lab.lora_config(targets, r), seed=lab.config.seed),
                     lab.test_data)                                 # B A = 0 for every init: the base model
    rows = []
    for label, init, std in variants or lab.config.init_variants:
        cfg = lab.lora_config(targets, r, init=init, init_std=std)
        facts = step0_gradients(lab.base, lab.train_data, cfg, batch_size=lab.config.batch_size, seed=lab.config.seed)
        run = lab.lora(targets, r, init=init, init_std=std)
        factors = [to_numpy(v) for k, v in run.model.params.items() if ".lora_" in k]
        rows.append({"label": label, "init": init, "distribution": init_distribution(init, std, r, lab.base.config.n_embd),
                     **facts, "accuracy": run.accuracy, "loss": run.loss, "loss_at_init": start["loss"],
                     "stayed_zero": all(not f.any() for f in factors)})
    return rows


def plot_init_ablation(rows: list[dict], path, task: str = ""):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh([r["label"] for r in rows][::-1], [100 * r["accuracy"] for r in rows][::-1], color="tab:green")
    ax.set(xlabel="exact-match accuracy (%)", title=f"{task}: initialisation of A and B (same steps)")
    ax.tick_params(axis="y", labelsize=8)
    return save_plot(fig, path)


# --------------------------------------------------------------------------- 3. recommending a rank
@dataclass
class RankRecommendation:
    """The rank to use for one target matrix type, and the measurements it rests on."""
    task: str
    target: str                          # "wq", "wv", ...
    r: int                               # the recommendation
    basis: str                           # "sweep" (accuracy measured) or "energy" (full FT update only)
    tolerance: float                     # accuracy a smaller r may lose against the best (absolute)
    energy: float                        # fraction of ||dW||_F^2 the energy ranks capture
    sweep_targets: tuple | None = None   # the swept target set the accuracies come from
    sweep: dict | None = None            # r -> accuracy
    best_r: int | None = None
    energy_ranks: list | None = None     # per layer, of the full fine-tuning update of this target


def _sweep_row(sweep, targets, target):
    """(target set, {r: accuracy}) for ``target``: the row of the whole set ``targets``, else of (target,)."""
    if sweep is None:
        return None, None
    if "ranks" not in sweep:                                   # a hand-made {r: accuracy} for `targets`
        return tuple(targets), {int(r): float(a) for r, a in sweep.items()}
    for wanted in (tuple(sorted(targets)), (target,)):
        for row, accs in zip(sweep["target_sets"], sweep["accuracy"]):
            if tuple(sorted(row)) == wanted:
                return tuple(row), {int(r): float(a) for r, a in zip(sweep["ranks"], accs)}
    return None, None


def _energy_ranks(full_ft_result, target, energy, base) -> list[int] | None:
    """Energy rank per layer of dW = W_ft - W0 for ``target``, from spectra or a fine-tuned model."""
    if full_ft_result is None:
        return None
    kind = SHORT_NAMES[target]
    if isinstance(full_ft_result, dict):                      # full_finetune_spectra output
        rows = [r for r in full_ft_result["rows"] if r["module"].endswith("." + kind)]
        return [analysis.energy_rank(r["s"], energy) for r in sorted(rows, key=lambda r: r["layer"])]
    model = getattr(full_ft_result, "model", full_ft_result)
    base = base if base is not None else load_base()[0]
    out = []
    for i in range(base.config.n_layer):
        name = f"blocks.{i}.{kind}.weight"
        dW = to_numpy(model.params[name]).astype(np.float64) - to_numpy(base.params[name])
        out.append(analysis.energy_rank(analysis.spectrum(dW), energy))
    return out


def recommend_rank(task: str, *, full_ft_result=None, sweep=None, targets=("wq", "wv"), energy: float = 0.9,
                   tolerance: float = 0.01, base=None, config: SweepConfig | None = None) -> list[RankRecommendation]:
    """A rank per target, with its evidence.

    sweep: ``rank_sweep`` output (the row of the target set ``targets`` is used, else the row of
        the target alone) or a dict {r: accuracy} measured with ``targets``. The recommendation is
        the smallest swept r whose accuracy is within ``tolerance`` (absolute, 0.01 = 1 point) of
        the best: larger r cost parameters and bought nothing measurable.
    full_ft_result: ``full_finetune_spectra`` output, a ``FinetuneResult`` of full fine-tuning, or
        the fine-tuned GPT (then dW = W_ft - W0 against ``base``, default the shipped base). Its
        per-layer energy ranks are evidence; alone (no sweep) they give the recommendation, the
        largest over layers rounded up to a power of two.
    Neither given: both are measured here on ``task`` (a rank sweep of ``targets`` and one full
    fine-tuning run, with ``config`` or SweepConfig defaults: a few minutes on 2 cores).
    """
    unknown = [t for t in targets if t not in SHORT_NAMES]
    if unknown or not targets:
        raise ValueError(f"unknown targets {unknown or '(empty)'}; choose from {sorted(SHORT_NAMES)}")
    if sweep is not None and sweep.get("task", task) != task:
        raise ValueError(f"the sweep was measured on task {sweep['task']!r}, not {task!r}")
    if getattr(full_ft_result, "task", task) != task:
        raise ValueError(f"the full fine-tuning result is for task {full_ft_result.task!r}, not {task!r}")
    if sweep is None and full_ft_result is None:
        lab = Lab(config or SweepConfig(task=task), base=base)
        sweep = rank_sweep(lab, target_sets=[tuple(targets)])
        full_ft_result, base = full_finetune_spectra(lab, fraction=energy), lab.base
    recs = []
    for target in targets:
        row_targets, accs = _sweep_row(sweep, targets, target)
        ranks = _energy_ranks(full_ft_result, target, energy, base)
        if accs:
            best_r = max(accs, key=lambda r: (accs[r], -r))
            r, basis = min(r for r, a in accs.items() if a >= accs[best_r] - tolerance), "sweep"
        elif ranks:
            best_r, r, basis = None, 2 ** math.ceil(math.log2(max(ranks))), "energy"
        else:
            raise ValueError(f"no evidence for target {target!r}: the sweep has no row for {tuple(targets)} or "
                             f"({target!r},), and no full fine-tuning result was given")
        recs.append(RankRecommendation(task, target, int(r), basis, tolerance, energy, row_targets, accs, best_r, ranks))
    return recs


def format_recommendation(recs: list[RankRecommendation]) -> str:
    """Readable text: one paragraph per target with the recommended r and why."""
    lines = [f"Recommended LoRA rank for task {recs[0].task!r}:"] if recs else []
    for rec in recs:
        lines.append(f"  {rec.target}: r = {rec.r}")
        if rec.sweep:
            table = ", ".join(f"r={r} {100 * a:.1f}%" for r, a in sorted(rec.sweep.items()))
            lines.append(f"    accuracy with LoRA on {targets_label(rec.sweep_targets)}: {table}")
            lines.append(f"    best {100 * rec.sweep[rec.best_r]:.1f}% at r={rec.best_r}; r={rec.r} is the smallest "
                         f"within {100 * rec.tolerance:g} point{'' if 100 * rec.tolerance == 1 else 's'} of it")
        if rec.energy_ranks:
            lines.append(f"    full fine-tuning update of {rec.target}: {100 * rec.energy:g}% of its energy lies in "
                         f"{', '.join(map(str, rec.energy_ranks))} directions (layers 0..{len(rec.energy_ranks) - 1})")
            if rec.basis == "energy":
                lines.append("    no rank sweep given: r is the largest of these, rounded up to a power of two")
    return "\n".join(lines)
