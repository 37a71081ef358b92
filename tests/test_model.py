"""Specification of the GPT model: shapes, gradients of every parameter, freezing, checkpoints."""
import numpy as np
import pytest

from minilora import io
from minilora.nn.gradcheck import check_gradient
from minilora.nn.layers import cross_entropy_backward, cross_entropy_forward
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT, GPTConfig, param_shapes

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_model(seed=0):
    """A float64 model with every parameter random and O(1).

    GPT-2's N(0, 0.02) initialisation makes some gradients (Wq, Wk) ~1e-6, where a check
    would pass on the absolute tolerance alone; O(1) weights make every check a relative one.
    Zero biases and unit LayerNorm gains could hide a wrong gradient too, so they are random.
    """
    model = GPT(TINY, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 7)
    for name, p in model.params.items():
        centre = 1.0 if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")) else 0.0
        p[...] = centre + 0.3 * rng.standard_normal(p.shape)
    return model


def batch(rng, B=2, T=6, V=11):
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), (rng.random((B, T)) < 0.7).astype(float)


def test_forward_gives_one_logit_per_token_and_vocab_entry(rng):
    """logits have shape (B, T, V)."""
    logits, _ = tiny_model().forward(rng.integers(0, 11, (3, 5)))
    assert logits.shape == (3, 5, 11)


def test_parameter_count_matches_the_gpt2_formula():
    """V C + T C + L (12 C^2 + 13 C) + 2 C parameters (weights tied)."""
    C, L = TINY.n_embd, TINY.n_layer
    expected = TINY.vocab_size * C + TINY.block_size * C + L * (12 * C * C + 13 * C) + 2 * C
    assert tiny_model().num_params() == expected


def test_weights_are_stored_d_out_by_d_in():
    """The MLP's fc is (4C, C) and proj is (C, 4C), as the paper and PyTorch store them."""
    shapes = param_shapes(TINY)
    assert shapes["blocks.0.mlp.fc.weight"] == (32, 8) and shapes["blocks.0.mlp.proj.weight"] == (8, 32)


@pytest.mark.parametrize("name", sorted(param_shapes(TINY)))
def test_model_backward_matches_numerical_gradient(name, rng):
    """The gradient of every parameter of the whole model agrees with central differences (float64)."""
    model = tiny_model()
    idx, targets, mask = batch(rng)

    def loss():
        return cross_entropy_forward(model.forward(idx)[0], targets, mask)[0]

    logits, cache = model.forward(idx)
    _, ce_cache = cross_entropy_forward(logits, targets, mask)
    grads = model.backward(cross_entropy_backward(ce_cache), cache)
    atol = 1e-9 if name.endswith("attn.wk.bias") else 0.0   # the key bias gradient is exactly 0 (softmax shift)
    check_gradient(loss, model.params[name], grads[name], name=name, max_entries=40, atol=atol)


def test_classification_head_backward_matches_numerical_gradient(rng):
    """Through the pooled position and the new head, every trainable gradient is right."""
    model = tiny_model()
    model.add_classification_head(3, seed=1)
    idx = rng.integers(0, 11, (4, 6))
    last, labels = np.array([5, 3, 4, 2]), np.array([0, 2, 1, 2])

    def loss():
        return cross_entropy_forward(model.classify(idx, last)[0], labels)[0]

    logits, cache = model.classify(idx, last)
    grads = model.backward(cross_entropy_backward(cross_entropy_forward(logits, labels)[1]), cache)
    for name in ("head.weight", "head.bias", "blocks.1.attn.wv.weight", "wte.weight", "wpe.weight"):
        check_gradient(loss, model.params[name], grads[name], name=name, max_entries=30, atol=0.0)


def test_frozen_parameters_get_no_gradient(rng):
    """Only names in model.trainable appear in the gradient dict."""
    model = tiny_model()
    model.freeze()
    model.unfreeze(["blocks.1.attn.wq.weight", "ln_f.bias"])
    idx, targets, mask = batch(rng)
    logits, cache = model.forward(idx)
    grads = model.backward(cross_entropy_backward(cross_entropy_forward(logits, targets, mask)[1]), cache)
    assert set(grads) == {"blocks.1.attn.wq.weight", "ln_f.bias"}


def test_model_is_causal(rng):
    """Changing the last token changes no earlier logit."""
    model = tiny_model()
    idx = rng.integers(0, 11, (1, 6))
    a, _ = model.forward(idx)
    idx[0, -1] = (idx[0, -1] + 1) % 11
    b, _ = model.forward(idx)
    assert np.allclose(a[0, :-1], b[0, :-1]) and not np.allclose(a[0, -1], b[0, -1])


