"""Special positions: trainable activations at inserted positions (prefix tuning, Hu et al. 2021, §5.1).

Prefix-embedding tuning (PreEmbed) inserts l_p *prefix* and l_i *infix* special tokens among a
sequence's tokens; they are not in the vocabulary, and their embeddings are trainable.
Prefix-layer tuning (PreLayer) goes further: the activations at the special positions entering every
block are replaced by trainable ones. The GPT reads both from one piece of data,
``model.specials`` (a ``SpecialPositions``, or None):

    SpecialPositions(n_prefix=2, n_infix=1, infix_before=(id of "=", id of "?"),
                     states={0: "prefix.states.0.default", 1: ..., ...})

``states[i]`` names the param S_i (n, C), n = l_p + l_i: the activations entering block i at the
special positions. Block 0 must have one (a special position has no token to embed): at block 0 the
special positions are *inserted* (``insert_forward``); at a later block with a state they are
*replaced* (``replace_forward``), which cuts them off from what the blocks before computed. After
the final layer norm the special positions are *dropped* (``drop_forward``), so the logits keep the
token positions only, (B, T, V): the loss, its mask and a classification head's ``last`` index
never see the special positions. The model knows nothing else about prefix tuning
(``minilora.adapters.prefix`` builds the data).

Where the special positions go in a row of T tokens:
    prefix: positions 0 .. l_p - 1, before the first token;
    infix:  just before the first token whose id is in ``infix_before``. For minilora's tasks that
            is the token that ends the prompt: "=" (generation: "rev:hello" [infix] "=olleh.") or
            "?" (classification: "ord:abkx" [infix] "?"). Before it rather than after, so that the
            position that predicts the first answer token ("=") or feeds the head ("?") sees it.
The tokens then sit at positions shifted by the special ones before them, and read those position
embeddings. A row of T tokens needs T + l_p + l_i positions: a model with context block_size has
room for block_size - l_p - l_i tokens (``room``), and ``layout`` refuses a longer row.

Shapes: B batch, T tokens per row, n = l_p + l_i special positions, T' = T + n, C channels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from minilora import checks
from minilora.nn.backend import xp


# --------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class SpecialPositions:
    """Special positions as data: how many, where the infix goes, and the params of their activations."""
    n_prefix: int = 0                              # l_p: special positions before the first token
    n_infix: int = 0                               # l_i: special positions before the first infix_before token
    infix_before: tuple = ()                       # token ids the infix goes before (the prompt's last token)
    states: dict = field(default_factory=dict)     # block index -> param name of S_i (n, C); block 0 required

    def __post_init__(self):
        checks.integer("n_prefix (l_p)", self.n_prefix, minimum=0)
        checks.integer("n_infix (l_i)", self.n_infix, minimum=0)
        if self.n_prefix + self.n_infix == 0:
            raise ValueError("special positions need l_p + l_i >= 1 (n_prefix, n_infix); with none, use no specials")
        if self.n_infix and not self.infix_before:
            raise ValueError("an infix (n_infix > 0) needs the token ids it goes before (infix_before), "
                             "e.g. the ids of '=' and '?' that end minilora's prompts")
        if 0 not in self.states:
            raise ValueError(f"states must name the activations entering block 0 (a special position has no token "
                             f"to embed); got blocks {sorted(self.states)}")

    @property
    def n(self) -> int:
        return self.n_prefix + self.n_infix


def room(block_size: int, n_special: int) -> int:
    """Tokens a row may hold when n_special of the block_size positions are special ones."""
    return block_size - n_special


@dataclass(frozen=True)
class Layout:
    """Where each token and each special position sits in the longer sequence of one batch."""
    specials: SpecialPositions
    token_pos: object        # (B, T) int: token t of row b sits at position token_pos[b, t] of T'
    special_pos: object      # (B, n) int: special position j of row b sits at special_pos[b, j]
    length: int              # T' = T + n


def layout(idx, specials: SpecialPositions | None, block_size: int) -> Layout | None:
    """The layout of a batch idx (B, T) with ``specials`` (None without special positions).

    Raises ValueError when a row is too long to leave room, or has no token the infix goes before.
    """
    if specials is None:
        return None
    B, T = idx.shape
    lp, li, n = specials.n_prefix, specials.n_infix, specials.n
    if T + n > block_size:
        raise ValueError(f"{n} special positions (l_p = {lp}, l_i = {li}) and T = {T} tokens need {T + n} positions, "
                         f"more than block_size = {block_size}: the specials leave room for {room(block_size, n)} "
                         f"tokens. Crop the input to that, or use fewer special tokens")
    t = xp.arange(T)[None, :]                                             # (1, T)
    if li:
        hit = xp.isin(idx, xp.asarray(specials.infix_before))             # (B, T)
        if not bool(hit.any(axis=1).all()):
            raise ValueError(f"a row has none of the tokens {specials.infix_before} that the infix goes before; "
                             f"prompts must end with one (minilora's tasks end them with '=' or '?'), or use n_infix = 0")
        k = hit.argmax(axis=1)[:, None]                                   # (B, 1): the first such token
    else:
        k = xp.full((B, 1), T)
    token_pos = lp + t + li * (t >= k)                                    # (B, T)
    infix = lp + k + xp.arange(li)[None, :]                               # (B, l_i)
    prefix = xp.broadcast_to(xp.arange(lp)[None, :], (B, lp))             # (B, l_p)
    special_pos = xp.concatenate([prefix, infix], axis=1)                 # (B, n)
    return Layout(specials, token_pos, special_pos, T + n)


# --------------------------------------------------------------------------- insert, replace, drop
def _rows(pos):
    return xp.arange(pos.shape[0])[:, None]                               # (B, 1): pairs with pos (B, k)


def insert_forward(x, S, token_pos, special_pos):
    """The longer sequence: tokens where token_pos says, the special activations S in every row.

    x (B, T, C), S (n, C), token_pos (B, T), special_pos (B, n)  ->  z (B, T + n, C);
    cache = (token_pos, special_pos).
    """
    B, T, C = x.shape
    z = xp.empty((B, T + S.shape[0], C), dtype=x.dtype)
    z[_rows(token_pos), token_pos] = x
    z[_rows(special_pos), special_pos] = S                                # S broadcast over the batch
    return z, (token_pos, special_pos)


def insert_backward(dz, cache):
    """dz (B, T', C) -> dx (B, T, C), dS (n, C)."""
    token_pos, special_pos = cache
    dx = dz[_rows(token_pos), token_pos]                                  # forward: z[token_pos] = x
    dS = dz[_rows(special_pos), special_pos].sum(axis=0)                  # forward: z[special_pos] = S, every row
    return dx, dS


def replace_forward(x, S, special_pos):
    """Prefix-layer tuning: the activations at the special positions replaced by trainable ones.

    x (B, T', C), S (n, C), special_pos (B, n)  ->  z (B, T', C) equal to x except z[b, special_pos[b]] = S;
    cache = (special_pos,).
    """
    z = x.copy()
    z[_rows(special_pos), special_pos] = S                                # S broadcast over the batch
    return z, (special_pos,)


def replace_backward(dz, cache):
    """dz (B, T', C) -> dx (B, T', C), dS (n, C).

    ### BEGIN HINT
    A replaced entry of x never reaches z: its gradient is 0. Every row uses the same S.
    ### END HINT
    """
    special_pos, = cache
    ### BEGIN SOLUTION
    rows = _rows(special_pos)
    dS = dz[rows, special_pos].sum(axis=0)        # forward: z[b, special_pos[b]] = S for every b -> sum over b
    dx = dz.copy()                                # forward: z = x elsewhere -> dx = dz there
    dx[rows, special_pos] = 0.0                   # forward: x[special_pos] is overwritten -> no gradient
    ### END SOLUTION
    return dx, dS


def drop_forward(h, token_pos):
    """The token positions only: h (B, T', C), token_pos (B, T) -> y (B, T, C); cache = (token_pos, T')."""
    return h[_rows(token_pos), token_pos], (token_pos, h.shape[1])


def drop_backward(dy, cache):
    """dy (B, T, C) -> dh (B, T', C), zero at the special positions (no loss reads them)."""
    token_pos, length = cache
    dh = xp.zeros((dy.shape[0], length, dy.shape[-1]), dtype=dy.dtype)
    dh[_rows(token_pos), token_pos] = dy                                  # forward: y = h[token_pos]
    return dh


# --------------------------------------------------------------------------- what the GPT calls
def enter_block(i, x, lay: Layout | None, params: dict):
    """The activations entering block i: block 0 inserts the special positions, a later block with a
    state replaces them, any other block takes x as it is. x (B, T or T', C) -> (B, T', C), cache."""
    if lay is None or i not in lay.specials.states:
        return x, None
    S = params[lay.specials.states[i]]                                    # (n, C)
    if i == 0:
        return insert_forward(x, S, lay.token_pos, lay.special_pos)
    return replace_forward(x, S, lay.special_pos)


def enter_block_backward(i, dz, cache, lay: Layout | None, trainable, grads: dict):
    """dx of ``enter_block``; dS_i goes into ``grads`` when S_i trains."""
    if cache is None:
        return dz
    dx, dS = (insert_backward if i == 0 else replace_backward)(dz, cache)
    name = lay.specials.states[i]
    if name in trainable:
        grads[name] = dS
    return dx


def drop(h, lay: Layout | None):
    """h (B, T', C) -> (B, T, C): the token positions (h itself without special positions)."""
    return h if lay is None else drop_forward(h, lay.token_pos)[0]


def undrop(dh, lay: Layout | None):
    """The backward of ``drop``."""
    return dh if lay is None else drop_backward(dh, (lay.token_pos, lay.length))


def position_grad(dx, T: int, lay: Layout | None, wpe):
    """d wpe (block_size, C) of x = tok + wpe[positions]: rows [:T] summed over the batch, or, with special
    positions, each token's gradient added at the position it sat at."""
    dwpe = xp.zeros_like(wpe)
    if lay is None:
        dwpe[:T] = dx.sum(axis=0)                                         # forward: wpe[:T] broadcast over B
    else:
        xp.add.at(dwpe, lay.token_pos.reshape(-1), dx.reshape(-1, dx.shape[-1]))   # forward: wpe[token_pos]
    return dwpe
