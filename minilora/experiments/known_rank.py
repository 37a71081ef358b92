"""What the rank r does, with no noise: LoRA students of a teacher whose update has a known rank k.

The real-task rank sweep mixes three things: what the task needs, what a finite training run finds,
and seed-to-seed noise. This experiment removes the last two. The teacher changes each target
matrix of the frozen base by a known update of rank k (Hu et al. 2021, eq. 3 with a given dW):

    W_teacher = W0 + dW_k,   dW_k = g ||W0||_F U_k V_k^T / sqrt(k),   U_k (d_out, k), V_k (d_in, k)
                                                                     random, orthonormal columns

so ||dW_k||_F = g ||W0||_F and its k singular values are equal. For every target matrix, a LoRA
student of rank r (the package's layer: ``lora_forward`` / ``lora_backward``, A random and B = 0
at init, scale alpha / r) learns to reproduce the teacher layer's output on the inputs that matrix
really sees in the base (its layer-norm outputs on pretraining examples), by AdamW on the squared
error, full batch and deterministic. A student with r >= k can represent dW_k exactly, so its error
goes to 0; one with r < k cannot, and its error stays near the part of dW_k that no rank-r update
reaches (Eckart-Young: (k - r) / k of ||dW_k||_F^2 for equal singular values, weighted here by the
inputs). The error against r has a knee at r = k.

Shapes: N rows (tokens), d_in, d_out the matrix's sides (C here), k teacher rank, r student rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from minilora import io
from minilora.adapters.lora import init_lora_pair, lora_backward, lora_forward
from minilora.data.datasets import make_mixture, trim_padding
from minilora.data.tasks import PRETRAIN_TASKS
from minilora.nn import backend
from minilora.nn.model import SHORT_NAMES
from minilora.nn.optim import AdamW, linear_warmup_decay


@dataclass
class KnownRankConfig:
    k: int = 4                               # rank of the teacher's update of every target matrix
    ranks: tuple = (1, 2, 3, 4, 5, 6, 8, 16)  # student ranks
    targets: tuple = ("wq", "wv")            # the matrices the teacher changes and the students adapt
    gain: float = 0.5                        # g: ||dW_k||_F / ||W0||_F per matrix
    lora_alpha: float = 16.0                 # fixed for every r (§4.1)
    n_inputs: int = 32                       # pretraining examples whose hidden states are the inputs
    steps: int = 300
    lr: float = 2e-2
    seed: int = 0                            # teacher's directions, inputs, students' A


# --------------------------------------------------------------------------- teacher and inputs
def _orthonormal(rng, n: int, k: int) -> np.ndarray:
    """(n, k) with orthonormal columns (QR of a Gaussian)."""
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def teacher_deltas(base, config: KnownRankConfig) -> dict:
    """{module: dW_k (d_out, d_in) float64}: the teacher's rank-k update of every target matrix."""
    rng = np.random.default_rng(config.seed)
    deltas = {}
    for i in range(base.config.n_layer):
        for t in config.targets:
            name = f"blocks.{i}.{SHORT_NAMES[t]}"
            W0 = backend.to_numpy(base.params[name + ".weight"]).astype(np.float64)    # (d_out, d_in)
            U, V = _orthonormal(rng, W0.shape[0], config.k), _orthonormal(rng, W0.shape[1], config.k)
            deltas[name] = config.gain * np.linalg.norm(W0) / np.sqrt(config.k) * (U @ V.T)   # rank k
    return deltas


def layer_inputs(base, config: KnownRankConfig) -> dict:
    """{module: x (N, d_in) float64}: what each target matrix reads in the base, on pretraining examples
    (the input stored in the linear layer's forward cache; padding positions left out)."""
    data = trim_padding(make_mixture(PRETRAIN_TASKS, config.n_inputs, seed=config.seed + 1,
                                     block_size=base.config.block_size))
    _, cache = base.forward(backend.asarray(data.x))
    c_blocks = cache[0][2]                           # ((c_tok, T, c_blocks, c_lnf), last, head, c_head)
    real = (data.x != 0).reshape(-1)                 # (N,) tokens that are not padding
    slot = {"attn.wq": 1, "attn.wk": 2, "attn.wv": 3}   # their place in a block's cache tuple
    out = {}
    for i in range(base.config.n_layer):
        for t in config.targets:
            kind = SHORT_NAMES[t]
            if kind not in slot:
                raise ValueError(f"known_rank reads the inputs of wq, wk and wv; got target {t!r}")
            x = backend.to_numpy(c_blocks[i][slot[kind]][0]).astype(np.float64)          # (B, T, d_in)
            out[f"blocks.{i}.{kind}"] = x.reshape(-1, x.shape[-1])[real]
    return out


