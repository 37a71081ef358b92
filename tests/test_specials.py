"""Specification of special positions (minilora.nn.specials): where they go, the room they take, the
hand-written backward passes, and a GPT that reads them as data."""
import numpy as np
import pytest

from minilora.nn.gradcheck import check_gradient, check_layer
from minilora.nn.layers import cross_entropy_backward, cross_entropy_forward
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.specials import (SpecialPositions, drop_backward, drop_forward, insert_backward, insert_forward,
                                  layout, replace_backward, replace_forward, room)

TINY = GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=8)
EQ = 9                                       # the token id the infix goes before in these tests


def tiny_model(seed=0):
    """A float64 GPT with every parameter random and O(1) (as test_model's), so every check is a relative one."""
    model = GPT(TINY, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 7)
    for name, p in model.params.items():
        p[...] = (1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0) \
            + 0.3 * rng.standard_normal(p.shape)
    return model


def with_specials(model, n_prefix, n_infix, blocks, rng):
    """Random O(1) states S_i (n, C) for ``blocks``, installed as model.specials; returns their names."""
    n, names = n_prefix + n_infix, {}
    for i in blocks:
        names[i] = f"prefix.states.{i}"
        model.params[names[i]] = rng.standard_normal((n, TINY.n_embd))
    model.specials = SpecialPositions(n_prefix, n_infix, (EQ,), names)
    model.trainable |= set(names.values())
    return names


def rows_with_eq(rng, B=3, T=6):
    """Token rows with one EQ each, at different places."""
    idx = rng.integers(0, 9, (B, T))
    idx[np.arange(B), np.arange(B) % (T - 1) + 1] = EQ
    return idx


# --------------------------------------------------------------------------- where they go
def test_prefix_goes_first_and_infix_just_before_the_first_infix_token():
    """Row 'a b = c' with l_p = 2, l_i = 1: specials at 0, 1 and 4; tokens at 2, 3, 5, 6."""
    idx = np.array([[1, 2, EQ, 3], [EQ, 1, 2, 3]])
    lay = layout(idx, SpecialPositions(2, 1, (EQ,), {0: "S"}), block_size=12)
    assert lay.special_pos.tolist() == [[0, 1, 4], [0, 1, 2]], f"got {lay.special_pos.tolist()}"
    assert lay.token_pos.tolist() == [[2, 3, 5, 6], [3, 4, 5, 6]], f"got {lay.token_pos.tolist()}"
    assert lay.length == 7, f"expected T + n = 7 positions, got {lay.length}"


def test_specials_leave_block_size_minus_n_positions_for_tokens():
    """room = block_size - l_p - l_i: a row of that many tokens runs, one more is refused naming the fix."""
    specials = SpecialPositions(3, 1, (EQ,), {0: "S"})
    assert room(12, specials.n) == 8, f"expected 12 - 4 = 8, got {room(12, specials.n)}"
    fits = np.full((1, 8), EQ)
    assert layout(fits, specials, block_size=12).length == 12
    with pytest.raises(ValueError, match=r"room for 8 tokens.*Crop the input.*fewer special tokens"):
        layout(np.full((1, 9), EQ), specials, block_size=12)


def test_an_infix_needs_its_token_in_every_row():
    """A row without the token the infix goes before is refused with a message naming n_infix = 0."""
    with pytest.raises(ValueError, match="n_infix = 0"):
        layout(np.array([[1, 2, 3]]), SpecialPositions(0, 2, (EQ,), {0: "S"}), block_size=12)


def test_special_positions_refuse_an_empty_or_unplaceable_config():
    """No special position at all, an infix with nowhere to go, or no state for block 0: clear errors."""
    with pytest.raises(ValueError, match="l_p \\+ l_i >= 1"):
        SpecialPositions(0, 0, (), {0: "S"})
    with pytest.raises(ValueError, match="infix_before"):
        SpecialPositions(1, 1, (), {0: "S"})
    with pytest.raises(ValueError, match="block 0"):
        SpecialPositions(1, 0, (), {1: "S"})


