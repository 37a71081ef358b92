"""Where the memory of a training step goes: full fine-tuning, LoRA, QLoRA, DoRA and QDoRA, part by part.

A common misreading of LoRA and QLoRA is that the frozen model waits on the CPU while only the
adapters sit on the GPU. It does not: every frozen weight is read by every forward and every
backward product (dx = dy W0 flows through it to the adapters below), on the device that computes.
What LoRA removes is the frozen weights' gradients and optimizer state (Hu et al. 2021, §4.2);
what QLoRA removes on top is most of the frozen weights' own bytes: 4.127 bits instead of 16 or
32 per weight (Dettmers et al. 2023, §3). This module counts each part:

    frozen weights      read by every product, forward and backward; 4-bit codes and scales with QLoRA
    trainable weights   everything (full) or the adapters (A, B; DoRA's magnitudes m too)
    gradients           one per trainable weight
    optimizer state     AdamW's m and v in float32: 8 bytes per trainable weight
    activations         what the forward keeps for the backward (the caches; DoRA's layers keep
                        x V^T and the norm and factor per row on top of LoRA's x A^T)

``measure_step`` counts the real arrays of one training step; ``estimate`` gives the same parts
from the model's shape alone (tests/test_footprint.py checks the two agree byte for byte), so it
extrapolates to 7B and 65B models (``footprint_report.extrapolate``). A method is a way of
building the model (``build``) plus its terms in the formula: DoRA (Liu et al. 2024) and QDoRA
(DoRA on the 4-bit base) add a trainable magnitude per output row and their layers' own
activations; the float V = W0 + s B A is not among them (the "dora" kind does not keep it).

Shapes: B batch, T time, C channels, NH heads, L layers, V vocabulary, N = B T tokens, r rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minilora import fast
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import quantize_base
from minilora.adapters.quant_dq import storage_bits
from minilora.nn import backend
from minilora.nn.loss import forward_loss, loss_and_grads
from minilora.nn.model import BLOCK_LINEARS, GPT, SHORT_NAMES, GPTConfig
from minilora.nn.optim import AdamW

PARTS = ("frozen weights", "trainable weights", "gradients", "optimizer state", "activations")
METHODS = ("full", "lora", "qlora", "dora", "qdora")
# Each linear layer's input, who reads it and its width in units of C. A layer whose weight trains
# (full) or that carries an adapter keeps its input for the backward; minilora's plain frozen
# linear keeps it too (its forward does not know the weight is frozen), its 4-bit one does not.
INPUTS = {"ln1 out": (("attn.wq", "attn.wk", "attn.wv"), 1), "attention out": (("attn.wo",), 1),
          "ln2 out": (("mlp.fc",), 1), "GELU out": (("mlp.proj",), 4)}


# --------------------------------------------------------------------------- the model shape
@dataclass(frozen=True)
class Shape:
    """A GPT's size: L layers, C channels, NH heads, V vocabulary, T_max positions."""
    L: int
    C: int
    NH: int
    V: int
    T_max: int

    @classmethod
    def of(cls, config: GPTConfig) -> "Shape":
        return cls(config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.block_size)

    def matrices(self) -> dict[str, tuple[int, int]]:
        """(d_out, d_in) of each linear of one block, by its name under ``blocks.{i}.``."""
        C = self.C
        return {m: ((4 * C, C) if m == "mlp.fc" else (C, 4 * C) if m == "mlp.proj" else (C, C))
                for m in BLOCK_LINEARS}

    def params(self) -> int:
        """All weights: per block 12 C^2 + 13 C (six linears with biases, two layer norms), embeddings, ln_f."""
        C = self.C
        return self.L * (12 * C * C + 13 * C) + self.V * C + self.T_max * C + 2 * C


# --------------------------------------------------------------------------- the formula
def _targets(targets) -> tuple:
    return tuple(SHORT_NAMES.get(t, t) for t in targets)


