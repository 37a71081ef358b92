"""Training memory split into what LoRA removes and what it cannot (the claim "LoRA saves memory").

The parts of one training step, in bytes:

    frozen weights      read in every forward and backward pass, so they stay on the device
    trainable weights
    gradients           one per trainable weight; a frozen weight gets none (minilora.nn.model)
    optimizer state     AdamW's m and v, one pair per trainable weight (minilora.nn.optim)
    activations         what the forward pass keeps for the backward (its caches); LoRA runs the
                        backward through every layer, so it keeps all of them (and its thin u = x A^T)

Three ways to get the numbers, checked against each other in the tests:
    ``measure_step``    counts the real arrays of one step (parameters by ``model.trainable``, the
                        gradients, AdamW's state after one update, the distinct arrays in the caches)
    ``trace_step``      tracemalloc's peak during one forward + backward (NumPy reports its buffers to it)
    ``estimate``        the formula, from parameter counts and the model's shape: no model needed, so it
                        extrapolates to GPT-2 Large or a 7B model (``GPT_SHAPES``)

Variants plug in through ``ParamGroup``: a group is a number of parameters stored at some bit width,
trainable or not. QLoRA's 4-bit frozen base with its block constants, DoRA's trainable magnitude
vector, or a 16-bit base are groups; the formula for the rest does not change.

Shape letters: B batch, T time, C channels, NH heads, L layers, V vocabulary, N = B T tokens, r rank.
"""
from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

from minilora.experiments.footprint import cache_bytes      # one counting rule for both memory reports
from minilora.nn.loss import forward_loss, loss_and_grads
from minilora.nn.optim import AdamW

PARTS = ("frozen weights", "trainable weights", "gradients", "optimizer state", "activations")


# --------------------------------------------------------------------------- the formula
@dataclass(frozen=True)
class ParamGroup:
    """``count`` parameters stored at ``bits`` each; trainable ones also get a gradient and AdamW state."""
    name: str
    count: int
    bits: int = 32
    trainable: bool = False


def activation_bytes(*, B: int, T: int, C: int, L: int, NH: int, V: int, lora_u: int = 0, bits: int = 32) -> int:
    """Bytes minilora's GPT keeps for the backward pass of one language-model batch (B, T), with the
    textbook kernels (minilora.nn.kernels; the training loop's fast kernels keep about the same).

    Per block, N = B T rows, read off the forward caches (minilora.nn.model, layers, attention):
      C wide:   ln1 xhat, its output h (read by Wq, Wk, Wv), q, k, v (attention reads them by head),
                the merged heads (read by Wo), ln2 xhat, its output (read by fc): 8 N C
      4C wide:  fc output and GELU's tanh (read by GELU's backward), GELU output (read by proj): 12 N C
      the two layer norms' 1 / std: 2 N;  the attention weights: B NH T^2
    Outside the blocks: ln_f xhat and output 2 N C + N, log-probabilities N V and the loss weights N
    (the batch's own token ids and targets are input, not counted). ``lora_u``: the sum of r over the adapted matrices
    (each keeps u = x A^T, N r values).
    """
    N = B * T
    values = L * (N * (20 * C + 2) + B * NH * T * T) + N * (2 * C + 1) + N * V + N + N * lora_u
    return values * bits // 8


def estimate(groups, activations: int, *, grad_bits: int = 32, optimizer_bytes_per_param: int = 8) -> dict:
    """{part: bytes} for one training step from parameter groups and an activation size.

    Weights: each group at its own bit width. Gradients: grad_bits per trainable parameter. Optimizer:
    AdamW keeps m and v, 8 bytes per trainable parameter in float32. A frozen group costs its
    storage only: that is all LoRA changes.
    """
    frozen = sum(g.count * g.bits for g in groups if not g.trainable) // 8
    trainable = sum(g.count * g.bits for g in groups if g.trainable) // 8
    n_train = sum(g.count for g in groups if g.trainable)
    return {"frozen weights": frozen, "trainable weights": trainable, "gradients": n_train * grad_bits // 8,
            "optimizer state": n_train * optimizer_bytes_per_param, "activations": int(activations)}