# --------------------------------------------------------------------------- the pairs, by hand
def test_insert_backward_matches_numerical_gradient(rng):
    """d/dx picks the token positions, d/dS sums the special positions over the batch (float64)."""
    idx = rows_with_eq(rng)
    lay = layout(idx, SpecialPositions(2, 2, (EQ,), {0: "S"}), block_size=12)
    x, S = rng.standard_normal((3, 6, 5)), rng.standard_normal((4, 5))
    errs = check_layer(lambda x, S: insert_forward(x, S, lay.token_pos, lay.special_pos), insert_backward, [x, S])
    assert max(errs.values()) < 1e-7, f"relative errors {errs}"


def test_replace_backward_matches_numerical_gradient(rng):
    """The replaced entries of x get no gradient; S gets the batch's sum there (float64)."""
    idx = rows_with_eq(rng)
    lay = layout(idx, SpecialPositions(1, 2, (EQ,), {0: "S"}), block_size=12)
    x, S = rng.standard_normal((3, 9, 5)), rng.standard_normal((3, 5))
    errs = check_layer(lambda x, S: replace_forward(x, S, lay.special_pos), replace_backward, [x, S])
    assert max(errs.values()) < 1e-7, f"relative errors {errs}"
    dx, _ = replace_backward(np.ones((3, 9, 5)), (lay.special_pos,))
    assert (dx[np.arange(3)[:, None], lay.special_pos] == 0).all(), "a replaced activation must get zero gradient"


def test_replace_backward_sums_the_rows_into_dS(rng):
    """Every row used the same S, so dS is the sum over the batch of dz at each row's special positions."""
    dz, pos = rng.standard_normal((3, 5, 2)), np.array([[0, 2], [0, 4], [0, 1]])
    _, dS = replace_backward(dz, (pos,))
    expected = dz[0, [0, 2]] + dz[1, [0, 4]] + dz[2, [0, 1]]
    assert np.allclose(dS, expected, atol=1e-12), f"expected the batch sum {expected}, got {dS}"


def test_replace_forward_changes_only_the_special_positions(rng):
    """z equals x everywhere but at special_pos, where every row holds S."""
    x, S, pos = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 3)), np.array([[0, 3], [0, 1]])
    z, _ = replace_forward(x, S, pos)
    keep = np.ones((2, 5), bool)
    keep[np.arange(2)[:, None], pos] = False
    assert np.array_equal(z[keep], x[keep]) and np.array_equal(z[1, [0, 1]], S) and np.array_equal(z[0, [0, 3]], S)


def test_drop_backward_matches_numerical_gradient(rng):
    """Dropping the special positions: their gradient is zero, the tokens' passes through (float64)."""
    idx = rows_with_eq(rng)
    lay = layout(idx, SpecialPositions(2, 1, (EQ,), {0: "S"}), block_size=12)
    h = rng.standard_normal((3, 9, 4))
    errs = check_layer(lambda h: drop_forward(h, lay.token_pos), drop_backward, [h])
    assert max(errs.values()) < 1e-7, f"relative errors {errs}"


# --------------------------------------------------------------------------- the GPT with special positions
@pytest.mark.parametrize("blocks", [(0,), (0, 1)], ids=["prefix-embedding", "prefix-layer"])
def test_gpt_backward_with_specials_matches_numerical_gradient(blocks, rng):
    """Every S_i, a block weight, wte and wpe get the gradient of the masked loss (float64)."""
    model = tiny_model()
    names = with_specials(model, 2, 1, blocks, rng)
    idx, targets, mask = rows_with_eq(rng), rng.integers(0, 11, (3, 6)), (rng.random((3, 6)) < 0.7).astype(float)

    def loss():
        return cross_entropy_forward(model.forward(idx)[0], targets, mask)[0]

    logits, cache = model.forward(idx)
    assert logits.shape == (3, 6, 11), f"logits keep the token positions only, got {logits.shape}"
    grads = model.backward(cross_entropy_backward(cross_entropy_forward(logits, targets, mask)[1]), cache)
    for name in [*names.values(), "blocks.1.attn.wq.weight", "wte.weight", "wpe.weight"]:
        check_gradient(loss, model.params[name], grads[name], name=name, max_entries=40, atol=0.0)


