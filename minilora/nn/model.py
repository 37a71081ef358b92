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

``model.trainable`` is the set of names that get gradients. A frozen parameter gets no
gradient computed at all; that skipped work is where LoRA's savings come from.

Every linear layer goes through ``_linear``/``_linear_backward``. A module that wants to change
how one linear layer computes (LoRA does) registers a hook in ``model.linear_hooks[name]``; the
model itself knows nothing about LoRA.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minilora.nn import backend
from minilora import io
from minilora.nn.attention import attention_backward, attention_forward
from minilora.nn.backend import xp
from minilora.nn.layers import (embedding_backward, embedding_forward, gelu_backward, gelu_forward,
                             layernorm_backward, layernorm_forward, linear_backward, linear_forward)

# The linear layers of one block, by their name under ``blocks.{i}.``.
BLOCK_LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.fc", "mlp.proj")


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
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"GPTConfig.{field} must be a positive integer, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}; "
                f"every head needs n_embd / n_head channels. Pick e.g. n_head = "
                f"{max(h for h in range(1, self.n_head + 1) if self.n_embd % h == 0)}.")

    def linear_names(self) -> list[str]:
        """Dotted names of every linear layer, e.g. 'blocks.0.attn.wq'."""
        return [f"blocks.{i}.{m}" for i in range(self.n_layer) for m in BLOCK_LINEARS]


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
    dtype = dtype or backend.default_dtype()
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
    """The model: a params dict, the trainable set, forward and backward."""

    def __init__(self, config: GPTConfig, params: dict | None = None, *, seed: int = 0, dtype=None):
        self.config = config
        self.params = params if params is not None else init_params(config, seed=seed, dtype=dtype)
        self.trainable: set[str] = set(self.params)
        self.linear_hooks: dict = {}      # name -> hook with .forward/.backward (see module doc)

    @property
    def dtype(self):
        return self.params["wte.weight"].dtype

    # ---------------------------------------------------------------- parameters
    def freeze(self, names=None):
        """Stop gradients for ``names`` (default: every parameter)."""
        self.trainable -= set(self.params if names is None else names)

    def unfreeze(self, names=None):
        """Train ``names`` (default: every parameter)."""
        names = set(self.params if names is None else names)
        unknown = names - set(self.params)
        if unknown:
            raise KeyError(f"unknown parameter names {sorted(unknown)[:5]}; see model.params")
        self.trainable |= names

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(int(v.size) for k, v in self.params.items() if not trainable_only or k in self.trainable)

    def add_classification_head(self, n_classes: int, *, seed: int = 0):
        """A new, trainable task head (K, C) that reads the hidden state of one token."""
        rng = backend.rng(seed)
        C = self.config.n_embd
        self.params["head.weight"] = backend.asarray(rng.normal(0.0, 0.02, (n_classes, C)), dtype=self.dtype)
        self.params["head.bias"] = backend.asarray(np.zeros(n_classes), dtype=self.dtype)
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

    # ---------------------------------------------------------------- linear layers (hookable)
    def _linear(self, name, x, training):
        hook = self.linear_hooks.get(name)
        if hook is not None:
            return hook.forward(self, name, x, training)
        return linear_forward(x, self.params[name + ".weight"], self.params[name + ".bias"])

    def _linear_backward(self, name, dy, cache, grads):
        hook = self.linear_hooks.get(name)
        if hook is not None:
            return hook.backward(self, name, dy, cache, grads)
        w, b = name + ".weight", name + ".bias"
        dx, dW, db = linear_backward(dy, cache, weight_grad=w in self.trainable)
        if w in self.trainable:
            grads[w] = dW
        if b in self.trainable:
            grads[b] = db if db is not None else dy.reshape(-1, dy.shape[-1]).sum(axis=0)
        return dx

    def _layernorm(self, name, x):
        return layernorm_forward(x, self.params[name + ".weight"], self.params[name + ".bias"],
                                 self.config.ln_eps)

    def _layernorm_backward(self, name, dy, cache, grads):
        keys = (name + ".weight", name + ".bias")
        dx, dgamma, dbeta = layernorm_backward(dy, cache, param_grads=any(k in self.trainable for k in keys))
        for key, g in zip(keys, (dgamma, dbeta)):
            if key in self.trainable:
                grads[key] = g
        return dx

    # ---------------------------------------------------------------- one block
    def _block_forward(self, i, x, training):
        """x (B, T, C) -> x (B, T, C): x + attn(ln1(x)), then x + mlp(ln2(x))."""
        p = f"blocks.{i}."
        h, c_ln1 = self._layernorm(p + "ln1", x)                  # (B, T, C)
        q, c_q = self._linear(p + "attn.wq", h, training)         # (B, T, C)
        k, c_k = self._linear(p + "attn.wk", h, training)
        v, c_v = self._linear(p + "attn.wv", h, training)
        a, c_att = attention_forward(q, k, v, self.config.n_head)  # (B, T, C)
        o, c_o = self._linear(p + "attn.wo", a, training)
        x = x + o                                                 # residual
        h2, c_ln2 = self._layernorm(p + "ln2", x)
        f, c_fc = self._linear(p + "mlp.fc", h2, training)        # (B, T, 4C)
        g, c_gelu = gelu_forward(f)
        m, c_proj = self._linear(p + "mlp.proj", g, training)     # (B, T, C)
        x = x + m                                                 # residual
        return x, (c_ln1, c_q, c_k, c_v, c_att, c_o, c_ln2, c_fc, c_gelu, c_proj)

    def _block_backward(self, i, dx, cache, grads):
        """dx (B, T, C) -> dx (B, T, C); the forward read upside down."""
        c_ln1, c_q, c_k, c_v, c_att, c_o, c_ln2, c_fc, c_gelu, c_proj = cache
        p = f"blocks.{i}."
        # forward: x = x + m  -> dx flows on unchanged and also into the MLP branch
        dg = self._linear_backward(p + "mlp.proj", dx, c_proj, grads)
        df = gelu_backward(dg, c_gelu)
        dh2 = self._linear_backward(p + "mlp.fc", df, c_fc, grads)
        dx = dx + self._layernorm_backward(p + "ln2", dh2, c_ln2, grads)
        # forward: x = x + o  -> the same for the attention branch
        da = self._linear_backward(p + "attn.wo", dx, c_o, grads)
        dq, dk, dv = attention_backward(da, c_att)
        # h fed three projections (fan-out), so its gradient is the sum of three
        dh = self._linear_backward(p + "attn.wq", dq, c_q, grads)
        dh += self._linear_backward(p + "attn.wk", dk, c_k, grads)
        dh += self._linear_backward(p + "attn.wv", dv, c_v, grads)
        return dx + self._layernorm_backward(p + "ln1", dh, c_ln1, grads)

    # ---------------------------------------------------------------- the trunk
    def _trunk_forward(self, idx, training):
        """idx (B, T) -> final hidden states (B, T, C) after ln_f."""
        self._check_tokens(idx)
        T = idx.shape[1]
        tok, c_tok = embedding_forward(idx, self.params["wte.weight"])        # (B, T, C)
        pos = self.params["wpe.weight"][:T]                                  # (T, C)
        x = tok + pos
        c_blocks = []
        for i in range(self.config.n_layer):
            x, c = self._block_forward(i, x, training)
            c_blocks.append(c)
        h, c_lnf = self._layernorm("ln_f", x)
        return h, (c_tok, T, c_blocks, c_lnf)

    def _trunk_backward(self, dh, cache, grads):
        c_tok, T, c_blocks, c_lnf = cache
        dx = self._layernorm_backward("ln_f", dh, c_lnf, grads)
        for i in reversed(range(self.config.n_layer)):
            dx = self._block_backward(i, dx, c_blocks[i], grads)
        # forward: x = tok + pos (pos broadcast over the batch)
        if "wpe.weight" in self.trainable:
            dwpe = xp.zeros_like(self.params["wpe.weight"])
            dwpe[:T] = dx.sum(axis=0)
            grads["wpe.weight"] = dwpe
        if "wte.weight" in self.trainable:
            dwte = embedding_backward(dx, c_tok)
            # wte is used twice (embedding and tied LM head): the two gradients add
            grads["wte.weight"] = grads["wte.weight"] + dwte if "wte.weight" in grads else dwte

    # ---------------------------------------------------------------- public forward/backward
    def forward(self, idx, *, training: bool = False):
        """Language-model logits. idx (B, T) -> logits (B, T, V), cache."""
        h, c_trunk = self._trunk_forward(idx, training)
        logits, c_head = linear_forward(h, self.params["wte.weight"], None)  # tied head: h @ wte.T
        return logits, ("lm", c_trunk, c_head)

    def classify(self, idx, last, *, training: bool = False):
        """Class logits from the hidden state at position ``last`` of each row.

        idx (B, T), last (B,) integer  ->  logits (B, K), cache.
        """
        if "head.weight" not in self.params:
            raise ValueError("this model has no classification head; call add_classification_head(K) first")
        h, c_trunk = self._trunk_forward(idx, training)
        rows = xp.arange(idx.shape[0])
        pooled = h[rows, last]                                                # (B, C)
        logits, c_head = linear_forward(pooled, self.params["head.weight"], self.params["head.bias"])
        return logits, ("cls", c_trunk, c_head, last, h.shape)

    def backward(self, dlogits, cache) -> dict:
        """Gradients of every trainable parameter (and only those), keyed like ``params``."""
        grads: dict = {}
        if cache[0] == "lm":
            _, c_trunk, c_head = cache
            dh, dwte, _ = linear_backward(dlogits, c_head, weight_grad="wte.weight" in self.trainable)
            if dwte is not None:
                grads["wte.weight"] = dwte
        else:
            _, c_trunk, c_head, last, h_shape = cache
            dpooled = self._linear_backward_head(dlogits, c_head, grads)
            dh = xp.zeros(h_shape, dtype=dlogits.dtype)
            dh[xp.arange(h_shape[0]), last] = dpooled                           # only the read position
        self._trunk_backward(dh, c_trunk, grads)
        return grads

    def _linear_backward_head(self, dlogits, c_head, grads):
        dx, dW, db = linear_backward(dlogits, c_head, weight_grad="head.weight" in self.trainable)
        if "head.weight" in self.trainable:
            grads["head.weight"], grads["head.bias"] = dW, db
        return dx


