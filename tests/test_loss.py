"""Specification of the batch contract (minilora.nn.loss): a batch that does not fit the model is a clear error
naming the array and the range, never a raw IndexError or NumPy message from inside a layer."""
import numpy as np
import pytest

from minilora.nn.loss import forward_loss, loss_and_grads
from minilora.nn.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def _lm_batch(B=2, T=5):
    rng = np.random.default_rng(0)
    return {"x": rng.integers(0, 11, (B, T)), "y": rng.integers(0, 11, (B, T)), "mask": np.ones((B, T), np.float32)}


def _cls_model_and_batch():
    model = GPT(TINY, seed=0)
    model.add_classification_head(3)
    return model, {"x": np.ones((2, 5), np.int64), "last": np.array([4, 2]), "labels": np.array([0, 2])}


@pytest.mark.parametrize("key, value, pattern", [
    ("y", np.array([[0, 1, 2, 3, 11]] * 2), r"batch\['y'\] holds values in \[0, 11\]"),     # target = V
    ("y", np.array([[0, 1, 2, 3, -1]] * 2), r"batch\['y'\] holds values in \[-1, 3\]"),
    ("y", np.zeros((2, 4), np.int64), r"batch\['y'\] must be an integer array of shape \(2, 5\)"),
    ("y", np.zeros((2, 5)), r"batch\['y'\] must be an integer array"),                     # float targets
    ("mask", np.ones((2, 4)), r"batch\['mask'\] has shape"),
])
def test_targets_that_do_not_fit_the_model_are_named(key, value, pattern):
    """Targets outside [0, V), of another shape or not integers: a ValueError naming batch[key]."""
    batch = {**_lm_batch(), key: value}
    with pytest.raises(ValueError, match=pattern):
        loss_and_grads(GPT(TINY, seed=0), batch)


def test_an_empty_batch_is_a_clear_error():
    """B = 0 would average over nothing: refused with a message saying the batch is empty."""
    batch = {k: v[:0] for k, v in _lm_batch().items()}
    with pytest.raises(ValueError, match="the batch is empty"):
        forward_loss(GPT(TINY, seed=0), batch)


@pytest.mark.parametrize("key, value, pattern", [
    ("labels", np.array([0, 3]), r"batch\['labels'\] holds values in \[0, 3\], outside the 3 classes"),
    ("last", np.array([4, 5]), r"batch\['last'\] holds values in \[4, 5\], outside the 5 positions"),
    ("last", np.array([-1, 0]), r"batch\['last'\] holds values in \[-1, 0\]"),
    ("last", np.array([1]), r"batch\['last'\] must be an integer array of shape \(2,\)"),
])
def test_labels_and_row_pointers_that_do_not_fit_are_named(key, value, pattern):
    """A label outside the head's classes or a row pointer outside the sequence: a ValueError naming it."""
    model, batch = _cls_model_and_batch()
    with pytest.raises(ValueError, match=pattern):
        loss_and_grads(model, {**batch, key: value})
