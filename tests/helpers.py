"""Small builders shared by the spec tests (not tests themselves)."""
import numpy as np

from minilora.experiments import sweeps
from minilora.data.tasks import default_tokenizer
from minilora.nn.gradcheck import check_gradient
from minilora.nn.layers import cross_entropy_forward
from minilora.nn.loss import loss_and_grads
from minilora.nn.model import GPT, GPTConfig

# The base model of the LoRA specs: small enough for central differences on every parameter.
TINY_LORA_BASE = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_float64_base(seed=0, dtype=np.float64):
    """A GPT of TINY_LORA_BASE in float64 (gradient checks need the precision)."""
    return GPT(TINY_LORA_BASE, seed=seed, dtype=dtype)


def lm_batch(rng, B=3, T=6, V=13):
    """A random language-model batch: x, y (B, T) token ids in [0, V), mask (B, T) of ones."""
    return {"x": rng.integers(0, V, (B, T)), "y": rng.integers(0, V, (B, T)), "mask": np.ones((B, T))}


def check_model_gradients(model, batch, names=None, **check):
    """Every gradient ``loss_and_grads`` returns (or those of ``names``) agrees with central
    differences of the whole model's masked loss; without ``names`` the gradient keys must also be
    exactly the trainable set. ``check``: options of minilora.nn.gradcheck.check_gradient
    (max_entries, atol, ...). Returns the gradients."""
    _, grads = loss_and_grads(model, batch)

    def loss():
        return cross_entropy_forward(model.forward(batch["x"])[0], batch["y"], batch["mask"])[0]

    if names is None:
        assert set(grads) == model.trainable, (f"gradients for {sorted(grads)[:6]}, trainable "
                                               f"{sorted(model.trainable)[:6]} (differ: {sorted(set(grads) ^ model.trainable)})")
        names = sorted(grads)
    for name in names:
        check_gradient(loss, model.params[name], grads[name], name=name, **check)
    return grads


def randomize(model, marker, rng, scale=0.1):
    """Give every parameter whose name contains ``marker`` random values, in place.

    A zero-initialised factor (LoRA's B, an adapter's W_up) makes the gradient of its partner
    zero by the math, so a wrong backward for that partner would pass any check.
    """
    for name, value in model.params.items():
        if marker in name:
            value[...] = scale * rng.standard_normal(value.shape)


# The tiny GPT of the sweep specs: layers and width (tests/conftest.py builds it as ``tiny_base``).
SWEEP_L, SWEEP_C = 2, 16


def tiny_task_base(n_layer, n_embd):
    """A random tiny GPT with the task tokenizer's vocabulary and the shipped block size."""
    return GPT(GPTConfig(vocab_size=default_tokenizer().vocab_size, block_size=24, n_layer=n_layer, n_head=2,
                         n_embd=n_embd), seed=0)


def tiny_lab(base):
    """A Lab with 3 steps per run on 64 training examples (shared by the tests: runs are cached)."""
    cfg = sweeps.SweepConfig(task="shift", steps=3, batch_size=8, n_train=64, n_test=32, warmup_steps=1,
                             ranks=(1, 2, 8), target_sets=(("wq",), ("wq", "wv")), budget_rank=8, progress=False)
    return sweeps.Lab(cfg, base=base)


def adapted_model_and_base_logits(wrap, zero_factor: str, rng, *, T: int = 6):
    """(wrap(base), idx, the base's logits on idx) for a tiny float64 base and random tokens idx.

    The wrapped model's zero-initialised factor (``zero_factor``, e.g. ".lora_B.") is randomised,
    so the adapter really changes the output and "equals the base" cannot pass by accident.
    """
    base = tiny_float64_base()
    idx = rng.integers(0, TINY_LORA_BASE.vocab_size, (2, T))
    reference, _ = base.forward(idx)
    wrapped = wrap(base)
    randomize(wrapped, zero_factor, rng)
    return wrapped, idx, reference
