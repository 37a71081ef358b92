"""A GPT-2-style transformer in NumPy with a hand-written backward pass.

Architecture = GPT-2 (Radford et al. 2019): learned token and position embeddings, pre-LN
residual blocks (LayerNorm eps 1e-5, causal multi-head attention with separate Wq, Wk, Wv, Wo
and biases, a 4x MLP with tanh-GELU), a final LayerNorm, and an LM head tied to the token
embedding. Shapes: B batch, T time, C channels, V vocabulary, NH heads, K classes.

Parameters live in one flat dict with dotted names (weights stored (d_out, d_in)):
    wte.weight (V, C)                     token embedding, also the LM head (tied)
    wpe.weight (block_size, C)            learned positions
    blocks.{i}.ln1.weight, .bias (C,)
    blocks.{i}.attn.wq.weight (C, C), blocks.{i}.attn.wq.bias (C,)    and wk, wv, wo alike
    blocks.{i}.ln2.weight, .bias (C,)
    blocks.{i}.mlp.fc.weight (4C, C), .bias (4C,)
    blocks.{i}.mlp.proj.weight (C, 4C), .bias (C,)
    ln_f.weight, .bias (C,)
    head.weight (K, C), head.bias (K,)    only after add_classification_head (a new task head)

A base weight may be kept in parts instead (QLoRA's 4-bit codes and scales, minilora.adapters.qbase):
``model.weight_parts["blocks.0.attn.wq.weight"]`` lists the params that hold it, and its layer's
spec says how to read them.

``model.trainable`` is the set of names that get gradients. A frozen parameter gets no
gradient computed at all; that skipped work is where LoRA's savings come from.

Every linear layer, the heads included, is data: ``model.linears[name]`` is a
``minilora.nn.linears.LinearSpec`` naming its kind ("linear" for a plain layer) and the params it
reads. The LM head is the linear "lm_head" reading ``wte.weight`` (tied); a classification head is
the linear "head". The model runs each through its kind's forward/backward pair, so an adapter
(LoRA, DoRA, ...) changes a layer by changing its spec, and the model knows nothing about them.
Layer norms read their tensors through ``model.norms[name]`` ({"weight": ..., "bias": ...}), for the
same reason. Prefix tuning's special positions are data too: ``model.specials`` (None, or a
``minilora.nn.specials.SpecialPositions``) names trainable activations the trunk inserts before block 0
and puts in place at later blocks; the logits keep the token positions only. Layer norm, GELU and
attention compute through ``model.kernels`` (textbook forms by default; see ``minilora.nn.kernels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minilora import checks
from minilora.nn import backend, specials
from minilora.nn.backend import xp
from minilora.nn.kernels import TEXTBOOK
from minilora.nn.layers import embedding_backward, embedding_forward
from minilora.nn.linears import LinearSpec, get_kind, plain

# The linear layers of one block, by their name under ``blocks.{i}.``, and the short names users
# write for them (LoRA's target_modules, an adapter's modules_to_save): "wq" -> "attn.wq".
BLOCK_LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.fc", "mlp.proj")
SHORT_NAMES = {name.split(".")[-1]: name for name in BLOCK_LINEARS}


# --------------------------------------------------------------------------- config
@dataclass
class GPTConfig:
    vocab_size: int = 64      # V: number of token ids
    block_size: int = 32      # longest sequence the model reads (learned positions)
    n_layer: int = 4          # number of transformer blocks
    n_head: int = 4           # NH: attention heads per block
    n_embd: int = 128         # C: width of the residual stream
    ln_eps: float = 1e-5      # LayerNorm epsilon, as GPT-2

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):   # ints, not 2.5 or "128"
            setattr(self, field, checks.integer(f"GPTConfig.{field}", getattr(self, field), minimum=1))
        self.ln_eps = checks.number("GPTConfig.ln_eps", self.ln_eps, above=0)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}; "
                f"every head needs n_embd / n_head channels. Pick e.g. n_head = "
                f"{max(h for h in range(1, self.n_head + 1) if self.n_embd % h == 0)}.")

    def linear_names(self) -> list[str]:
        """Dotted names of every linear layer, e.g. 'blocks.0.attn.wq'."""
        return [f"blocks.{i}.{m}" for i in range(self.n_layer) for m in BLOCK_LINEARS]

    def norm_names(self) -> list[str]:
        """Dotted names of every layer norm, e.g. 'blocks.0.ln1', ..., 'ln_f'."""
        return [f"blocks.{i}.{n}" for i in range(self.n_layer) for n in ("ln1", "ln2")] + ["ln_f"]


def param_shapes(config: GPTConfig) -> dict[str, tuple]:
    """Name -> shape of every base-model parameter (no classification head)."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.block_size, C)}
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.weight": (C,), p + "ln1.bias": (C,)})
        for m in ("wq", "wk", "wv", "wo"):
            shapes.update({p + f"attn.{m}.weight": (C, C), p + f"attn.{m}.bias": (C,)})
        shapes.update({p + "ln2.weight": (C,), p + "ln2.bias": (C,),
                       p + "mlp.fc.weight": (4 * C, C), p + "mlp.fc.bias": (4 * C,),
                       p + "mlp.proj.weight": (C, 4 * C), p + "mlp.proj.bias": (C,)})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def init_params(config: GPTConfig, *, seed: int = 0, dtype=None) -> dict:
    """GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 L),
    zero biases, unit LayerNorm gains. Drawn on the CPU so every backend starts equal."""
    dtype = checks.float_dtype(dtype or backend.default_dtype())
    rng = backend.rng(seed)
    residual_std = 0.02 / np.sqrt(2 * config.n_layer)   # GPT-2: keeps the residual stream's variance flat in depth
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
            value = np.ones(shape)
        elif name.endswith(".bias"):
            value = np.zeros(shape)
        elif name.endswith(("attn.wo.weight", "mlp.proj.weight")):
            value = rng.normal(0.0, residual_std, shape)
        else:
            value = rng.normal(0.0, 0.02, shape)
        params[name] = backend.asarray(value, dtype=dtype)
    return params


