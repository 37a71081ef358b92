"""Bottleneck adapters: the baseline that LoRA is measured against (Hu et al. 2021, §3, §5.1, Table 1).

An adapter (Houlsby et al. 2019) is a small residual MLP inserted after a sublayer's output:

    z = y + up(GELU(down(y))) = y + GELU(y W_down^T + b_down) W_up^T + b_up

    y (B, T, C)       output of a frozen linear layer (attn.wo or mlp.proj)
    W_down (m, C)     down-projection to the bottleneck, b_down (m,)
    W_up (C, m)       up-projection back to the residual width, b_up (C,)

Shape letters: B batch, T time, C channels, m bottleneck size (m << C), N = B*T rows.
Weights are stored (d_out, d_in) and applied as x @ W.T, like every layer of minilora.

Unlike LoRA's B A, the adapter is not linear (the GELU sits between the two projections), so it
cannot be merged into W0: at inference it always runs, after the layer it follows and before the
next one. That is the extra sequential depth that Table 1 of the LoRA paper measures.

Variants (``AdapterConfig.variant``), as the LoRA paper names them in §5.1:
  * "houlsby" (AdapterH): two adapters per block, one after the attention output projection
    attn.wo and one after the MLP output projection mlp.proj, each before the residual add.
    That is Houlsby et al.'s placement.
  * "lin" (AdapterL): one adapter per block, after mlp.proj, before the residual add.
    Lin et al. 2020 put one adapter at the end of each block and normalise its input with its own
    LayerNorm, with ReLU (their Adapter(H) = H + ReLU(LN(H) W_E) W_D); minilora keeps the
    same count and position in depth (one adapter after the MLP) but uses the same layer as
    AdapterH: no LayerNorm inside, GELU. The latency comparison is unchanged by this (a LayerNorm
    is elementwise work; the two thin products and the extra sequential step are the same).

Initialisation: W_down ~ N(0, init_std^2) (0.02 by default, GPT-2's weight scale), b_down = 0,
W_up = 0, b_up = 0. Houlsby et al. start "near identity" with small random weights on both
projections; minilora sets W_up = 0 so that the adapted model equals the base model exactly at
init, as LoRA does with B = 0 (§4.1). The consequence is the same as LoRA's: at step 0 the
gradient reaching W_down is zero (du = dz W_up = 0), so only W_up and b_up move first.

What trains: the adapters only (plus ``modules_to_save``, e.g. a classification head). Houlsby
et al. also train the LayerNorm parameters; minilora keeps them frozen, so every trainable
parameter sits in an adapter and the count is exactly L * n_adapters * (2 C m + m + C).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from minilora.adapters.adapted import AdaptedModel, AdapterParts
from minilora import checks
from minilora.adapters.files import ENVELOPE, register_config
from minilora.adapters.qlinear import frozen_weight, hold_4bit, refuse_training_the_4bit_weight, reload_4bit
from minilora.nn import backend
from minilora.nn.layers import gelu_backward, gelu_forward, linear_backward, linear_forward
from minilora.nn.linears import LinearKind, LinearSpec, register
from minilora.nn.model import GPT, GPTConfig

# variant -> the linear layers (under ``blocks.{i}.``) whose output each adapter follows
VARIANTS = {"houlsby": ("attn.wo", "mlp.proj"), "lin": ("mlp.proj",)}
# file keys of one adapter's tensors, under ``{module}.``, and the roles its layer reads them as
ADAPTER_KEYS = ("adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias")
ADAPTER_ROLES = ("down_weight", "down_bias", "up_weight", "up_bias")


# --------------------------------------------------------------------------- the layer
def adapter_forward(y, W_down, b_down, W_up, b_up):
    """z = y + GELU(y W_down^T + b_down) W_up^T + b_up (Houlsby et al. 2019, Fig. 2).

    y (B, T, C), W_down (m, C), b_down (m,), W_up (C, m), b_up (C,)  ->  z (B, T, C);
    cache = (c_down, c_gelu, c_up): the caches of the three layers, in forward order.
    """
    h, c_down = linear_forward(y, W_down, b_down)        # (B, T, m): into the bottleneck
    g, c_gelu = gelu_forward(h)                          # (B, T, m)
    u, c_up = linear_forward(g, W_up, b_up)              # (B, T, C): back to the residual width
    return y + u, (c_down, c_gelu, c_up)                 # the adapter's own skip connection


def adapter_backward(dz, cache):
    """dz (B, T, C) -> dy (B, T, C), dW_down (m, C), db_down (m,), dW_up (C, m), db_up (C,).

    The forward read upside down; y feeds both the skip and the bottleneck, so dy is the sum.
    """
    c_down, c_gelu, c_up = cache
    dg, dW_up, db_up = linear_backward(dz, c_up)         # forward: u = g W_up^T + b_up
    dh = gelu_backward(dg, c_gelu)                       # forward: g = GELU(h)
    dy, dW_down, db_down = linear_backward(dh, c_down)   # forward: h = y W_down^T + b_down
    dy += dz                                             # forward: z = y + u (fan-out of y)
    return dy, dW_down, db_down, dW_up, db_up


def init_adapter(C: int, m: int, *, std: float = 0.02, rng=None, dtype=None) -> dict:
    """One adapter's weights, keyed like ADAPTER_KEYS: W_down ~ N(0, std^2), everything else 0.

    W_up = 0 and b_up = 0 make the adapter the identity at init (z = y exactly).
    """
    rng = rng if rng is not None else backend.rng(0)
    values = (rng.normal(0.0, std, (m, C)), np.zeros(m), np.zeros((C, m)), np.zeros(C))
    return {k: backend.asarray(v, dtype=dtype or backend.default_dtype()) for k, v in zip(ADAPTER_KEYS, values)}


# --------------------------------------------------------------------------- the registry entry
def _bottleneck_linear_forward(x, t, *, training=False, rng=None, **quant):
    """The "bottleneck" kind: the frozen linear layer, then its adapter. x (B, T, d_in) -> z (B, T, C).

    cache = (the frozen linear's cache, the adapter's cache). On a 4-bit base (``quant``: the spec's
    quantization options, ``minilora.adapters.qlinear``) W0 is dequantized for the product and the
    cache keeps the 4-bit weight.
    """
    W0 = frozen_weight(x.dtype, t, quant)                    # (d_out, d_in)
    y, c_lin = linear_forward(x, W0, t.get("bias"))
    z, c_ad = adapter_forward(y, t["down_weight"], t["down_bias"], t["up_weight"], t["up_bias"])
    return z, (hold_4bit(c_lin, W0, t, quant), c_ad)


def _bottleneck_linear_backward(dz, cache, needs):
    """dz (B, T, C) -> dx (B, T, d_in) and the adapter's gradients (the layer it follows stays frozen)."""
    if "weight" in needs or "bias" in needs:
        raise RuntimeError("the layer an adapter follows stays frozen (its backward computes no dW0 or db0); "
                           "freeze it again, or unload() the adapters and train the plain model")
    refuse_training_the_4bit_weight(needs, "bottleneck")
    c_lin, c_ad = cache
    dy, *dparams = adapter_backward(dz, c_ad)                # forward: z = adapter(y)
    grads = dict(zip(("down_weight", "down_bias", "up_weight", "up_bias"), dparams))
    dx, _, _ = linear_backward(dy, reload_4bit(c_lin), weight_grad=False)  # forward: y = x W0^T + b0
    return dx, {role: g for role, g in grads.items() if role in needs}


