"""minilora's GPT against an independent PyTorch implementation (benchmarks/torch_gpt.py).

Same weights, float64: the logits, the masked loss and the gradient of every trainable parameter
must agree to rounding. Skipped where PyTorch is not installed (it is never a dependency).
Relative error = max |a - b| / max |b|; two float64 computations of the same sums in a different
order differ by about 1e-15 per operation, so 1e-10 leaves ample room and still catches any
wrong term (a wrong gradient is off by O(1)).

One gradient is exactly zero in exact arithmetic: the key bias. It adds q_i . b_k to every score
of query row i, the same number for every key j, and softmax ignores a constant shift of its row.
Both implementations return rounding noise (~1e-17) there, and noise over noise is no relative
error, so the key bias is compared on the scale of the whole gradient instead (see ``scale_of``).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_gpt  # noqa: E402  (needs the sys.path entry above)

from minilora.nn.layers import cross_entropy_backward, cross_entropy_forward  # noqa: E402
from minilora.nn.model import GPT, GPTConfig  # noqa: E402

CONFIG = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
TOL = 1e-10


def make_models(seed=0):
    """A float64 minilora GPT with random biases and LayerNorm gains, and its PyTorch twin."""
    model = GPT(CONFIG, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    # Zero biases and unit gains could hide a wrong gradient: perturb every 1-d parameter.
    for p in model.params.values():
        if p.ndim == 1:
            p += 0.1 * rng.standard_normal(p.shape)
    return model, torch_gpt.from_minilora_params(CONFIG, model.params)


def make_batch(seed=0, B=3, T=7):
    """x, y (B, T) token ids and a 0/1 float mask (B, T) that keeps about 60% of the positions."""
    rng = np.random.default_rng(seed + 2)
    x = rng.integers(0, CONFIG.vocab_size, (B, T))
    y = rng.integers(0, CONFIG.vocab_size, (B, T))
    mask = (rng.random((B, T)) < 0.6).astype(np.float64)
    mask[0, 0] = 1.0                                        # at least one position counts
    return x, y, mask


def rel_error(received, expected, scale=None) -> float:
    """max |received - expected| / scale, where scale defaults to max |expected|."""
    scale = float(np.max(np.abs(expected))) if scale is None else scale
    return float(np.max(np.abs(received - expected)) / max(scale, 1e-300))


def scale_of(name, expected: dict):
    """None (relative to the parameter itself), or for a key bias the largest gradient entry of all."""
    if name.endswith("attn.wk.bias"):  # zero in exact arithmetic (module docstring)
        return max(float(np.max(np.abs(g))) for g in expected.values())
    return None


def minilora_loss_and_grads(model, x, y, mask):
    """(logits (B, T, V), loss, grads {name: array}) from minilora's hand-written backward."""
    logits, cache = model.forward(x)
    loss, ce_cache = cross_entropy_forward(logits, y, mask)
    return logits, loss, model.backward(cross_entropy_backward(ce_cache), cache)


def torch_loss_and_grads(tmodel, x, y, mask):
    """(logits (B, T, V), loss, grads {name: array}) from PyTorch autograd; frozen names have none."""
    logits = tmodel(torch.from_numpy(x))
    loss = torch_gpt.masked_cross_entropy(logits, torch.from_numpy(y), torch.from_numpy(mask))
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in tmodel.named_parameters() if p.grad is not None}
    return logits.detach().numpy(), loss.item(), grads


# --------------------------------------------------------------------------- forward
def test_torch_twin_has_exactly_minilora_parameter_names_and_shapes():
    """named_parameters() of the PyTorch model lists minilora's names with the same shapes."""
    model, tmodel = make_models()
    expected = {k: tuple(v.shape) for k, v in model.params.items()}
    received = {k: tuple(p.shape) for k, p in tmodel.named_parameters()}
    assert received == expected, f"expected {expected}, received {received}"