def test_classification_with_an_infix_matches_numerical_gradient(rng):
    """The head reads the token at ``last`` (the prompt's end), which sees the infix before it."""
    model = tiny_model()
    model.add_classification_head(2, seed=1)
    names = with_specials(model, 1, 2, (0, 1), rng)
    idx = rows_with_eq(rng)
    last, labels = (idx == EQ).argmax(axis=1), np.array([0, 1, 1])

    def loss():
        return cross_entropy_forward(model.classify(idx, last)[0], labels)[0]

    logits, cache = model.classify(idx, last)
    grads = model.backward(cross_entropy_backward(cross_entropy_forward(logits, labels)[1]), cache)
    for name in [*names.values(), "head.weight"]:
        check_gradient(loss, model.params[name], grads[name], name=name, max_entries=30, atol=0.0)


def test_prefix_embedding_equals_the_base_reading_new_vocabulary_tokens(rng):
    """PreEmbed = special tokens outside the vocabulary: a GPT whose vocabulary has n more rows (holding
    S_0 minus each position's embedding) gives the same logits at the token positions."""
    model = tiny_model()
    with_specials(model, 2, 1, (0,), rng)
    idx = np.array([[1, 2, EQ, 3, 4]])                        # specials at 0, 1 and before EQ: position 4
    logits, _ = model.forward(idx)
    S, wpe = model.params["prefix.states.0"], model.params["wpe.weight"]
    big = GPTConfig(vocab_size=14, block_size=12, n_layer=2, n_head=2, n_embd=8)
    params = {k: v.copy() for k, v in model.params.items() if not k.startswith("prefix")}
    params["wte.weight"] = np.concatenate([params["wte.weight"], S - wpe[[0, 1, 4]]])   # ids 11, 12, 13
    longer = np.array([[11, 12, 1, 2, 13, EQ, 3, 4]])
    reference, _ = GPT(big, params).forward(longer)
    expected = reference[:, [2, 3, 5, 6, 7], :11]            # the token positions; the real vocabulary's logits
    # the tied LM head of the reference has 3 more logits, which change nothing before the softmax
    assert np.allclose(logits, expected, atol=1e-12), f"max difference {np.abs(logits - expected).max():.2e}"


def test_tokens_before_the_infix_do_not_see_it(rng):
    """Causal attention: changing the infix's activations moves no logit at or before the prompt's
    tokens ahead of it, and moves the ones after it."""
    model = tiny_model()
    names = with_specials(model, 0, 2, (0, 1), rng)
    idx = np.array([[1, 2, 3, EQ, 4]])
    before, _ = model.forward(idx)
    model.params[names[1]] += rng.standard_normal(model.params[names[1]].shape)   # not a constant: LN removes those
    after, _ = model.forward(idx)
    assert np.array_equal(before[:, :3], after[:, :3]), "tokens before the infix must not see it"
    moved = np.abs(before[:, 3:] - after[:, 3:]).max(axis=-1)
    assert moved.min() > 1e-6, f"'=' and the answer must see the infix; largest logit change per position {moved}"


def test_no_specials_leaves_the_model_unchanged(rng):
    """model.specials = None is the plain GPT: the same logits as before any special position was set."""
    model = tiny_model()
    idx = rows_with_eq(rng)
    plain, _ = model.forward(idx)
    with_specials(model, 2, 1, (0,), rng)
    model.specials = None
    again, _ = model.forward(idx)
    assert np.array_equal(plain, again)
