"""How much do 4-bit formats lose? Reconstruction error and the base model's accuracy after quantization.

    python benchmarks/quant_error.py                  # the defaults: blocks of 64, 3 Gaussian seeds
    python benchmarks/quant_error.py --blocksize 128  # another block size
    python benchmarks/quant_error.py --n-eval 200     # quicker task evaluation

Formats (minilora.adapters.quant_tensor, all blockwise absmax over the flattened weight):
  nf4      NormalFloat4, QLoRA's type (Dettmers et al. 2023, §3)
  nf4+dq   the same codes with double-quantized block scales (§3, "Double Quantization")
  int4     symmetric integers -7..7 (QLoRA's Int4 baseline)
  fp4      bitsandbytes' 4-bit float (e2m1), bitsandbytes' default 4-bit type

Three measurements:
  1. Gaussian weights N(0, 0.02^2), 1024 x 1024, on ``--seeds`` seeds: relative Frobenius error
     ||W - dequant(quant(W))|| / ||W||, mean and spread over seeds.
  2. The shipped base's block linear weights (attn.wq, wk, wv, wo, mlp.fc, proj of every block):
     the same error over all of them together (square root of summed squared errors over summed
     squared norms) and the range over matrices, with the storage in bits per weight.
  3. The shipped base's loss and exact-match accuracy on its pretraining tasks (copy, reverse,
     sort; ``--n-eval`` fresh examples each, the held-out seed of minilora.experiments.pretrain)
     after replacing every block linear weight by its dequantized 4-bit version: a model copy
     whose weights are what a 4-bit base computes with (QLoRA eq. 5). The embedding (tied to the
     output head), biases and LayerNorms stay float32, as they do under QLoRA.
Results go to benchmarks/results/quant_error.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common

import numpy as np  # noqa: E402

import common  # noqa: E402
from minilora import load_base  # noqa: E402
from minilora.adapters.quant import relative_error  # noqa: E402
from minilora.adapters.quant_tensor import quantize  # noqa: E402
from minilora.data.datasets import make_dataset  # noqa: E402
from minilora.data.tasks import PRETRAIN_TASKS  # noqa: E402
from minilora.experiments.train import evaluate  # noqa: E402
from minilora.nn.model import GPT  # noqa: E402

# name -> (quant_type, double_quant)
METHODS = {"nf4": ("nf4", False), "nf4+dq": ("nf4", True), "int4": ("int4", False), "fp4": ("fp4", False)}
EVAL_SEED = 20_000        # minilora.experiments.pretrain.task_accuracy's held-out seed


def quantize_as(W, method, blocksize):
    """W (d_out, d_in) -> the QuantizedTensor of ``method``."""
    quant_type, double_quant = METHODS[method]
    return quantize(W, quant_type, blocksize, double_quant)


# --------------------------------------------------------------------------- 1. Gaussian weights
def gaussian_errors(seeds, blocksize, shape=(1024, 1024), std=0.02) -> dict:
    """method -> {"mean", "std", "per_seed"}: relative error on N(0, std^2) weights."""
    out = {}
    for method in METHODS:
        errs = []
        for seed in seeds:
            W = (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)
            errs.append(relative_error(W, quantize_as(W, method, blocksize).dequantize()))
        out[method] = {"mean": float(np.mean(errs)), "std": float(np.std(errs)), "per_seed": errs}
    return out


# --------------------------------------------------------------------------- 2. the base's weights
def linear_weight_names(model: GPT) -> list[str]:
    return [f"{name}.weight" for name in model.config.linear_names()]


def excess_kurtosis(W) -> float:
    """E[(w - mean)^4] / var^2 - 3: 0 for a Gaussian, larger when the weights have heavy tails."""
    w = np.asarray(W, dtype=np.float64).reshape(-1)
    w = w - w.mean()
    return float((w ** 4).mean() / (w ** 2).mean() ** 2 - 3.0)


def base_weight_errors(model: GPT, blocksize) -> dict:
    """method -> overall relative error, per-matrix range, bits per weight over the block linear weights."""
    names = linear_weight_names(model)
    out = {}
    for method in METHODS:
        sq_err = sq_norm = bits = count = 0.0
        per_matrix = {}
        for name in names:
            W = np.asarray(model.params[name], dtype=np.float32)
            qw = quantize_as(W, method, blocksize)
            W_hat = qw.dequantize()
            per_matrix[name] = relative_error(W, W_hat)
            sq_err += float(((W.astype(np.float64) - W_hat) ** 2).sum())
            sq_norm += float((W.astype(np.float64) ** 2).sum())
            bits += 8 * qw.nbytes
            count += W.size
        values = list(per_matrix.values())
        out[method] = {"overall": float(np.sqrt(sq_err / sq_norm)), "min": min(values), "max": max(values),
                       "median": float(np.median(values)), "bits_per_weight": bits / count,
                       "per_matrix": per_matrix}
    return out


# --------------------------------------------------------------------------- 3. the base's tasks
def dequantized_copy(model: GPT, method, blocksize) -> GPT:
    """A copy of ``model`` whose block linear weights are replaced by their dequantized 4-bit values."""
    params = {k: v.copy() for k, v in model.params.items()}
    for name in linear_weight_names(model):
        params[name] = quantize_as(params[name], method, blocksize).dequantize(dtype=params[name].dtype)
    return GPT(model.config, params)


def task_scores(model: GPT, n_eval) -> dict:
    """task -> {"loss", "accuracy"} on ``n_eval`` held-out examples, plus their means under "mean"."""
    scores = {t: evaluate(model, make_dataset(t, n_eval, seed=EVAL_SEED, block_size=model.config.block_size))
              for t in PRETRAIN_TASKS}
    scores["mean"] = {k: float(np.mean([scores[t][k] for t in PRETRAIN_TASKS])) for k in ("loss", "accuracy")}
    # binomial standard error of the mean accuracy over all len(PRETRAIN_TASKS) * n_eval examples: the
    # noise of the evaluation sample, the scale on which two formats' accuracies can be told apart
    p, n = scores["mean"]["accuracy"], len(PRETRAIN_TASKS) * n_eval
    scores["mean"]["accuracy_se"] = float(np.sqrt(p * (1 - p) / n))
    return scores


# --------------------------------------------------------------------------- report
def print_report(gauss, weights, tasks) -> None:
    rows = [{"method": m, "gauss": gauss[m]["mean"], "gauss_sd": gauss[m]["std"], "base": weights[m]["overall"],
             "base_min": weights[m]["min"], "base_max": weights[m]["max"], "bits": weights[m]["bits_per_weight"],
             **task_columns(tasks[m])} for m in METHODS]
    rows.insert(0, {"method": "float32", "bits": 32.0, **task_columns(tasks["float32"])})
    print(common.format_table(rows, [
        ("method", "format", "s"), ("gauss", "err N(0,.02^2)", ".4f"), ("gauss_sd", "+-", ".4f"),
        ("base", "err base", ".4f"), ("base_min", "min", ".4f"), ("base_max", "max", ".4f"),
        ("bits", "bits/w", ".3f"), ("loss", "task loss", ".5f"), ("acc", "acc %", ".2f"), ("acc_se", "+-", ".2f"),
        *[(t, f"{t} %", ".1f") for t in PRETRAIN_TASKS]]))


def task_columns(scores) -> dict:
    """The task figures of one row of the printed table (accuracies in percent)."""
    mean = scores["mean"]
    return {"loss": mean["loss"], "acc": 100 * mean["accuracy"], "acc_se": 100 * mean["accuracy_se"],
            **{t: 100 * scores[t]["accuracy"] for t in PRETRAIN_TASKS}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3, help="Gaussian matrices (seeds 0, 1, ...)")
    ap.add_argument("--n-eval", type=int, default=600, help="held-out examples per pretraining task")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    gauss = gaussian_errors(range(args.seeds), args.blocksize)
    model, _ = load_base()
    weights = base_weight_errors(model, args.blocksize)
    tasks = {"float32": task_scores(model, args.n_eval)}
    for method in METHODS:
        tasks[method] = task_scores(dequantized_copy(model, method, args.blocksize), args.n_eval)
    kurtosis = {name: excess_kurtosis(model.params[name]) for name in linear_weight_names(model)}
    print(f"blocks of {args.blocksize}; Gaussian: {args.seeds} seeds of 1024 x 1024; base: "
          f"{len(kurtosis)} matrices, excess kurtosis {min(kurtosis.values()):.2f} .. {max(kurtosis.values()):.2f} "
          f"(0 for a Gaussian); tasks: {args.n_eval} examples each\n")
    print_report(gauss, weights, tasks)
    common.save_json(args.out / "quant_error.json", {
        "args": {k: str(v) for k, v in vars(args).items()}, "methods": {m: list(v) for m, v in METHODS.items()},
        "gaussian": gauss, "base_weights": weights, "base_weight_excess_kurtosis": kurtosis, "tasks": tasks,
        "seconds": time.perf_counter() - t0, "environment": common.environment()})
    print(f"\nsaved {args.out / 'quant_error.json'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