BOTTLENECK = register(LinearKind("bottleneck", ("weight", "bias", "down_weight", "down_bias", "up_weight",
                                                "up_bias"), _bottleneck_linear_forward, _bottleneck_linear_backward))


# --------------------------------------------------------------------------- configuration
@register_config
@dataclass
class AdapterConfig:
    """Bottleneck adapters after attn.wo and/or mlp.proj of every block."""
    peft_type: ClassVar[str] = "BOTTLENECK"

    variant: str = "houlsby"          # "houlsby" (AdapterH, after attn.wo and mlp.proj) or "lin" (AdapterL, after mlp.proj)
    bottleneck: int = 8               # m: width of the bottleneck, m << C
    init_std: float = 0.02            # W_down ~ N(0, init_std^2); W_up = 0, so the model starts equal to the base
    modules_to_save: tuple = ()       # also trained fully, e.g. ("head",) after add_classification_head
    seed: int = 0                     # initialisation of W_down

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown adapter variant {self.variant!r}; choose one of {sorted(VARIANTS)} "
                             f"('houlsby' = AdapterH, two per block; 'lin' = AdapterL, one per block)")
        self.bottleneck = checks.integer("bottleneck size m", self.bottleneck, minimum=1)
        self.init_std = checks.number("AdapterConfig.init_std", self.init_std, above=0)
        self.seed = checks.integer("AdapterConfig.seed", self.seed, minimum=0)
        self.modules_to_save = tuple([self.modules_to_save] if isinstance(self.modules_to_save, str)
                                     else self.modules_to_save)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        """From ``to_dict``'s dict or a whole adapter_config.json: every field required, none unknown."""
        return checks.from_fields(cls, d, "AdapterConfig.from_dict", envelope=ENVELOPE)

    def build(self, model: GPT, base_linears: dict) -> AdapterParts:
        """An adapter (W_up = 0: the identity at init) after every module of the variant."""
        rng = backend.rng(self.seed)
        tensors, specs = {}, {}
        for name in adapter_modules(model.config, self):
            init = init_adapter(model.config.n_embd, self.bottleneck, std=self.init_std, rng=rng, dtype=model.dtype)
            keys = {role: f"{name}.{key}" for role, key in zip(ADAPTER_ROLES, ADAPTER_KEYS)}
            tensors.update({keys[role]: init[key] for role, key in zip(ADAPTER_ROLES, ADAPTER_KEYS)})
            base = base_linears[name]                         # a 4-bit base's options say how to dequantize W0
            specs[name] = LinearSpec("bottleneck", {**base.tensors, **keys}, dict(base.options))
        return AdapterParts(tensors, specs)                   # modules_to_save: the host adds those


