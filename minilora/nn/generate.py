"""Text generation: the model's forward with a key/value cache, sampling, and the decoding loop.

``forward_cached(model, idx, cache)`` is the model's forward for NEW positions only: the block
computations of ``GPT._block_forward`` (layer norms, the linear layers through their specs, so a
LoRA or any adapter runs as in training, GELU, residuals), with ``kv_cache.cached_attention_forward``
in place of the full attention. Fed a prompt and then one token per step it gives the same logits
as the full forward over the whole sequence, at the cost of one position per step.

``generate(model, prompt, max_new_tokens, ...)`` samples token after token: greedy at temperature
0 (the argmax, so its output is what teacher-forced exact match measures), otherwise from
softmax(logits / temperature), optionally restricted to the top_k most likely tokens (Fan et al.
2018). GPT-2's positions are learned up to block_size, so once the sequence is longer the model
reads its last block_size tokens (nanoGPT's rule); every position moves then, so those steps run
the full forward, cache or not. Random numbers come from NumPy's seeded Generator on the CPU.

Shapes: B batch, T new positions, S cached positions, V vocabulary, C channels, NH heads, HS head size.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm  # plain tqdm: no widget JSON in notebooks

from minilora.nn import backend
from minilora.nn.kv_cache import cache_length, cached_attention_forward
from minilora.nn.layers import embedding_forward


def base_gpt(model):
    """The GPT itself, whether ``model`` is a GPT or an adapter host wrapping one (``host.model``)."""
    return getattr(model, "model", model)


# --------------------------------------------------------------------------- the cached forward
def _block_step(gpt, i, x, layer_cache):
    """x (B, T, C) of the new positions -> x (B, T, C), block i's new (K, V); GPT._block_forward's lines."""
    p, k = f"blocks.{i}.", gpt.kernels
    h, _ = gpt._layernorm(p + "ln1", x)                                     # (B, T, C)
    q, _ = gpt._linear(p + "attn.wq", h, False)
    kk, _ = gpt._linear(p + "attn.wk", h, False)
    v, _ = gpt._linear(p + "attn.wv", h, False)
    a, layer_cache = cached_attention_forward(q, kk, v, layer_cache, gpt.config.n_head)
    o, _ = gpt._linear(p + "attn.wo", a, False)
    x = x + o                                                               # residual
    h2, _ = gpt._layernorm(p + "ln2", x)
    f, _ = gpt._linear(p + "mlp.fc", h2, False)                             # (B, T, 4C)
    g, _ = k.gelu_forward(f)
    m, _ = gpt._linear(p + "mlp.proj", g, False)
    return x + m, layer_cache


def forward_cached(model, idx, cache=None):
    """LM logits of the new positions ``idx`` (B, T), given the cache of the S positions before them.

    cache: None (S = 0) or the list this function returned last time (one (K, V) per block, each
    (B, NH, S, HS)).  ->  logits (B, T, V), the new cache (each (B, NH, S + T, HS)).
    """
    gpt = base_gpt(model)
    S, T = cache_length(cache), idx.shape[1]
    if S + T > gpt.config.block_size:
        raise ValueError(f"{S} cached + {T} new positions exceed block_size = {gpt.config.block_size}; GPT-2's "
                         f"positions are learned only up to there. Run the full forward on the last "
                         f"{gpt.config.block_size} tokens instead (generate does)")
    gpt._check_tokens(idx)
    if gpt.specials is not None:
        raise ValueError("this model has special positions (prefix tuning), which the cached forward does not "
                         "place; use model.forward, or generate(..., use_cache=False)")
    tok, _ = embedding_forward(idx, gpt.params["wte.weight"])              # (B, T, C)
    x = tok + gpt.params["wpe.weight"][S:S + T]                             # positions S..S+T-1
    new_cache = []
    for i in range(gpt.config.n_layer):
        x, layer = _block_step(gpt, i, x, None if cache is None else cache[i])
        new_cache.append(layer)
    h, _ = gpt._layernorm("ln_f", x)
    logits, _ = gpt._linear("lm_head", h, False)                            # (B, T, V)
    return logits, new_cache


# --------------------------------------------------------------------------- choosing the next token
def sample_next(logits, *, temperature: float = 1.0, top_k: int | None = None, rng=None) -> np.ndarray:
    """The next token of each row: logits (B, V) -> ids (B,) int64, on the CPU.

    temperature 0: the argmax (greedy). Otherwise softmax(logits / temperature) over the top_k
    largest logits (all when top_k is None), sampled by inverting the cumulative sum at u ~ U(0, 1).
    """
    z = np.asarray(backend.to_numpy(logits), dtype=np.float64)
    if temperature == 0:
        return z.argmax(axis=-1).astype(np.int64)
    z = z / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]                      # (B, 1) the k-th largest
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)             # (B, V)
    u = rng.random((z.shape[0], 1))
    return np.minimum((cdf < u).sum(axis=-1), z.shape[-1] - 1).astype(np.int64)


def _check(prompt, max_new_tokens, temperature, top_k, V):
    ids = np.asarray(prompt)
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"prompt must be token ids of shape (T,) or (B, T) with T >= 1, got {ids.dtype} "
                         f"{ids.shape}; encode the text with the model's tokenizer")
    if int(max_new_tokens) < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and not 1 <= int(top_k) <= V:
        raise ValueError(f"top_k must be in 1..{V} (the vocabulary) or None, got {top_k}")
    return np.atleast_2d(ids).astype(np.int64)


# --------------------------------------------------------------------------- the loop
def generate(model, prompt, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, use_cache: bool = True, stop_id: int | None = None, progress: bool = False):
    """The prompt followed by up to ``max_new_tokens`` sampled tokens.

    prompt: token ids (T0,) or (B, T0)  ->  ids (T0 + n,) or (B, T0 + n), int64 NumPy, n <= max_new_tokens.
    seed: the sampling Generator's seed. use_cache: the KV cache (False: the full forward every
    step, the same tokens slower). stop_id: stop once every row has produced this token.
    progress: a tqdm bar over the new tokens.
    """
    gpt = base_gpt(model)
    block, V = gpt.config.block_size, gpt.config.vocab_size
    if gpt.specials is not None:          # prefix tuning: the specials take positions, and the cached
        block, use_cache = block - gpt.specials.n, False   # forward does not place them (full forward)
    ids = _check(prompt, max_new_tokens, temperature, top_k, V)
    rng, T0, cache = np.random.default_rng(seed), ids.shape[1], None
    for _ in tqdm(range(int(max_new_tokens)), desc="generate", unit="tok", disable=not progress,
                  leave=False, mininterval=0.5):
        if use_cache and ids.shape[1] <= block:       # the prompt first, then one new position per step
            logits, cache = forward_cached(model, backend.asarray(ids[:, cache_length(cache):]), cache)
        else:                                         # every position again (past block_size they all move)
            logits, _ = model.forward(backend.asarray(ids[:, -block:]))
        nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, rng=rng)   # (B,)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if stop_id is not None and (ids[:, T0:] == stop_id).any(axis=1).all():
            break
    return ids[0] if np.asarray(prompt).ndim == 1 else ids