def test_same_seed_gives_identical_weights():
    """Initialisation is deterministic in the seed and differs between seeds."""
    a, b, c = GPT(TINY, seed=3), GPT(TINY, seed=3), GPT(TINY, seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["wte.weight"], c.params["wte.weight"])


def test_n_embd_not_divisible_by_n_head_is_a_clear_error():
    """The error names both numbers."""
    with pytest.raises(ValueError, match="n_embd = 10 is not divisible by n_head = 4"):
        GPTConfig(n_embd=10, n_head=4)


def test_sequence_longer_than_context_is_a_clear_error():
    """T > block_size names the context length and the fix."""
    with pytest.raises(ValueError, match="longer than the context block_size = 8"):
        tiny_model().forward(np.zeros((1, 9), dtype=np.int64))


def test_token_out_of_range_is_a_clear_error():
    """An id >= V is refused with the valid range."""
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        tiny_model().forward(np.array([[1, 11]]))


def test_wrong_input_shape_is_a_clear_error():
    """A 1-D token array is refused; the message asks for (B, T)."""
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        tiny_model().forward(np.array([1, 2, 3]))


def test_checkpoint_round_trip_preserves_every_parameter(tmp_path):
    """save_model then load_model gives the same config and bit-identical weights."""
    model = tiny_model()
    save_model(model, tmp_path / "ckpt", extra={"note": "x"})
    loaded, extra = load_model(tmp_path / "ckpt", dtype=np.float64)
    assert loaded.config == model.config and extra == {"note": "x"}
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)


def test_checkpoint_with_mismatched_config_is_refused(tmp_path):
    """A config.json that disagrees with the tensors is a CheckpointError naming the parameter."""
    save_model(tiny_model(), tmp_path / "a")
    meta = io.read_json(tmp_path / "a" / "config.json")
    meta["config"]["n_embd"] = 16
    io.write_json(tmp_path / "a" / "config.json", meta)
    with pytest.raises(io.CheckpointError, match="shape"):
        load_model(tmp_path / "a")


def test_checkpoint_from_another_save_is_refused(tmp_path):
    """Tensors from one save with the config.json of another fail the fingerprint check."""
    save_model(tiny_model(seed=0), tmp_path / "a")
    save_model(tiny_model(seed=1), tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(io.CheckpointError, match="fingerprint"):
        load_model(tmp_path / "a")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    """Loading from an empty folder names the missing file."""
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing")


def _subsets(names, rng, n_random=12):
    """The empty set, every single name, every name but one, and random subsets."""
    names = sorted(names)
    yield set()
    for k in names:
        yield {k}
        yield set(names) - {k}
    for _ in range(n_random):
        yield {k for k in names if rng.random() < 0.5}


@pytest.mark.parametrize("head", ["lm", "classification"])
def test_gradient_keys_are_exactly_the_trainable_names(head, rng):
    """For any trainable subset, backward returns a gradient for each of those names and no other.

    A frozen parameter with a gradient would be moved by the optimizer (the old frozen head.bias bug).
    """
    model = tiny_model()
    idx = rng.integers(0, 11, (2, 6))
    if head == "classification":
        model.add_classification_head(3)
        last, labels = np.array([5, 2]), np.array([0, 2])
        logits, cache = model.classify(idx, last)
        dlogits = cross_entropy_backward(cross_entropy_forward(logits, labels)[1])
    else:
        logits, cache = model.forward(idx)
        dlogits = cross_entropy_backward(cross_entropy_forward(logits, idx)[1])
    for subset in _subsets(model.params, np.random.default_rng(3)):
        model.trainable = set(subset)
        grads = model.backward(dlogits, cache)
        assert set(grads) == subset, f"trainable {sorted(subset)[:4]}: extra {sorted(set(grads) - subset)[:4]}"


def test_both_heads_are_ordinary_named_linear_layers():
    """The LM head is the linear "lm_head" reading the tied wte; a task head is the linear "head"."""
    model = tiny_model()
    assert model.linears["lm_head"].tensors == {"weight": "wte.weight"}
    model.add_classification_head(2)
    assert model.linears["head"].tensors == {"weight": "head.weight", "bias": "head.bias"}
    assert {s.kind for s in model.linears.values()} == {"linear"}
