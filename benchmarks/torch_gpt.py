"""minilora's GPT written again in plain PyTorch: the reference for tests and the benchmark.

The same model as ``minilora.nn.model.GPT`` (GPT-2, Radford et al. 2019): learned token and position
embeddings, pre-LN blocks (LayerNorm with the config's eps, causal multi-head attention with
separate Wq, Wk, Wv, Wo and biases, scale 1/sqrt(HS), a 4C MLP with tanh-GELU), a final
LayerNorm, and an LM head tied to the token embedding.

Module names are chosen so that ``named_parameters()`` yields exactly minilora's dotted names
(``blocks.0.attn.wq.weight`` ...), and torch.nn.Linear stores its weight (d_out, d_in) as minilora
does, so ``from_minilora_params`` copies every array by name with no transposes.

Plain eager PyTorch: no torch.compile. Attention is written out (matmul, mask, softmax, matmul)
like minilora's; ``sdpa=True`` uses the fused ``F.scaled_dot_product_attention`` instead, which
the benchmark reports as a second PyTorch figure.

PyTorch is a comparison tool only; minilora and its tests never need it.
Shapes: B batch, T time, C channels, V vocabulary, NH heads, HS = C // NH head size.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------- layers
class CausalSelfAttention(nn.Module):
    """x (B, T, C) -> (B, T, C): softmax(q k^T / sqrt(HS) + causal mask) v, then Wo."""

    def __init__(self, n_embd: int, n_head: int, sdpa: bool = False):
        super().__init__()
        self.n_head, self.sdpa = n_head, sdpa
        self.wq = nn.Linear(n_embd, n_embd)
        self.wk = nn.Linear(n_embd, n_embd)
        self.wv = nn.Linear(n_embd, n_embd)
        self.wo = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        NH, HS = self.n_head, C // self.n_head
        q = self.wq(x).view(B, T, NH, HS).transpose(1, 2)              # (B, NH, T, HS)
        k = self.wk(x).view(B, T, NH, HS).transpose(1, 2)
        v = self.wv(x).view(B, T, NH, HS).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, NH, T, HS)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))      # (B, NH, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
            y = att @ v                                                  # (B, NH, T, HS)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """x (B, T, C) -> (B, T, C): proj(gelu_tanh(fc(x))), hidden width 4C."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # GPT-2's tanh approximation


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, eps: float, sdpa: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head, sdpa)
        self.ln2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


# --------------------------------------------------------------------------- the model
class TorchGPT(nn.Module):
    """idx (B, T) int64 -> logits (B, T, V). Parameter names equal minilora's."""

    def __init__(self, config, *, sdpa: bool = False):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C)
        self.blocks = nn.ModuleList(Block(C, config.n_head, config.ln_eps, sdpa)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=config.ln_eps)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:T]                          # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T                          # tied LM head: (B, T, V)


def from_minilora_params(config, params: dict, *, sdpa: bool = False, device="cpu") -> TorchGPT:
    """A TorchGPT holding a copy of minilora's ``params`` (name -> array), in their dtype.

    Every parameter of the torch model must have a same-named, same-shaped array in ``params``;
    names in ``params`` that the base model lacks (a classification head, adapters) are refused.
    """
    model = TorchGPT(config, sdpa=sdpa)
    model.to(dtype=_TORCH_DTYPES[_host(params["wte.weight"]).dtype.name], device=device)
    own = dict(model.named_parameters())
    missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    if missing or extra:
        raise KeyError(f"params do not match the base GPT: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, p in own.items():
            value = torch.from_numpy(np.ascontiguousarray(_host(params[name]))).to(device)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{name}: torch expects shape {tuple(p.shape)}, params has {tuple(value.shape)}")
            p.copy_(value)
    return model


_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _host(a) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def masked_cross_entropy(logits, targets, mask=None):
    """Mean next-token loss over the positions where mask is 1, as minilora.nn.layers computes it.

    logits (B, T, V), targets (B, T) int64, mask (B, T) or None -> scalar tensor.
    """
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if mask is None:
        return nll.mean()
    w = mask.reshape(-1).to(logits.dtype)
    return (nll * w).sum() / w.sum()


def training_step(model, opt, x, y):
    """One eager training step as a closure: forward to logits (B, T, V), mean cross-entropy over all
    B T positions, backward, optimizer step. The benchmarks time it against minilora's step."""
    def step():
        logits = model(x)                                                    # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