def weight_parts(shape: Shape, method: str, *, r: int = 8, targets=("wq", "wv"), weight_bits: int = 32,
                 adapter_bits: int = 32, double_quant: bool = True, block_size: int = 64) -> dict:
    """{frozen, trainable, gradients, optimizer} in bytes for ``method`` on a model of ``shape``.

    weight_bits: the float weights (32 in minilora, 16 in the QLoRA paper's setting); adapter_bits:
    the adapters and their gradients; AdamW keeps m and v in float32 for every trainable weight.
    """
    mats = shape.matrices()
    n_all, n_lin = shape.params(), shape.L * sum(o * i for o, i in mats.values())
    adapted = [mats[m] for m in _targets(targets)] * shape.L
    n_adapter = sum(r * (o + i) for o, i in adapted) + (sum(o for o, _ in adapted) if "dora" in method else 0)
    if method == "full":
        return {"frozen weights": 0, "trainable weights": n_all * weight_bits // 8,
                "gradients": n_all * weight_bits // 8, "optimizer state": 8 * n_all}
    frozen = n_all * weight_bits // 8
    if method.startswith("q"):
        four_bit = shape.L * sum(storage_bits(o * i, block_size, double_quant) for o, i in mats.values()) // 8
        frozen = (n_all - n_lin) * weight_bits // 8 + four_bit
    return {"frozen weights": frozen, "trainable weights": n_adapter * adapter_bits // 8,
            "gradients": n_adapter * adapter_bits // 8, "optimizer state": 8 * n_adapter}


def activation_values(shape: Shape, method: str, *, B: int, T: int, r: int = 8, targets=("wq", "wv"),
                      checkpointing: bool = False) -> int:
    """Numbers the forward keeps for the backward of one language-model batch (B, T) (minilora's caches).

    Per block, N = B T rows (read off minilora.nn.model, the fast kernels and the linear kinds):
      21 N C: ln1 and ln2 keep x_hat (2 C), attention keeps q, k, v and its output (4 C) plus the
              heads' output (C), GELU keeps its input and tanh term (8 C), and the inputs of the six
              linears (INPUTS: ln1 out, attention out, ln2 out, GELU out = 7 C) are held by them
      2 N + B NH T^2: the two layer norms' 1 / std, the attention weights
      + N r per LoRA matrix (u = x A^T); on a 4-bit base an input no adapted layer reads is freed
      + N d_out + 2 d_out per DoRA matrix: z = x V^T (N, d_out) for dm, and C = ||V||, g = m / C
    Outside the blocks: ln_f keeps x_hat and its output (2 C + 1 per row), the loss N V + N.
    checkpointing: keep each block's input only (N C per block) and one block's activations,
    recomputed in the backward (what the QLoRA paper's runs do).
    """
    N, C, targets = B * T, shape.C, _targets(targets)
    block = N * (21 * C + 2) + B * shape.NH * T * T
    if method != "full":
        block += N * r * len(targets)
    if "dora" in method:                                     # dora_forward's cache: zv, C and g
        block += sum((N + 2) * shape.matrices()[m][0] for m in targets)
    if method.startswith("q"):
        block -= sum(N * width * C for readers, width in INPUTS.values() if not set(readers) & set(targets))
    outside = N * (2 * C + 2) + N * shape.V
    if checkpointing:
        return shape.L * N * C + block + outside
    return shape.L * block + outside


def estimate(shape: Shape, method: str, *, B: int, T: int, r: int = 8, targets=("wq", "wv"), weight_bits: int = 32,
             adapter_bits: int = 32, activation_bits: int = 32, checkpointing: bool = False) -> dict:
    """{part: bytes} for one training step of ``method`` (PARTS), from the shape alone."""
    parts = weight_parts(shape, method, r=r, targets=targets, weight_bits=weight_bits, adapter_bits=adapter_bits)
    acts = activation_values(shape, method, B=B, T=T, r=r, targets=targets, checkpointing=checkpointing)
    return {**parts, "activations": acts * activation_bits // 8}


# --------------------------------------------------------------------------- measured on a real step
def build(method: str, base: GPT, *, r: int = 8, targets=("wq", "wv"), seed: int = 0):
    """A trainable copy of ``base`` for ``method``: fully trainable, or LoRA / DoRA (on a 4-bit copy for the q- methods)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    model = GPT(base.config, {k: v.copy() for k, v in base.params.items()})
    if method == "full":
        model.unfreeze()
        return model
    if method.startswith("q"):
        quantize_base(model, "nf4", double_quant=True)
    return LoraModel(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=tuple(targets), seed=seed,
                                       use_dora="dora" in method))


def _root(a):
    """The array that owns the memory a view looks at."""
    while backend.is_array(getattr(a, "base", None)):
        a = a.base
    return a


def cache_bytes(cache, exclude=()) -> int:
    """Bytes of the distinct arrays in a nested cache (a view counts as its owner, once), leaving out
    ``exclude`` (the parameters and the batch). A 4-bit weight held in a cache refers to parameters only."""
    skip = {id(_root(a)) for a in exclude}
    seen, stack = {}, [cache]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif backend.is_array(item) and id(_root(item)) not in skip:
            seen[id(_root(item))] = int(_root(item).nbytes)
    return sum(seen.values())


def measure_step(model, batch: dict) -> dict:
    """{part: bytes} counted on one training step of ``model`` on a language-model ``batch`` (PARTS).

    With the fast kernels, as the training loop runs. The model is not changed: AdamW updates
    copies of the trainable weights.
    """
    with fast.use_kernels(model):
        _, _, caches = forward_loss(model, batch, training=True)
        activations = cache_bytes(caches, exclude=list(model.params.values()) + list(batch.values()))
        del caches
        _, grads = loss_and_grads(model, batch)
    opt = AdamW(lr=0.0)
    opt.step({k: model.params[k].copy() for k in grads}, grads)
    nbytes = lambda names: sum(int(model.params[k].nbytes) for k in names)  # noqa: E731
    return {"frozen weights": nbytes(k for k in model.params if k not in model.trainable),
            "trainable weights": nbytes(model.trainable), "gradients": sum(int(g.nbytes) for g in grads.values()),
            "optimizer state": opt.state_bytes(), "activations": activations}


def lm_batch(config: GPTConfig, B: int, T: int, seed: int = 0) -> dict:
    """A random language-model batch on the backend: x, y (B, T) token ids, mask (B, T) all ones."""
    rng = np.random.default_rng(seed)
    batch = {"x": rng.integers(0, config.vocab_size, (B, T)), "y": rng.integers(0, config.vocab_size, (B, T)),
             "mask": np.ones((B, T), dtype=np.float32)}
    return {k: backend.asarray(v) for k, v in batch.items()}
