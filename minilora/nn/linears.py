"""Linear layers described by data: a small registry of forward/backward pairs.

Every linear layer of the model (the twelve matrices of each block, the tied LM head, a
classification head) is a ``LinearSpec``: which *kind* of layer it is, and which tensors of
``model.params`` it reads, by role. The model looks the kind up in ``REGISTRY`` and calls its pair:

    spec = LinearSpec("linear", {"weight": "blocks.0.attn.wq.weight", "bias": "blocks.0.attn.wq.bias"})
    spec = LinearSpec("lora",   {"weight": ..., "bias": ..., "lora_A": "blocks.0.attn.wq.lora_A.default",
                                 "lora_B": "blocks.0.attn.wq.lora_B.default"}, {"scale": 2.0, "dropout": 0.0})

A kind's ``forward(x, t, *, training, rng, **options) -> (y, cache)`` receives ``t``, the arrays by
role, and the spec's options (plain numbers such as LoRA's scale); ``backward(dy, cache, needs) ->
(dx, grads)`` returns the input gradient and a gradient for each role in ``needs`` (the roles whose
tensors are trainable) and no other. So the model knows nothing about LoRA or adapters: an adapter
library changes a layer by giving it another spec, and adds a kind by registering a pair.

Kinds that can be folded into one plain weight (LoRA: W = W0 + s B A) also give ``merge(t,
**options) -> (W, state)`` and ``unmerge(W, t, state, **options) -> W0``; ``state`` is whatever the
unmerge needs that the tensors do not hold (None for LoRA).

Adding a variant touches: its pure forward/backward pair, one ``register(LinearKind(...))`` call,
and its tests (docs/adding_a_variant.md).

Shapes: B batch, T time, d_in and d_out the layer's widths, N = B*T rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from minilora.nn.layers import linear_backward, linear_forward


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer as data: its kind, the parameter name of each tensor it reads, its options."""
    kind: str = "linear"
    tensors: dict = field(default_factory=dict)    # role -> name in model.params, e.g. {"weight": "wte.weight"}
    options: dict = field(default_factory=dict)    # plain numbers the kind's pair takes, e.g. {"scale": 2.0}


def _never(options) -> bool:
    return False


@dataclass(frozen=True)
class LinearKind:
    """How one kind of linear layer computes: its roles and its forward/backward pair."""
    name: str
    roles: tuple                     # the roles it reads; a spec may leave out the optional "bias"
    forward: Callable                # forward(x, t, *, training, rng, **options) -> (y, cache)
    backward: Callable               # backward(dy, cache, needs) -> (dx, {role: grad for role in needs})
    merge: Callable | None = None    # merge(t, **options) -> (W, state); None: cannot be merged
    unmerge: Callable | None = None  # unmerge(W, t, state, **options) -> W0
    stochastic: Callable = _never    # stochastic(options) -> True if a training forward draws random numbers


REGISTRY: dict[str, LinearKind] = {}


def register(kind: LinearKind) -> LinearKind:
    """Add ``kind`` to the registry (a kind registered twice under one name is a bug)."""
    if kind.name in REGISTRY and REGISTRY[kind.name] is not kind:
        raise ValueError(f"a linear kind named {kind.name!r} is registered already")
    REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> LinearKind:
    """The registered kind called ``name``; a clear error naming the registered ones otherwise."""
    if name not in REGISTRY:
        raise KeyError(f"no linear kind {name!r} is registered; registered kinds are {sorted(REGISTRY)}. "
                       f"Import the module that registers it (e.g. minilora.adapters.lora)")
    return REGISTRY[name]


def plain(name: str, *, bias: bool = True) -> LinearSpec:
    """The spec of an ordinary linear layer ``name`` reading ``name.weight`` (and ``name.bias``)."""
    tensors = {"weight": f"{name}.weight"}
    if bias:
        tensors["bias"] = f"{name}.bias"
    return LinearSpec("linear", tensors)


# --------------------------------------------------------------------------- the plain kind
def _bias_grad(dy):
    """db (d_out,): the bias was broadcast over all N rows, so its gradient is their sum."""
    return dy.reshape(-1, dy.shape[-1]).sum(axis=0)


def _plain_forward(x, t, *, training=False, rng=None):
    """y = x W^T + b (minilora.nn.layers.linear_forward)."""
    return linear_forward(x, t["weight"], t.get("bias"))


def _plain_backward(dy, cache, needs):
    """dx always; dW only when the weight trains (the product LoRA saves), db when the bias trains."""
    dx, dW, db = linear_backward(dy, cache, weight_grad="weight" in needs)
    grads = {"weight": dW} if "weight" in needs else {}
    if "bias" in needs:
        grads["bias"] = db if db is not None else _bias_grad(dy)
    return dx, grads


PLAIN = register(LinearKind("linear", ("weight", "bias"), _plain_forward, _plain_backward))
