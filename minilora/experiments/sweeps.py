"""The training experiments behind the rank analyses of Hu et al. 2021 (§7, Tables 5-7, Figures 3-4).

Every experiment fine-tunes the shipped base (or any ``GPT``) on one downstream task and returns
plain data (lists, dicts, NumPy arrays); each has a ``plot_*`` function that saves a PNG.

    rank_sweep              Table 6 / 18: accuracy for r in RANKS x the target sets TARGET_SETS
    budget_sweep            Table 5: one fixed number of trainable parameters spread over matrix types
    subspace_analysis       Figures 3, 4: phi between the r = 8 and r = 64 adapters, and between seeds
    amplification_analysis  Table 7: how much dW amplifies directions of W

Runs are shared: a ``Lab`` holds the base, the task's data and every run made so far, keyed by
(targets, r, seed, init), so the r = 8 and r = 64 {wq, wv} adapters of the rank sweep also feed
the subspace and amplification analyses. ``minilora.experiments.rank_choice`` runs its experiments (full
fine-tuning spectra, the initialisation ablation, the rank recommendation) on the same ``Lab``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minilora import io
from minilora.experiments import analysis
from minilora.nn.backend import to_numpy
from minilora.data.datasets import ClassificationData
from minilora.adapters.config import LoraConfig
from minilora.nn.model import SHORT_NAMES
from minilora.adapters.lora_model import LoraModel
from minilora.experiments.pretrain import load_base
from minilora.experiments.runner import Budget, Method, Runner

RANKS = (1, 2, 4, 8, 16, 64)
TARGET_SETS = (("wq",), ("wq", "wv"), ("wq", "wk", "wv", "wo"), ("wq", "wv", "fc", "proj"))
# (label, init_lora_weights, init_std); init_std None = that init's default (minilora.adapters.lora.init_lora_pair)
INIT_VARIANTS = (("gaussian, std 1/sqrt(d_in)", "gaussian", None), ("gaussian, std 1/r (PEFT)", "peft_gaussian", None),
                 ("gaussian, std 0.02", "gaussian", 0.02), ("kaiming-uniform", "kaiming", None),
                 ("reversed (A = 0, B random)", "reversed", None), ("both zero", "zeros", None))


# --------------------------------------------------------------------------- settings and runs
@dataclass
class SweepConfig:
    task: str = "double"         # downstream task (minilora.data.tasks.DOWNSTREAM_TASKS): far from pretraining
    steps: int = 400             # per run, the same for every run (the findings' budget, where every method learns)
    batch_size: int = 32
    lr: float = 5e-3             # LoRA learning rate (AdamW), chosen by the sweep of docs/findings.md
    full_lr: float = 1e-3        # full fine-tuning learning rate, from the same sweep
    warmup_steps: int = 40
    lora_alpha: float = 16.0     # §4.1: "we simply set alpha to the first r we try": 16, for every r
    init: str = "gaussian"       # LoraConfig default: A ~ N(0, 1/d_in), B = 0; its size does not depend on r
    n_train: int = 4000          # training examples
    n_test: int = 500            # held-out examples for accuracy and loss
    ranks: tuple = RANKS
    target_sets: tuple = TARGET_SETS
    budget_rank: int = 8         # Table 5: r = 8 on one matrix type = r = 4 on two = r = 2 on four
    init_variants: tuple = INIT_VARIANTS
    seed: int = 0                # the data split of every run, and the LoRA initialisation and batch order of the main runs
    progress: bool = True        # one line per run

    @classmethod
    def quick(cls, task: str = "rotate", **overrides) -> "SweepConfig":
        """Fewer steps, ranks and target sets: every analysis in well under a minute (one run per cell:
        for looking at matrices, not for verdicts; ``minilora findings`` judges on seeds)."""
        settings = dict(task=task, steps=60, n_train=400, n_test=100, ranks=(1, 4, 8, 64),
                        target_sets=(("wq",), ("wq", "wv")), warmup_steps=5,
                        init_variants=tuple(v for v in INIT_VARIANTS if v[2] is None))
        settings.update(overrides)
        return cls(**settings)


@dataclass
class Run:
    """One fine-tuning run: what it trained and what it measured."""
    method: str                  # "lora" or "full"
    targets: tuple
    r: int
    seed: int
    init: str
    accuracy: float
    loss: float
    trainable: int
    seconds: float
    model: object = field(repr=False, default=None)


class Lab:
    """A base model, one task's train/test split, and every run made on them (cached).

    The runs go through ``minilora.experiments.runner`` (the runner of every comparison in minilora),
    with one data split for all of them (``SweepConfig.seed``): a seed here changes the adapter's
    initialisation and the batch order only. Every run keeps its model, for the analyses.
    """

    def __init__(self, config: SweepConfig | None = None, base=None, log=None):
        self.config = c = config or SweepConfig()
        base = base if base is not None else load_base()[0]
        self.log = log if log is not None else (print if c.progress else (lambda *a, **k: None))
        budget = Budget(steps=c.steps, batch_size=c.batch_size, warmup_steps=c.warmup_steps, n_train=c.n_train,
                        n_test=c.n_test, data_seed=c.seed)
        self.runner = Runner(base, budget, keep_if=lambda method, task, seed: True, log=None)
        self.base = base
        self.train_data, self.test_data = self.runner.data(c.task, c.seed)
        self.classification = isinstance(self.train_data, ClassificationData)
        self.runs: dict[tuple, Run] = {}

    @property
    def seconds(self) -> float:
        """Wall time spent training and evaluating."""
        return self.runner.seconds

    def lora_config(self, targets, r, *, seed=None, init=None, init_std=None) -> LoraConfig:
        return LoraConfig(r=r, lora_alpha=self.config.lora_alpha, target_modules=tuple(targets),
                          init_lora_weights=init or self.config.init, init_std=init_std,
                          seed=self.config.seed if seed is None else seed,
                          modules_to_save=("head",) if self.classification else ())

    def lora(self, targets, r: int, *, seed=None, init=None, init_std=None) -> Run:
        """The run of LoRA with rank r on ``targets`` (trained on first use, then cached)."""
        seed = self.config.seed if seed is None else seed
        init = init or self.config.init
        label = f"lora {targets_label(targets)} r={r}"
        if seed != self.config.seed:
            label += f" seed={seed}"
        if init != self.config.init or init_std is not None:
            label += f" {init}" + (f" std={init_std}" if init_std is not None else "")
        method = Method(label, "lora", self.config.lr, self.lora_config(targets, r, seed=seed, init=init, init_std=init_std))
        return self._run(("lora", tuple(targets), int(r), seed, init, init_std), method, tuple(targets), int(r), seed, init)

    def full(self) -> Run:
        """Full fine-tuning of every base weight (trained on first use, then cached)."""
        return self._run(("full",), Method("full fine-tuning", "full", self.config.full_lr), (), 0, self.config.seed, "")

    def _run(self, key, method, targets, r, seed, init) -> Run:
        if key not in self.runs:
            res = self.runner.run(method, self.config.task, seed)
            self.log(f"  [{len(self.runs) + 1:>2}] {method.name:<34} accuracy {100 * res.accuracy:5.1f}%  "
                     f"loss {res.loss:.3f}  ({res.seconds:.0f} s)")
            self.runs[key] = Run(method.kind, targets, r, seed, init, res.accuracy, res.loss, res.trainable,
                                 res.seconds, self.runner.model(method, self.config.task, seed))
        return self.runs[key]


def save_plot(fig, path, *, tight: bool = True):
    """Save ``fig`` as a PNG (atomically, making folders) and close it; see ``minilora.io.save_figure``."""
    return io.save_figure(fig, path, tight=tight)


def targets_label(targets) -> str:
    return ",".join(targets)


# --------------------------------------------------------------------------- 1. rank sweep (Tables 6, 18)
def rank_sweep(lab: Lab, ranks=None, target_sets=None) -> dict:
    """Accuracy and loss for every (target set, r); alpha fixed at lab.config.lora_alpha (§4.1).

    Returns {"task", "ranks" (n_r,), "target_sets" (n_s,), "accuracy", "loss", "trainable"
    (each a list of n_s lists of n_r numbers), "lora_alpha", "steps"}.
    """
    ranks = tuple(ranks or lab.config.ranks)
    target_sets = tuple(tuple(t) for t in (target_sets or lab.config.target_sets))
    runs = [[lab.lora(targets, r) for r in ranks] for targets in target_sets]
    return {"task": lab.config.task, "ranks": list(ranks), "target_sets": [list(t) for t in target_sets],
            "accuracy": [[x.accuracy for x in row] for row in runs], "loss": [[x.loss for x in row] for row in runs],
            "trainable": [[x.trainable for x in row] for row in runs],
            "lora_alpha": lab.config.lora_alpha, "steps": lab.config.steps}


def plot_rank_sweep(sweep: dict, path):
    """Accuracy (left) and test loss (right) against r, one line per target set."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for targets, acc, loss in zip(sweep["target_sets"], sweep["accuracy"], sweep["loss"]):
        axes[0].plot(sweep["ranks"], 100 * np.asarray(acc), "o-", label=targets_label(targets))
        axes[1].plot(sweep["ranks"], loss, "o-", label=targets_label(targets))
    for ax, name in zip(axes, ("exact-match accuracy (%)", "test loss")):
        ax.set(xscale="log", xlabel="rank r", ylabel=name, xticks=sweep["ranks"], xticklabels=sweep["ranks"])
        ax.minorticks_off()
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{sweep['task']}: rank sweep, alpha = {sweep['lora_alpha']:g} (Table 6)", fontsize=10)
    return save_plot(fig, path)