class WrappedModel:
    """The model interface (params, trainable, forward, classify, backward, num_params) passed through
    to a wrapped GPT, so one training loop trains a GPT, a LoRA model or an adapter model alike."""

    def __init__(self, model: GPT):
        self.model = model

    params = property(lambda self: self.model.params)
    trainable = property(lambda self: self.model.trainable)
    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)

    def forward(self, idx, *, training=False):
        return self.model.forward(idx, training=training)

    def classify(self, idx, last, *, training=False):
        return self.model.classify(idx, last, training=training)

    def backward(self, dlogits, cache):
        return self.model.backward(dlogits, cache)

    def num_params(self, trainable_only: bool = False) -> int:
        return self.model.num_params(trainable_only)


# --------------------------------------------------------------------------- files
def base_params(model: GPT) -> dict:
    """The base model's parameters: everything but adapter weights (names with 'lora_')."""
    return {k: v for k, v in model.params.items() if ".lora_" not in k and ".adapter_" not in k}


def save_model(model: GPT, directory, *, extra: dict | None = None) -> Path:
    """Write model.safetensors + config.json into ``directory`` (each file atomically)."""
    directory = Path(directory)
    params = base_params(model)
    io.save_tensors(directory / "model.safetensors", params)
    io.write_json(directory / "config.json", {
        "format": "minilora.model", "version": 1, "config": asdict(model.config),
        "fingerprint": io.fingerprint(params), "extra": extra or {}})
    return directory