# --------------------------------------------------------------------------- students
def fit_student(x: np.ndarray, dW: np.ndarray, r: int, config: KnownRankConfig, *, module_seed: int = 0) -> float:
    """Relative error ||x (s B A - dW)^T||^2 / ||x dW^T||^2 of a rank-r LoRA student after training.

    x (N, d_in), dW (d_out, d_in). The student is h = x W0^T + s (x A^T) B^T with W0 = 0 (the frozen
    part cancels in the error), trained by AdamW on the mean squared error against y = x dW^T.
    """
    d_out, d_in = dW.shape
    A, B_ = init_lora_pair(d_out, d_in, r, rng=np.random.default_rng([config.seed, r, module_seed]),
                           dtype=np.float64)
    params = {"A": A, "B": B_}
    zero, s = np.zeros((d_out, d_in)), config.lora_alpha / r
    y = x @ dW.T                                                          # (N, d_out) the teacher's update
    opt = AdamW(lr=config.lr, weight_decay=0.0)
    for step in range(config.steps):
        opt.lr = linear_warmup_decay(step, total_steps=config.steps, warmup_steps=config.steps // 10,
                                     base_lr=config.lr, min_lr=0.01 * config.lr)
        h, cache = lora_forward(x, zero, None, params["A"], params["B"], s)  # (N, d_out)
        _, dA, dB = lora_backward((h - y) / len(x), cache)               # d(mean of 1/2 ||h - y||^2)
        opt.step(params, {"A": dA, "B": dB})
    h, _ = lora_forward(x, zero, None, params["A"], params["B"], s)
    return float(np.sum((h - y) ** 2) / np.sum(y ** 2))


def eckart_young_residual(deltas: dict, r: int) -> float:
    """The fraction of sum ||dW_k||_F^2 that no rank-r update can reach: sum of the squared singular
    values beyond the r largest, over every target matrix, divided by the total."""
    s = [np.linalg.svd(dW, compute_uv=False) for dW in deltas.values()]
    return float(sum(np.sum(x[r:] ** 2) for x in s) / sum(np.sum(x ** 2) for x in s))


def known_rank_experiment(base, config: KnownRankConfig | None = None, log=print) -> dict:
    """Teacher of rank k, students of every rank in config.ranks on every target matrix. Returns
    {"k", "ranks", "error" (mean relative error over the matrices, per r), "per_module"
    ({module: [error per r]}), "residual" (Eckart-Young fraction per r), "config", "seconds"}."""
    cfg = config or KnownRankConfig()
    t0 = time.perf_counter()
    deltas, inputs = teacher_deltas(base, cfg), layer_inputs(base, cfg)
    per_module = {m: [fit_student(inputs[m], dW, r, cfg, module_seed=j) for r in cfg.ranks]
                  for j, (m, dW) in enumerate(deltas.items())}
    error = [float(np.mean([v[i] for v in per_module.values()])) for i in range(len(cfg.ranks))]
    for r, e in zip(cfg.ranks, error):
        log(f"  known rank k = {cfg.k}: student r = {r:>2}  relative error {e:.2e}", flush=True)
    return {"k": cfg.k, "ranks": list(cfg.ranks), "error": error, "per_module": per_module,
            "residual": [eckart_young_residual(deltas, r) for r in cfg.ranks],
            "config": vars(cfg) | {"ranks": list(cfg.ranks), "targets": list(cfg.targets)},
            "seconds": time.perf_counter() - t0}


def plot_known_rank(result: dict, path=None, ax=None):
    """Relative error against r (log scale) with the knee at r = k, and the Eckart-Young residual."""
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(result["ranks"], result["error"], "o-", label="students: relative error on real inputs")
    ax.plot(result["ranks"], np.maximum(result["residual"], 1e-12), "s:", color="tab:green",
            label="best rank-r update misses (Eckart-Young)")
    ax.axvline(result["k"], color="tab:red", ls="--", label=f"teacher rank k = {result['k']}")
    ax.set(xlabel="student rank r", ylabel="fraction of the teacher's update missed", yscale="log",
           xscale="log", title=f"A teacher of known rank k = {result['k']}: error against r (no noise)")
    ax.set_xticks(result["ranks"], [str(r) for r in result["ranks"]])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax.title.set_fontsize(9)
    if not own:
        return ax
    if path is None:
        fig.tight_layout()
        return fig
    return io.save_figure(fig, path)