def test_same_weights_give_the_same_logits():
    """Forward logits agree with PyTorch's to relative error < 1e-10 (float64)."""
    model, tmodel = make_models()
    x, _, _ = make_batch()
    expected = tmodel(torch.from_numpy(x)).detach().numpy()
    received, _ = model.forward(x)
    err = rel_error(received, expected)
    assert err < TOL, f"logits: expected relative error < {TOL}, received {err:.2e}"


def test_same_weights_give_the_same_masked_loss():
    """The masked mean cross-entropy equals PyTorch's to relative error < 1e-10."""
    model, tmodel = make_models()
    x, y, mask = make_batch()
    _, received, _ = minilora_loss_and_grads(model, x, y, mask)
    _, expected, _ = torch_loss_and_grads(tmodel, x, y, mask)
    assert abs(received - expected) < TOL * abs(expected), f"loss: expected {expected!r}, received {received!r}"


# --------------------------------------------------------------------------- backward
def test_every_parameter_gradient_matches_torch_autograd():
    """With everything trainable, minilora's backward equals autograd for every parameter."""
    model, tmodel = make_models()
    x, y, mask = make_batch()
    _, _, grads = minilora_loss_and_grads(model, x, y, mask)
    _, _, expected = torch_loss_and_grads(tmodel, x, y, mask)
    assert set(grads) == set(expected), (f"gradient names: expected {sorted(expected)}, "
                                         f"received {sorted(grads)}")
    errors = {name: rel_error(grads[name], expected[name], scale_of(name, expected)) for name in expected}
    bad = {name: f"{e:.2e}" for name, e in errors.items() if not e < TOL}
    assert not bad, f"expected relative error < {TOL} for every parameter, received {bad}"


def test_frozen_subset_gets_no_gradient_and_the_rest_match_torch():
    """Freezing some parameters: minilora returns grads for trainable names only, equal to torch's."""
    model, tmodel = make_models(seed=3)
    frozen = {n for n in model.params
              if n.startswith(("wte.", "wpe.", "blocks.0.")) or n.endswith(("attn.wk.weight", "mlp.fc.bias"))}
    model.freeze(frozen)
    for name, p in tmodel.named_parameters():
        p.requires_grad_(name not in frozen)
    x, y, mask = make_batch(seed=3)
    _, _, grads = minilora_loss_and_grads(model, x, y, mask)
    _, _, expected = torch_loss_and_grads(tmodel, x, y, mask)
    trainable = set(model.params) - frozen
    assert set(grads) == trainable, (f"gradient names: expected the {len(trainable)} trainable names, "
                                     f"received extra {sorted(set(grads) - trainable)}, "
                                     f"missing {sorted(trainable - set(grads))}")
    assert set(expected) == trainable, f"torch grads: expected {sorted(trainable)}, received {sorted(expected)}"
    errors = {n: rel_error(grads[n], expected[n], scale_of(n, expected)) for n in trainable}
    bad = {n: f"{e:.2e}" for n, e in errors.items() if not e < TOL}
    assert not bad, f"expected relative error < {TOL} for every trainable parameter, received {bad}"


def test_key_bias_gradient_is_zero_in_both_implementations():
    """Softmax ignores a constant shift per query row, so dL/d(key bias) is rounding noise only."""
    model, tmodel = make_models()
    x, y, mask = make_batch()
    _, _, grads = minilora_loss_and_grads(model, x, y, mask)
    _, _, expected = torch_loss_and_grads(tmodel, x, y, mask)
    scale = max(float(np.max(np.abs(g))) for g in expected.values())
    for name in (n for n in grads if n.endswith("attn.wk.bias")):
        for who, g in (("minilora", grads[name]), ("torch", expected[name])):
            size = float(np.max(np.abs(g))) / scale
            assert size < TOL, f"{who} {name}: expected |grad| / max|grad| < {TOL}, received {size:.2e}"
