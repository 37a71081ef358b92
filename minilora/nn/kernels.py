"""The set of layer functions the model calls for everything but its linear layers.

``GPT.kernels`` names them: layer norm, GELU, attention and the loss. By default they are the
textbook forms of ``minilora.nn.layers`` and ``minilora.nn.attention``; ``minilora.fast`` offers a
set with the same numbers and less memory traffic, which the training loop switches on. A
forward and its backward always come from the same set, since their caches must match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from minilora.nn import attention, layers


@dataclass(frozen=True)
class Kernels:
    """Forward/backward pairs the model and the loss use (linear layers go through the registry)."""
    name: str
    layernorm_forward: Callable
    layernorm_backward: Callable
    gelu_forward: Callable
    gelu_backward: Callable
    attention_forward: Callable
    attention_backward: Callable
    cross_entropy_forward: Callable = layers.cross_entropy_forward
    cross_entropy_backward: Callable = layers.cross_entropy_backward


TEXTBOOK = Kernels("textbook", layers.layernorm_forward, layers.layernorm_backward, layers.gelu_forward,
                   layers.gelu_backward, attention.attention_forward, attention.attention_backward)
