"""Specification of the linear-layer registry: layers as data, kinds as forward/backward pairs."""
import numpy as np
import pytest

from minilora.nn.gradcheck import check_gradient
from minilora.nn.layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from minilora.nn.linears import REGISTRY, LinearKind, LinearSpec, get_kind, plain, register
from minilora.nn.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def test_plain_kind_returns_gradients_only_for_the_roles_asked_for(rng):
    """The "linear" kind's backward gives dx always, and dW / db only for the roles in ``needs``."""
    x, W, b, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5), \
        rng.standard_normal((2, 3, 5))
    kind = get_kind("linear")
    _, cache = kind.forward(x, {"weight": W, "bias": b})
    for needs in (frozenset(), {"weight"}, {"bias"}, {"weight", "bias"}):
        dx, grads = kind.backward(dy, cache, frozenset(needs))
        assert set(grads) == set(needs), f"asked for {sorted(needs)}, got {sorted(grads)}"
        assert np.allclose(dx, dy @ W)
    _, grads = kind.backward(dy, cache, frozenset({"bias"}))
    assert np.allclose(grads["bias"], dy.sum(axis=(0, 1)))


def test_an_unknown_kind_is_a_clear_error():
    """A spec naming an unregistered kind says which kinds exist."""
    with pytest.raises(KeyError, match="no linear kind 'nope' is registered"):
        get_kind("nope")


def test_registering_a_second_kind_under_a_taken_name_is_refused():
    """Two pairs under one name would make specs ambiguous."""
    other = LinearKind("linear", ("weight",), lambda *a, **k: None, lambda *a, **k: None)
    with pytest.raises(ValueError, match="registered already"):
        register(other)


# A new kind, written the way docs/adding_a_variant.md says: a pure pair and one register call.
def _scaled_forward(x, t, *, c, training=False, rng=None):
    y, cache = linear_forward(x, t["weight"], t.get("bias"))
    return c * y, (cache, c)


def _scaled_backward(dy, cache, needs):
    lin_cache, c = cache
    dx, dW, db = linear_backward(c * dy, lin_cache)
    return dx, {k: v for k, v in {"weight": dW, "bias": db}.items() if k in needs}


def test_a_new_kind_is_a_pair_and_a_registry_entry_and_the_model_runs_it(rng):
    """A kind registered from outside the model changes a layer when a spec names it, gradients included."""
    if "test_scaled" not in REGISTRY:
        register(LinearKind("test_scaled", ("weight", "bias"), _scaled_forward, _scaled_backward))
    model = GPT(TINY, seed=0, dtype=np.float64)
    for name, p in model.params.items():      # O(1) weights: no gradient small enough to pass on rounding alone
        p[...] = (1.0 if name.endswith("ln1.weight") or "ln2.weight" in name or name == "ln_f.weight" else 0.0) \
            + 0.3 * rng.standard_normal(p.shape)
    idx = rng.integers(0, 11, (2, 5))
    before, _ = model.forward(idx)
    spec = plain("blocks.0.mlp.fc")
    model.linears["blocks.0.mlp.fc"] = LinearSpec("test_scaled", spec.tensors, {"c": 1.5})
    after, cache = model.forward(idx)
    assert not np.allclose(before, after), "the new kind must change the output"

    def loss():
        return cross_entropy_forward(model.forward(idx)[0], idx)[0]

    grads = model.backward(cross_entropy_backward(cross_entropy_forward(after, idx)[1]), cache)
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.mlp.fc.bias", "blocks.0.attn.wq.weight"):
        check_gradient(loss, model.params[name], grads[name], name=name, max_entries=20, atol=0.0)
