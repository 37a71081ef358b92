"""DoRA's weight-decomposition analysis (Liu et al. 2024, §3.2, Fig. 2) on the shipped base model.

For full fine-tuning, LoRA and DoRA on one downstream task, every few steps (3 intermediate
checkpoints and the final one, as the paper) the effective weight of each analysed matrix is
compared with W0 (``minilora.adapters.decomposition``, eq. 3-4):

    Delta M = mean_j | ||W_j|| - ||W0_j|| |        Delta D = mean_j (1 - cos(W_j, W0_j))

one (Delta D, Delta M) point per matrix and checkpoint. Fig. 2 plots them for the query matrices
and reads the slope of Delta M on Delta D: negative for full fine-tuning and DoRA (large direction
changes come with small magnitude changes), positive for LoRA (both grow together). Here each
run gives that slope and the correlation, per matrix type (wq, wv), and over >= 3 seeds a mean
and a standard deviation, so the sign can be read against the run-to-run spread.

The effective weight is what the layer computes with: the trained W for full fine-tuning, and the
merged weight of its kind otherwise (W0 + s B A for LoRA, m V / ||V|| for DoRA), through the
registry's ``merge``, so any mergeable variant can be studied the same way.

Because the points of one run mix layers and checkpoints, and every change grows with training
time, a pooled slope partly measures time. ``within_checkpoint_slope`` also reports the slope
across layers at a fixed checkpoint (averaged over checkpoints), which holds training time fixed.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.decomposition import decomposition_trend, weight_decomposition_change
from minilora.data.datasets import make_splits
from minilora.experiments.finetune import prepare
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import TrainConfig, evaluate, train
from minilora.nn.backend import to_numpy
from minilora.nn.linears import get_kind

METHODS = ("full", "lora", "dora")


@dataclass
class StudyConfig:
    task: str = "shift"                          # a downstream (generation) task of minilora.data.tasks
    steps: int = 400                             # AdamW steps per run (the demo's budget)
    checkpoints: int = 4                         # evenly spaced; the last is the final model (paper: 3 + final)
    r: int = 4                                   # LoRA / DoRA rank (the library's default recipe)
    lora_alpha: float = 8.0
    targets: tuple = ("wq", "wk", "wv", "wo")    # adapted matrices (the library's default recipe)
    analysed: tuple = ("attn.wq", "attn.wv")     # matrices whose (Delta D, Delta M) are measured (paper: q, v)
    lr: dict = field(default_factory=lambda: {"full": 1e-3, "lora": 5e-3, "dora": 5e-3})
    seeds: tuple = (0, 1, 2)
    batch_size: int = 32
    n_train: int = 4000
    n_test: int = 500

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- measuring
def effective_weight(model, module: str) -> np.ndarray:
    """The (d_out, d_in) weight layer ``module`` computes with now, as float64 NumPy.

    A plain layer: its weight. An adapted layer: its kind's ``merge`` of its tensors (nothing in
    the model changes).
    """
    spec = model.model.linears[module] if hasattr(model, "layouts") else model.linears[module]
    t = {role: model.params[p] for role, p in spec.tensors.items()}
    W = t["weight"] if spec.kind == "linear" else get_kind(spec.kind).merge(t, **spec.options)[0]
    return np.asarray(to_numpy(W), dtype=np.float64)


def snapshot(model, W0: dict, step: int) -> list[dict]:
    """One point per analysed module: {"module", "step", "delta_m", "delta_d"} (eq. 3-4)."""
    points = []
    for module, w0 in W0.items():
        delta_m, delta_d = weight_decomposition_change(w0, effective_weight(model, module))
        points.append({"module": module, "step": step, "delta_m": delta_m, "delta_d": delta_d})
    return points


def within_checkpoint_slope(points: list[dict]) -> float | None:
    """Mean over checkpoints of the slope of Delta M on Delta D across that checkpoint's matrices.

    None when no checkpoint has >= 3 points that vary (too few layers to fit a line).
    """
    slopes = []
    for step in sorted({p["step"] for p in points}):
        at = [p for p in points if p["step"] == step]
        try:
            slopes.append(decomposition_trend([p["delta_d"] for p in at], [p["delta_m"] for p in at])["slope"])
        except ValueError:
            continue
    return statistics.fmean(slopes) if slopes else None


def trends(points: list[dict], analysed) -> dict:
    """{matrix type ("attn.wq", ..., "all"): {"slope", "corr", "within_slope", "points"}} of one run."""
    out = {}
    for kind in (*analysed, "all"):
        sel = [p for p in points if kind == "all" or p["module"].endswith(kind)]
        fit = decomposition_trend([p["delta_d"] for p in sel], [p["delta_m"] for p in sel])
        out[kind] = {"slope": fit["slope"], "corr": fit["corr"], "points": fit["points"],
                     "within_slope": within_checkpoint_slope(sel)}
    return out


# --------------------------------------------------------------------------- one run
def _config_for(method: str, cfg: StudyConfig, seed: int) -> LoraConfig | None:
    if method == "full":
        return None
    return LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=cfg.targets, use_dora=method == "dora",
                      seed=seed)


def run_one(base, method: str, seed: int, cfg: StudyConfig) -> dict:
    """Train ``method`` once, measuring the analysed matrices at every checkpoint; a JSON-able record."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; the study compares {METHODS}")
    if cfg.steps % cfg.checkpoints:
        raise ValueError(f"steps ({cfg.steps}) must be a multiple of checkpoints ({cfg.checkpoints})")
    train_data, test_data = make_splits(cfg.task, cfg.n_train, cfg.n_test, seed=seed, block_size=base.config.block_size)
    model = prepare(base, "full" if method == "full" else "lora", train_data, _config_for(method, cfg, seed), seed=seed)
    modules = [f"blocks.{i}.{m}" for i in range(base.config.n_layer) for m in cfg.analysed]
    W0 = {m: np.asarray(to_numpy(base.params[m + ".weight"]), dtype=np.float64) for m in modules}
    points: list[dict] = []
    t0 = time.perf_counter()
    history = train(model, train_data, None, TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr[method], warmup_steps=20, weight_decay=0.0,
        eval_every=cfg.steps // cfg.checkpoints, seed=seed, progress=False),
        on_eval=lambda m, step: points.extend(snapshot(m, W0, step)))
    final = evaluate(model, test_data)
    return {"method": method, "seed": seed, "accuracy": final["accuracy"], "loss": final["loss"],
            "trainable": history.trainable_params, "seconds": time.perf_counter() - t0, "points": points,
            "trends": trends(points, cfg.analysed)}