# --------------------------------------------------------------------------- 2. fixed budget (Table 5)
def budget_configs(budget_rank: int = 8) -> list[tuple[tuple, int]]:
    """Table 5's seven ways to spend one budget: r = budget_rank on one matrix type, half on two, a
    quarter on all four. |Theta| = 2 L_hat d r (§7.1) is the same for all of them."""
    if budget_rank < 4 or budget_rank % 4:
        raise ValueError(f"budget_rank must be a positive multiple of 4 (it is split over 1, 2 and 4 "
                         f"matrix types), got {budget_rank}")
    sets = [("wq",), ("wk",), ("wv",), ("wo",), ("wq", "wk"), ("wq", "wv"), ("wq", "wk", "wv", "wo")]
    return [(s, budget_rank // len(s)) for s in sets]


def budget_sweep(lab: Lab, budget_rank: int | None = None) -> list[dict]:
    """One row per budget configuration: label, targets, r, trainable, accuracy, loss.

    Raises if the configurations do not all train the same number of parameters.
    """
    rows = []
    for targets, r in budget_configs(budget_rank or lab.config.budget_rank):
        run = lab.lora(targets, r)
        rows.append({"label": f"{targets_label(targets)} r={r}", "targets": list(targets), "r": r,
                     "trainable": run.trainable, "accuracy": run.accuracy, "loss": run.loss})
    counts = {row["label"]: row["trainable"] for row in rows}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the budget configurations train different numbers of parameters: {counts}")
    return rows


def plot_budget(rows: list[dict], path, task: str = ""):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar([r["label"] for r in rows], [100 * r["accuracy"] for r in rows], color="tab:blue")
    ax.set(ylabel="exact-match accuracy (%)",
           title=f"{task}: {rows[0]['trainable']:,} trainable parameters each (Table 5)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return save_plot(fig, path)


# --------------------------------------------------------------------------- 3. subspace similarity (Figs 3, 4)
def compare_adapters(lm1: LoraModel, lm2: LoraModel, modules=None, *, adapter1=None, adapter2=None) -> dict:
    """{module: phi grid (r1, r2)} between the A matrices of two adapters (eq. 4 for every i, j).

    modules: full names ("blocks.2.attn.wq"); None = every module, which then must be the same
    set in both adapters. A module adapted by only one of them raises ValueError naming it.
    """
    mods1 = set(lm1.modules[adapter1 or lm1.active_adapter])
    mods2 = set(lm2.modules[adapter2 or lm2.active_adapter])
    if modules is None:
        if mods1 != mods2:
            raise ValueError(f"the adapters adapt different modules: only the first has {sorted(mods1 - mods2)}, "
                             f"only the second has {sorted(mods2 - mods1)}; pass modules= to compare the common ones")
        modules = sorted(mods1)
    missing = {m: [i + 1 for i, mods in enumerate((mods1, mods2)) if m not in mods] for m in modules}
    missing = {m: which for m, which in missing.items() if which}
    if missing:
        raise ValueError("cannot compare modules the adapters do not both adapt: "
                         + "; ".join(f"{m} missing in adapter {' and '.join(map(str, w))}" for m, w in missing.items())
                         + f". The first adapts {sorted(mods1)}, the second {sorted(mods2)}")
    return {m: analysis.subspace_similarity_grid(analysis.lora_factors(lm1, m, adapter1)[0],
                                                 analysis.lora_factors(lm2, m, adapter2)[0]) for m in modules}


def subspace_analysis(lab: Lab, *, targets=("wq", "wv"), r_small: int = 8, r_large: int = 64,
                      seeds=(0, 1), k: int = 8) -> dict:
    """phi between the {wq, wv} adapters at r_small and r_large (Figure 3) and at r_large from two
    seeds (Figure 4), per layer and target, plus two random Gaussian A as the reference pair.

    Per module: "phi11" = phi(A_small, A_large, 1, 1) (the paper: > 0.5), "shared_k" =
    ||U1_k^T U2_k||_F^2 = k phi(k, k) for the two seeds: directions shared among the top k (random:
    k^2 / d_in). Returns grids (NumPy arrays) and a per-module summary list.
    """
    adapter_targets = ("wq", "wv")
    if not set(targets) <= set(adapter_targets):
        raise ValueError(f"targets must be among the analysed adapters' {adapter_targets}, got {targets}")
    small = lab.lora(adapter_targets, r_small, seed=seeds[0]).model
    large = lab.lora(adapter_targets, r_large, seed=seeds[0]).model
    other = lab.lora(adapter_targets, r_large, seed=seeds[1]).model
    L = lab.base.config.n_layer
    modules = [f"blocks.{i}.{SHORT_NAMES[t]}" for i in range(L) for t in targets]
    by_rank, by_seed = compare_adapters(small, large, modules), compare_adapters(large, other, modules)
    d_in = int(lab.base.params[modules[0] + ".weight"].shape[1])
    gen = np.random.default_rng(12345)
    random_grid = analysis.subspace_similarity_grid(gen.standard_normal((r_large, d_in)),
                                                    gen.standard_normal((r_large, d_in)))
    summary = [{"module": m, "layer": int(m.split(".")[1]), "target": m.split(".")[-1],
                "phi11": float(by_rank[m][0, 0]), "shared_k": float(k * by_seed[m][k - 1, k - 1])} for m in modules]
    return {"d_in": d_in, "r_small": r_small, "r_large": r_large, "k": k, "modules": modules,
            "by_rank": by_rank, "by_seed": by_seed, "random": random_grid, "summary": summary,
            "baseline_phi11": analysis.random_baseline(1, 1, d_in), "baseline_shared_k": k * k / d_in,
            "random_phi11": float(random_grid[0, 0]), "random_shared_k": float(k * random_grid[k - 1, k - 1])}


def plot_subspace(result: dict, path, *, top: int = 16):
    """Rows: layer x target. Columns: r_small vs r_large (i, j <= r_small), seed vs seed (top x top),
    two random matrices (top x top). Titles give the random baseline max(i, j) / d_in's range."""
    import matplotlib.pyplot as plt

    mods, rs, d = result["modules"], result["r_small"], result["d_in"]
    fig, axes = plt.subplots(len(mods), 3, figsize=(9, 2.4 * len(mods) + 0.6), squeeze=False,
                             layout="constrained")
    for row, m in zip(axes, mods):
        panels = [(result["by_rank"][m][:rs, :rs], f"{m}: r={rs} vs r={result['r_large']}"),
                  (result["by_seed"][m][:top, :top], f"seed 0 vs seed 1, r={result['r_large']}"),
                  (result["random"][:top, :top], f"two random A (baseline up to {top / d:.2f})")]
        for ax, (grid, title) in zip(row, panels):
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper",
                           extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
            ax.set_title(title, fontsize=7)
            ax.set_xlabel("j", fontsize=7)
            ax.set_ylabel("i", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes, shrink=0.3, label="phi(i, j)")
    fig.suptitle(f"subspace similarity (Hu et al. 2021, eq. 4, Figures 3 and 4); d_in = {d}, "
                 f"random baseline max(i, j) / {d}", fontsize=9)
    return save_plot(fig, path, tight=False)


# --------------------------------------------------------------------------- 4. dW versus W (Table 7)
def amplification_analysis(lab: Lab, *, ranks=(4, 64), target: str = "wq", layer: int | None = None,
                           include_full: bool = True) -> list[dict]:
    """Table 7 for the {wq, wv} adapters at each r in ``ranks``, on ``target`` of ``layer`` (default:
    the middle block, as the paper's 48th of 96). With include_full, the full fine-tuning update of
    the same matrix, projected on its own top-r directions, for comparison."""
    layer = lab.base.config.n_layer // 2 if layer is None else layer
    module = f"blocks.{layer}.{SHORT_NAMES[target]}"
    W = to_numpy(lab.base.params[module + ".weight"])
    rows = []
    for r in ranks:
        dW = analysis.lora_delta(lab.lora(("wq", "wv"), r).model, module)
        rows.append({"source": f"LoRA r={r}", "module": module, **analysis.amplification(dW, W, r)})
    if include_full:
        dW = to_numpy(lab.full().model.params[module + ".weight"]).astype(np.float64) - W
        rows += [{"source": f"full FT, top {r}", "module": module, **analysis.amplification(dW, W, r)}
                 for r in ranks]
    return rows