# --------------------------------------------------------------------------- model shapes
# (L, C, NH, V, T): GPT-2 Large (Radford et al. 2019; 774M parameters) and a 7B model of GPT-2's
# form with LLaMA-7B's width, depth and vocabulary (Touvron et al. 2023; its SwiGLU MLP has nearly
# the same 8 C^2 weights per block as GPT-2's 4C MLP).
GPT_SHAPES = {"GPT-2 Large": (36, 1280, 20, 50257, 1024), "7B (LLaMA-7B shape)": (32, 4096, 32, 32000, 2048)}


def gpt_param_count(L: int, C: int, V: int, T: int) -> int:
    """Weights of a GPT-2-style model: per block 12 C^2 + 13 C (4 attention C x C with biases, the
    4C MLP with biases, two layer norms), the token and position embeddings and the final layer norm."""
    return L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C


def lora_groups(n_base: int, n_lora: int, *, base_bits: int = 32) -> list[ParamGroup]:
    """LoRA's groups: the frozen base at ``base_bits`` and the trainable A, B in float32."""
    return [ParamGroup("base", n_base, base_bits, False), ParamGroup("lora", n_lora, 32, True)]


def full_groups(n_base: int, *, bits: int = 32) -> list[ParamGroup]:
    return [ParamGroup("base", n_base, bits, True)]


def extrapolate(name: str, *, B: int = 1, r: int = 8, n_adapted_per_block: int = 2, bits: int = 32) -> dict:
    """Full fine-tuning and LoRA (r on ``n_adapted_per_block`` C x C matrices of every block) for a model
    of ``GPT_SHAPES``, at batch B of full-length sequences, everything stored at ``bits``.

    Returns {"full": {part: bytes}, "lora": {part: bytes}, "params", "lora_params", "saving"}; saving is
    1 - lora total / full total.
    """
    L, C, NH, V, T = GPT_SHAPES[name]
    n = gpt_param_count(L, C, V, T)
    n_lora = L * n_adapted_per_block * 2 * C * r
    act = activation_bytes(B=B, T=T, C=C, L=L, NH=NH, V=V, bits=bits)
    act_lora = activation_bytes(B=B, T=T, C=C, L=L, NH=NH, V=V, lora_u=L * n_adapted_per_block * r, bits=bits)
    full = estimate(full_groups(n, bits=bits), act, grad_bits=bits)
    lora = estimate(lora_groups(n, n_lora, base_bits=bits), act_lora, grad_bits=32)
    return {"full": full, "lora": lora, "params": n, "lora_params": n_lora,
            "saving": 1.0 - sum(lora.values()) / sum(full.values())}


# --------------------------------------------------------------------------- measured on a real step
def measure_step(model, batch: dict) -> dict:
    """{part: bytes} counted on one real training step of ``model`` on ``batch`` (backend arrays).

    Activations are the distinct arrays of the forward caches other than the parameters and the
    batch itself (the token ids are the input, held by whoever feeds the model).

    The model's weights are not changed: AdamW updates a copy of the trainable ones.
    """
    _, _, caches = forward_loss(model, batch, training=True)
    _, grads = loss_and_grads(model, batch)
    trainable = {k: v.copy() for k, v in model.params.items() if k in model.trainable}
    opt = AdamW(lr=0.0)
    opt.step(trainable, grads)
    nbytes = lambda names: sum(int(model.params[k].nbytes) for k in names)
    return {"frozen weights": nbytes(k for k in model.params if k not in model.trainable),
            "trainable weights": nbytes(model.trainable),
            "gradients": sum(int(g.nbytes) for g in grads.values()),
            "optimizer state": opt.state_bytes(),
            "activations": cache_bytes(caches, exclude=list(model.params.values()) + list(batch.values()))}


def trace_step(model, batch: dict) -> int:
    """Peak bytes NumPy allocated during one forward + backward (tracemalloc), with the weights
    already in place: activations, gradients and the temporaries of the backward pass."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    start, _ = tracemalloc.get_traced_memory()
    loss_and_grads(model, batch)
    _, peak = tracemalloc.get_traced_memory()
    if not was_tracing:
        tracemalloc.stop()
    return peak - start
