"""Small builders shared by the spec tests (not tests themselves)."""
import numpy as np

from minilora.model import GPT, GPTConfig

# The base model of the LoRA specs: small enough for central differences on every parameter.
TINY_LORA_BASE = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_float64_base(seed=0, dtype=np.float64):
    """A GPT of TINY_LORA_BASE in float64 (gradient checks need the precision)."""
    return GPT(TINY_LORA_BASE, seed=seed, dtype=dtype)


def lm_batch(rng, B=3, T=6, V=13):
    """A random language-model batch: x, y (B, T) token ids in [0, V), mask (B, T) of ones."""
    return {"x": rng.integers(0, V, (B, T)), "y": rng.integers(0, V, (B, T)), "mask": np.ones((B, T))}


def randomize(model, marker, rng, scale=0.1):
    """Give every parameter whose name contains ``marker`` random values, in place.

    A zero-initialised factor (LoRA's B, an adapter's W_up) makes the gradient of its partner
    zero by the math, so a wrong backward for that partner would pass any check.
    """
    for name, value in model.params.items():
        if marker in name:
            value[...] = scale * rng.standard_normal(value.shape)