def load_model(directory, *, dtype=None) -> tuple[GPT, dict]:
    """Read a model saved by ``save_model``; returns (model, extra). Checks shapes and fingerprint."""
    directory = Path(directory)
    meta = io.read_json(directory / "config.json")
    if meta.get("format") != "minilora.model":
        raise io.CheckpointError(f"{directory / 'config.json'} is not a minilora model config "
                                 f"(format = {meta.get('format')!r}); was it written by save_model?")
    config = GPTConfig(**meta["config"])
    tensors, _ = io.load_tensors(directory / "model.safetensors")
    if io.fingerprint(tensors) != meta.get("fingerprint"):
        raise io.CheckpointError(f"{directory}: model.safetensors does not match config.json "
                                 f"(fingerprint differs); the two files come from different saves")
    expected = param_shapes(config)
    if "head.weight" in tensors:
        expected.update({"head.weight": tensors["head.weight"].shape, "head.bias": tensors["head.bias"].shape})
    for name, shape in expected.items():
        got = tensors.get(name)
        if got is None or tuple(got.shape) != tuple(shape):
            raise io.CheckpointError(
                f"{directory}: parameter {name} should have shape {shape} for config {config}, "
                f"found {None if got is None else tuple(got.shape)}; the checkpoint and its config do not match")
    dtype = dtype or backend.default_dtype()
    params = {k: backend.asarray(v, dtype=dtype) for k, v in tensors.items()}
    return GPT(config, params), meta.get("extra", {})
