"""The optimised forms of ``minilora.nn``: the same numbers, computed faster on a CPU.

  * ``kernels``, ``attention``: layer norm, GELU and attention with in-place arithmetic and BLAS
    row sums (``FAST``, a ``minilora.nn.kernels.Kernels`` set), tested equal to the textbook layers;
  * ``parallel``: worker threads that share each training batch (data parallelism across cores);
  * ``memory``: glibc keeps freed activation buffers for reuse instead of page-faulting them back.

Nothing here changes a result beyond float rounding (tests/test_fast.py). The training loop
switches these on (``TrainConfig.fast``); everything else runs the textbook code.
"""
from __future__ import annotations

import contextlib

from minilora.fast import attention, kernels
from minilora.nn import layers
from minilora.nn.kernels import Kernels

FAST = Kernels("fast", kernels.layernorm_forward, kernels.layernorm_backward, kernels.gelu_forward,
               kernels.gelu_backward, attention.attention_forward, attention.attention_backward,
               layers.cross_entropy_forward, layers.cross_entropy_backward)


@contextlib.contextmanager
def use_kernels(model, chosen: Kernels = FAST):
    """Inside the block ``model`` computes with ``chosen`` (default: FAST); its own set comes back after."""
    before = model.kernels
    model.kernels = chosen
    try:
        yield model
    finally:
        model.kernels = before