# --------------------------------------------------------------------------- the model
class GPT:
    """The model: a params dict, the trainable set, its linear layers as data, forward and backward."""

    def __init__(self, config: GPTConfig, params: dict | None = None, *, seed: int = 0, dtype=None):
        self.config = config
        self.params = params if params is not None else init_params(config, seed=seed, dtype=dtype)
        for name, value in self.params.items():
            checks.float_dtype(value.dtype, f"parameter {name}'s dtype")
        self.trainable: set[str] = set(self.params)
        self.linears: dict[str, LinearSpec] = {name: plain(name) for name in config.linear_names()}
        self.linears["lm_head"] = plain("wte", bias=False)        # tied: logits = h @ wte.T
        # Layer norms read their gain and shift by name too, so an adapter can train its own copy.
        self.norms: dict[str, dict] = {n: {"weight": f"{n}.weight", "bias": f"{n}.bias"} for n in config.norm_names()}
        if "head.weight" in self.params:                          # a checkpoint with a task head
            self.linears["head"] = plain("head")
        self.kernels = TEXTBOOK                                   # layer norm, GELU, attention, loss
        self.specials: specials.SpecialPositions | None = None   # prefix tuning's positions (nn/specials.py)
        self.rng = backend.rng(seed)                              # random numbers of training forwards (dropout)
        # A base weight kept in another form (QLoRA's 4-bit codes and block scales,
        # minilora.adapters.qbase): its name -> the params that hold it. Empty for a float model.
        self.weight_parts: dict[str, list[str]] = {}

    @property
    def dtype(self):
        return self.params["wte.weight"].dtype

    @property
    def stochastic(self) -> bool:
        """True when a training forward draws random numbers (a layer with dropout)."""
        return any(get_kind(s.kind).stochastic(s.options) for s in self.linears.values())

    def base_param_names(self) -> list[str]:
        """The base model's parameters (no task head, no adapter tensors); a weight kept in parts
        (``weight_parts``) is named by its parts."""
        return [p for name in param_shapes(self.config) for p in self.weight_parts.get(name, [name])]

    def own_param_names(self) -> list[str]:
        """The model's own parameters (the base and any task head), without tensors adapters added."""
        return self.base_param_names() + [k for k in ("head.weight", "head.bias") if k in self.params]

    def weight_shape(self, linear: str) -> tuple:
        """(d_out, d_in) of linear layer ``linear``'s weight, however it is stored (float or in parts)."""
        name = f"{linear}.weight"
        shape = param_shapes(self.config).get(name)
        return tuple(shape) if shape is not None else tuple(self.params[name].shape)

    # ---------------------------------------------------------------- parameters
    def freeze(self, names=None):
        """Stop gradients for ``names`` (default: every parameter)."""
        if names is None:
            self.trainable.clear()
        else:
            self.trainable -= set(names)

    def unfreeze(self, names=None):
        """Train ``names`` (default: every parameter)."""
        names = set(self.params if names is None else names)
        unknown = names - set(self.params)
        if unknown:
            raise KeyError(f"unknown parameter names {sorted(unknown)[:5]}; see model.params")
        self.trainable |= names

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameters (all, or the trainable ones); a weight kept in parts counts its weights, not its bytes."""
        parts = {p for ps in self.weight_parts.values() for p in ps}       # never trainable
        n = sum(int(v.size) for k, v in self.params.items()
                if k not in parts and (not trainable_only or k in self.trainable))
        if not trainable_only:
            shapes = param_shapes(self.config)
            n += sum(int(np.prod(shapes[w])) for w in self.weight_parts)
        return n

    def add_classification_head(self, n_classes: int, *, seed: int = 0):
        """A new, trainable task head (K, C): the linear "head", reading the hidden state of one token."""
        rng = backend.rng(seed)
        C = self.config.n_embd
        self.params["head.weight"] = backend.asarray(rng.normal(0.0, 0.02, (n_classes, C)), dtype=self.dtype)
        self.params["head.bias"] = backend.asarray(np.zeros(n_classes), dtype=self.dtype)
        self.linears["head"] = plain("head")
        self.trainable |= {"head.weight", "head.bias"}

    # ---------------------------------------------------------------- input checks
    def _check_tokens(self, idx):
        if not backend.is_array(idx) or idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ValueError(f"tokens must be an integer array of shape (B, T); got "
                             f"{getattr(idx, 'dtype', type(idx))} with shape {getattr(idx, 'shape', None)}")
        T, V = idx.shape[1], self.config.vocab_size
        if T > self.config.block_size:
            raise ValueError(f"sequence length T = {T} is longer than the context block_size = "
                             f"{self.config.block_size}; crop the input or train a model with a larger block_size")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"token ids must lie in [0, {V}); got values in [{lo}, {hi}]. "
                             f"Encode text with the model's own tokenizer")

    # ---------------------------------------------------------------- layers, through their specs
    def _linear(self, name, x, training):
        """Run linear layer ``name`` as its spec says: its kind's forward on the tensors it names."""
        spec = self.linears[name]
        t = {role: self.params[p] for role, p in spec.tensors.items()}
        return get_kind(spec.kind).forward(x, t, training=training, rng=self.rng, **spec.options)

    def _linear_backward(self, name, dy, cache, grads):
        """dx of linear layer ``name``; gradients go into ``grads`` for its trainable tensors only."""
        spec = self.linears[name]
        needs = frozenset(role for role, p in spec.tensors.items() if p in self.trainable)
        dx, role_grads = get_kind(spec.kind).backward(dy, cache, needs)
        for role, g in role_grads.items():
            _accumulate(grads, spec.tensors[role], g)
        return dx

    def _layernorm(self, name, x):
        t = self.norms[name]
        return self.kernels.layernorm_forward(x, self.params[t["weight"]], self.params[t["bias"]], self.config.ln_eps)

    def _layernorm_backward(self, name, dy, cache, grads):
        keys = (self.norms[name]["weight"], self.norms[name]["bias"])
        dx, dgamma, dbeta = self.kernels.layernorm_backward(
            dy, cache, param_grads=any(k in self.trainable for k in keys))
        for key, g in zip(keys, (dgamma, dbeta)):
            if key in self.trainable:
                grads[key] = g
        return dx

    # ---------------------------------------------------------------- one block
    def _block_forward(self, i, x, training):
        """x (B, T, C) -> x (B, T, C): x + attn(ln1(x)), then x + mlp(ln2(x))."""
        p, k = f"blocks.{i}.", self.kernels
        h, c_ln1 = self._layernorm(p + "ln1", x)                  # (B, T, C)
        q, c_q = self._linear(p + "attn.wq", h, training)         # (B, T, C)
        kk, c_k = self._linear(p + "attn.wk", h, training)
        v, c_v = self._linear(p + "attn.wv", h, training)
        a, c_att = k.attention_forward(q, kk, v, self.config.n_head)   # (B, T, C)
        o, c_o = self._linear(p + "attn.wo", a, training)
        x = x + o                                                 # residual
        h2, c_ln2 = self._layernorm(p + "ln2", x)
        f, c_fc = self._linear(p + "mlp.fc", h2, training)        # (B, T, 4C)
        g, c_gelu = k.gelu_forward(f)
        m, c_proj = self._linear(p + "mlp.proj", g, training)     # (B, T, C)
        x = x + m                                                 # residual
        return x, (c_ln1, c_q, c_k, c_v, c_att, c_o, c_ln2, c_fc, c_gelu, c_proj)

    def _block_backward(self, i, dx, cache, grads):
        """dx (B, T, C) -> dx (B, T, C); the forward read upside down."""
        c_ln1, c_q, c_k, c_v, c_att, c_o, c_ln2, c_fc, c_gelu, c_proj = cache
        p, k = f"blocks.{i}.", self.kernels
        # forward: x = x + m  -> dx flows on unchanged and also into the MLP branch
        dg = self._linear_backward(p + "mlp.proj", dx, c_proj, grads)
        df = k.gelu_backward(dg, c_gelu)
        dh2 = self._linear_backward(p + "mlp.fc", df, c_fc, grads)
        dx = dx + self._layernorm_backward(p + "ln2", dh2, c_ln2, grads)
        # forward: x = x + o  -> the same for the attention branch
        da = self._linear_backward(p + "attn.wo", dx, c_o, grads)
        dq, dk, dv = k.attention_backward(da, c_att)
        # h fed three projections (fan-out), so its gradient is the sum of three
        dh = self._linear_backward(p + "attn.wq", dq, c_q, grads)
        dh += self._linear_backward(p + "attn.wk", dk, c_k, grads)
        dh += self._linear_backward(p + "attn.wv", dv, c_v, grads)
        return dx + self._layernorm_backward(p + "ln1", dh, c_ln1, grads)

    # ---------------------------------------------------------------- the trunk
    def _trunk_forward(self, idx, training):
        """idx (B, T) -> final hidden states (B, T, C) after ln_f (of the token positions only)."""
        self._check_tokens(idx)
        T = idx.shape[1]
        lay = specials.layout(idx, self.specials, self.config.block_size)   # None: no special positions
        tok, c_tok = embedding_forward(idx, self.params["wte.weight"])        # (B, T, C)
        x = tok + self.params["wpe.weight"][slice(0, T) if lay is None else lay.token_pos]   # (T, C) broadcast
        c_blocks, c_enter = [], []
        for i in range(self.config.n_layer):
            x, c = specials.enter_block(i, x, lay, self.params)              # (B, T + n, C): specials in place
            c_enter.append(c)
            x, c = self._block_forward(i, x, training)
            c_blocks.append(c)
        h, c_lnf = self._layernorm("ln_f", x)
        return specials.drop(h, lay), (c_tok, T, c_blocks, c_lnf, (lay, c_enter))

    def _trunk_backward(self, dh, cache, grads):
        c_tok, T, c_blocks, c_lnf, (lay, c_enter) = cache
        dx = self._layernorm_backward("ln_f", specials.undrop(dh, lay), c_lnf, grads)
        for i in reversed(range(self.config.n_layer)):
            dx = self._block_backward(i, dx, c_blocks[i], grads)
            dx = specials.enter_block_backward(i, dx, c_enter[i], lay, self.trainable, grads)
        # forward: x = tok + pos (pos broadcast over the batch, or read at each token's position)
        if "wpe.weight" in self.trainable:
            grads["wpe.weight"] = specials.position_grad(dx, T, lay, self.params["wpe.weight"])
        if "wte.weight" in self.trainable:
            _accumulate(grads, "wte.weight", embedding_backward(dx, c_tok))

    # ---------------------------------------------------------------- public forward/backward
    def forward(self, idx, *, training: bool = False):
        """Language-model logits from the head "lm_head". idx (B, T) -> logits (B, T, V), cache."""
        return self._forward(idx, None, "lm_head", training)

    def classify(self, idx, last, *, training: bool = False):
        """Class logits from the head "head", reading the hidden state at position ``last`` of each row.

        idx (B, T), last (B,) integer  ->  logits (B, K), cache.
        """
        if "head" not in self.linears:
            raise ValueError("this model has no classification head; call add_classification_head(K) first")
        return self._forward(idx, last, "head", training)

    def _forward(self, idx, last, head, training):
        """The one path of both heads; the cache has one shape: (trunk cache, last, head, head cache)."""
        h, c_trunk = self._trunk_forward(idx, training)                          # (B, T, C)
        if last is not None:
            h = h[xp.arange(idx.shape[0]), last]                                 # (B, C): one position per row
        logits, c_head = self._linear(head, h, training)                         # (B, T, V) or (B, K)
        return logits, (c_trunk, last, head, c_head)

    def backward(self, dlogits, cache) -> dict:
        """Gradients of every trainable parameter (and only those), keyed like ``params``."""
        c_trunk, last, head, c_head = cache
        grads: dict = {}
        dh = self._linear_backward(head, dlogits, c_head, grads)
        if last is not None:                                     # forward: h = h_all[rows, last]
            T = c_trunk[1]
            pooled = dh
            dh = xp.zeros((pooled.shape[0], T, pooled.shape[1]), dtype=pooled.dtype)
            dh[xp.arange(pooled.shape[0]), last] = pooled        # only the read position gets a gradient
        self._trunk_backward(dh, c_trunk, grads)
        return grads


def _accumulate(grads: dict, name: str, g) -> None:
    """grads[name] += g, or set it: a parameter used twice (wte: embedding and tied LM head) gets both."""
    grads[name] = grads[name] + g if name in grads else g