def adapter_modules(config: GPTConfig, adapter_config: AdapterConfig) -> list[str]:
    """The linear layers an adapter follows, e.g. ['blocks.0.attn.wo', 'blocks.0.mlp.proj', ...]."""
    return [f"blocks.{i}.{k}" for i in range(config.n_layer) for k in VARIANTS[adapter_config.variant]]


def expected_trainable_count(adapter_config: AdapterConfig, n_layer: int, d_model: int) -> int:
    """L * (adapters per block) * (2 C m + m + C): two C x m matrices and two bias vectors each."""
    C, m = d_model, adapter_config.bottleneck
    return n_layer * len(VARIANTS[adapter_config.variant]) * (2 * C * m + m + C)


# --------------------------------------------------------------------------- adapters on a model
class AdapterModel(AdaptedModel):
    """A frozen GPT with bottleneck adapters (the adapter host of ``minilora.adapters.adapted``).

    ``adapter_config`` is the active adapter's config; ``config`` is the GPT's.
    """

    def __init__(self, model: GPT, config: AdapterConfig | None = None, adapter_name: str = "default"):
        super().__init__(model, config or AdapterConfig(), adapter_name)

    @property
    def adapter_config(self) -> AdapterConfig:
        return self.adapters[self._require_active("read")]

    def unload(self) -> GPT:
        """Remove every adapter and return the plain (frozen) base GPT.

        There is no merge: the GELU between the two projections makes the adapter non-linear,
        so no single weight matrix can stand in for linear layer + adapter.
        """
        for name in list(self.adapters):
            self.delete_adapter(name)
        self.model.freeze()
        return self.model