# --------------------------------------------------------------------------- the study
def summarize(runs: list[dict], key: str = "attn.wq") -> dict:
    """{method: {"slope": (mean, sd), "corr": (mean, sd), "within_slope": (mean, sd), "accuracy": (mean, sd),
    "negative_slopes": count, "n": seeds}} over the runs' trends for matrix type ``key``."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        sel = [r for r in runs if r["method"] == method]

        def stat(values):                                  # (mean, sd), or None when nothing was measured
            values = [v for v in values if v is not None]
            if not values:
                return None
            return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        slopes = [r["trends"][key]["slope"] for r in sel]
        out[method] = {"slope": stat(slopes), "corr": stat([r["trends"][key]["corr"] for r in sel]),
                       "within_slope": stat([r["trends"][key]["within_slope"] for r in sel]),
                       "accuracy": stat([r["accuracy"] for r in sel]),
                       "negative_slopes": sum(s < 0 for s in slopes), "n": len(sel)}
    return out


def run_study(cfg: StudyConfig | None = None, *, base=None, methods=METHODS, log=print) -> dict:
    """Every method x seed of ``cfg``: {"config", "runs", "summary": {matrix type: summarize(...)}}."""
    cfg = cfg or StudyConfig()
    base = base if base is not None else load_base()[0]
    runs = []
    for seed in cfg.seeds:
        for method in methods:
            run = run_one(base, method, seed, cfg)
            runs.append(run)
            t = run["trends"]["attn.wq"]
            log(f"  {method:<5} seed {seed}: accuracy {100 * run['accuracy']:5.1f}%, wq slope {t['slope']:+.3g} "
                f"corr {t['corr']:+.2f} ({run['seconds']:.0f} s)")
    return {"config": cfg.to_dict(), "runs": runs,
            "summary": {key: summarize(runs, key) for key in (*cfg.analysed, "all")}}


def plot_study(results: dict, path=None, *, key: str = "attn.wq", seed: int | None = None):
    """Fig. 2's panels: Delta M (y) against Delta D (x) per method, one seed, colour = checkpoint step,
    with the least-squares line; the title gives the slope's mean +- sd over all seeds."""
    import matplotlib.pyplot as plt

    runs = results["runs"]
    seed = runs[0]["seed"] if seed is None else seed
    methods = list(dict.fromkeys(r["method"] for r in runs))
    summary = summarize(runs, key)
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), constrained_layout=True)
    for ax, method in zip(np.atleast_1d(axes), methods):
        run = next(r for r in runs if r["method"] == method and r["seed"] == seed)
        pts = [p for p in run["points"] if p["module"].endswith(key)]
        d, m = np.array([p["delta_d"] for p in pts]), np.array([p["delta_m"] for p in pts])
        sc = ax.scatter(d, m, c=[p["step"] for p in pts], cmap="viridis", s=28)
        fit = run["trends"][key]
        xs = np.linspace(d.min(), d.max(), 2)
        ax.plot(xs, fit["slope"] * xs + (m.mean() - fit["slope"] * d.mean()), "k--", lw=1)
        mean, sd = summary[method]["slope"]
        ax.set(title=f"{method}\nslope {mean:+.3g} +- {sd:.2g} over {summary[method]['n']} seeds",
               xlabel="Delta D (1 - cos)", ylabel="Delta M")
        ax.title.set_fontsize(9)
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 2))
    fig.colorbar(sc, ax=axes, label="step")
    fig.suptitle(f"{key}: magnitude vs direction change per layer and checkpoint (seed {seed})", fontsize=10)
    if path is not None:
        return io.save_figure(fig, path, tight=False)
    return fig
