"""Time per training step, LoRA against full fine-tuning, beside the bound matrix-product FLOPs set.

A LoRA step still runs the forward pass and the input-gradient half of the backward pass through
every frozen matrix; it skips only the frozen weights' gradient products, dW = dY^T X. With linear
layers costing 2 N d_in d_out FLOPs per product (N = B T rows):

    full step  = 3 (linear + attention)                       forward, dX, dW
    LoRA step  = 2 linear + 3 attention + 3 adapters          forward, dX; dW only for A and B

so at best a LoRA step takes 2/3 of a full one (attention's weightless products are not skipped).
``time_steps`` measures both in interleaved rounds on one batch, the steadier figure on a shared
machine: each round times every model once, in an order that alternates.

Shape letters: B batch, T time, C channels, L layers, V vocabulary, NH heads, r rank.
"""
from __future__ import annotations

import time

import numpy as np

from minilora import fast
from minilora.fast import parallel
from minilora.nn import backend
from minilora.nn.optim import AdamW


def train_step_flops(config, B: int, T: int, *, lora_r: int = 0, lora_targets: int = 0) -> dict:
    """Matrix-product FLOPs of one training step of minilora's GPT (config: a GPTConfig).

    linear: 2 (B T)(L 12 C^2 + V C) per pass (six matrices per block and the tied LM head);
    attention: q k^T and att v, 4 B T^2 C per layer; adapters (``lora_targets`` C x C matrices per
    block at rank r): 2 (B T) 2 r C each per pass. Embeddings, biases, norms, GELU, softmax and the
    optimizer are elementwise and left out.
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    linear = 2 * B * T * (L * 12 * C * C + V * C)
    attention = L * 4 * B * T * T * C
    adapters = 2 * B * T * L * lora_targets * 2 * lora_r * C
    step = 2 * linear + 3 * attention + 3 * adapters if lora_r else 3 * (linear + attention)
    return {"linear": linear, "attention": attention, "adapters": adapters, "train_step": step}


def time_steps(models: dict, batch: dict, *, rounds: int = 20, warmup: int = 3, lr: float = 1e-4) -> dict:
    """{name: [seconds per step, one per round]}: a training step (forward, backward, AdamW update)
    of every model on the same batch, timed in ``rounds`` interleaved rounds after ``warmup`` ones.
    The step is the training loop's (minilora.experiments.train): fast kernels, worker threads.

    Each model updates its own weights (at a small lr); time it on copies you do not need afterwards.
    """
    opts = {name: AdamW(lr=lr, weight_decay=0.0) for name in models}

    def step(name):
        model = models[name]
        with fast.use_kernels(model):
            opts[name].step(model.params, parallel.loss_and_grads(model, batch)[1])
        backend.synchronize()

    names = list(models)
    times = {name: [] for name in names}
    for k in range(warmup + rounds):
        for name in (names if k % 2 == 0 else names[::-1]):          # alternate the order each round
            t0 = time.perf_counter()
            step(name)
            if k >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def step_ratio(times: dict, num: str, den: str) -> dict:
    """Per-round ratios times[num] / times[den]: median and quartiles, and each side's median in ms."""
    ratios = np.asarray(times[num]) / np.asarray(times[den])
    return {"ratio": float(np.median(ratios)), "ratio_q25": float(np.quantile(ratios, 0.25)),
            "ratio_q75": float(np.quantile(ratios, 0.75)), "ratios": ratios.tolist(),
            f"{num}_ms": 1e3 * float(np.median(times[num])), f"{den}_ms": 1e3 * float(np.median(times[den]))}
