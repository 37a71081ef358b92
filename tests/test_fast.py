"""Specification of minilora.fast: the optimised forms compute what the textbook forms compute.

Kernels (layer norm, GELU, attention) equal the textbook layers in float64, forward and backward;
the step on several threads is the one-thread step; freed memory is reused.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from minilora.nn import backend
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT, GPTConfig
from minilora import fast
from minilora.fast import memory
from minilora.fast.parallel import MIN_SHARD_TOKENS, blas_threads, default_workers, loss_and_grads, split_batch
from minilora.nn import attention, layers
from minilora.nn.kernels import TEXTBOOK
from minilora.experiments.train import TrainConfig, train
from minilora.data.datasets import make_dataset

from helpers import randomize

CONFIG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


# --------------------------------------------------------------------------- kernels equal the textbook
def assert_close(fast_value, textbook_value, what):
    np.testing.assert_allclose(fast_value, textbook_value, rtol=1e-12, atol=1e-14,
                               err_msg=f"{what}: the fast form differs from the textbook form")


def test_fast_layernorm_equals_the_textbook_layernorm_forward_and_backward(rng):
    """In-place arithmetic and BLAS row means give the textbook numbers (float64)."""
    x, gamma, beta, dy = (rng.standard_normal(s) for s in ((3, 5, 16), (16,), (16,), (3, 5, 16)))
    y_t, c_t = layers.layernorm_forward(x, gamma, beta)
    y_f, c_f = fast.kernels.layernorm_forward(x.copy(), gamma, beta)
    assert_close(y_f, y_t, "layernorm forward")
    for g_f, g_t, what in zip(fast.kernels.layernorm_backward(dy, c_f), layers.layernorm_backward(dy, c_t),
                              ("dx", "dgamma", "dbeta")):
        assert_close(g_f, g_t, f"layernorm {what}")


def test_fast_gelu_equals_the_textbook_gelu_forward_and_backward(rng):
    """The in-place GELU computes the tanh formula and its derivative exactly as written (float64)."""
    x, dy = 2.0 * rng.standard_normal((4, 7, 32)), rng.standard_normal((4, 7, 32))
    y_t, c_t = layers.gelu_forward(x)
    y_f, c_f = fast.kernels.gelu_forward(x)
    assert_close(y_f, y_t, "gelu forward")
    assert_close(fast.kernels.gelu_backward(dy, c_f), layers.gelu_backward(dy, c_t), "gelu backward")


def test_fast_attention_equals_the_textbook_attention_forward_and_backward(rng):
    """Scale on q, softmax in place and row sums from dy . y: the same dq, dk, dv (float64)."""
    q, k, v, dy = (rng.standard_normal((2, 6, 8)) for _ in range(4))
    y_t, c_t = attention.attention_forward(q, k, v, 2)
    y_f, c_f = fast.attention.attention_forward(q, k, v, 2)
    assert_close(y_f, y_t, "attention forward")
    for g_f, g_t, what in zip(fast.attention.attention_backward(dy, c_f), attention.attention_backward(dy, c_t),
                              ("dq", "dk", "dv")):
        assert_close(g_f, g_t, f"attention {what}")


def test_a_model_with_fast_kernels_gives_the_textbook_logits_and_gradients(rng):
    """Swapping the kernel set changes no logit and no gradient beyond rounding (float64, whole model)."""
    model = float64_model()
    batch = uneven_lm_batch(rng)
    loss_t, grads_t = loss_and_grads(model, batch, workers=1)
    with fast.use_kernels(model):
        assert model.kernels is fast.FAST
        loss_f, grads_f = loss_and_grads(model, batch, workers=1)
    assert model.kernels is TEXTBOOK, "the model's own kernel set must come back after the block"
    assert loss_f == pytest.approx(loss_t, rel=1e-12)
    for name in grads_t:
        assert_close(grads_f[name], grads_t[name], name)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 6)])
def test_row_sums_and_means_equal_numpy_reductions_over_the_last_axis(shape, rng):
    x = rng.standard_normal(shape)
    assert fast.kernels.sum_last(x).shape == shape[:-1] + (1,)
    assert np.allclose(fast.kernels.sum_last(x), x.sum(axis=-1, keepdims=True), rtol=1e-13, atol=1e-13)
    assert np.allclose(fast.kernels.mean_last(x[..., ::2]), x[..., ::2].mean(axis=-1, keepdims=True), rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------- worker threads


def float64_model(seed=0):
    return GPT(CONFIG, seed=seed, dtype=np.float64)


def uneven_lm_batch(rng, B=7, T=8):
    """Masks of different lengths per row, so shards hold different numbers of loss positions."""
    mask = (rng.random((B, T)) < 0.6).astype(np.float64)
    mask[:, -1] = 1.0
    return {"x": rng.integers(0, 11, (B, T)), "y": rng.integers(0, 11, (B, T)), "mask": mask}


def assert_same_step(model, batch, workers):
    loss1, grads1 = loss_and_grads(model, batch, workers=1)
    lossn, gradsn = loss_and_grads(model, batch, workers=workers)
    assert lossn == pytest.approx(loss1, rel=1e-12)
    assert set(gradsn) == set(grads1)
    for name in grads1:
        np.testing.assert_allclose(gradsn[name], grads1[name], rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_sharded_step_equals_one_thread_step_for_language_modelling(workers):
    """Weighting each shard by its share of the masked positions gives the full-batch loss and gradients."""
    assert_same_step(float64_model(), uneven_lm_batch(np.random.default_rng(0)), workers)


def test_sharded_step_equals_one_thread_step_for_classification():
    rng = np.random.default_rng(1)
    model = float64_model()
    model.add_classification_head(3)
    batch = {"x": rng.integers(0, 11, (6, 8)), "last": rng.integers(0, 8, 6), "labels": rng.integers(0, 3, 6)}
    assert_same_step(model, batch, 2)


def test_sharded_step_equals_one_thread_step_for_lora():
    """Only A and B get gradients, on any number of threads, and they match the one-thread step."""
    rng = np.random.default_rng(2)
    lm = LoraModel(float64_model(), LoraConfig(r=2, target_modules=("wq", "wv")))
    randomize(lm, "lora_B", rng)
    assert_same_step(lm, uneven_lm_batch(rng), 2)


def test_shard_without_loss_positions_is_skipped():
    """A shard whose mask is all zero holds nothing to learn from and must not raise."""
    rng = np.random.default_rng(3)
    batch = uneven_lm_batch(rng, B=4)
    batch["mask"][:2] = 0.0
    assert_same_step(float64_model(), batch, 2)


def test_split_batch_covers_every_row_once_in_order():
    batch = {"x": np.arange(10)[:, None], "y": np.arange(10)[:, None]}
    shards = split_batch(batch, 3)
    assert [len(s["x"]) for s in shards] == [3, 3, 4]
    assert np.array_equal(np.concatenate([s["y"] for s in shards]), batch["y"])
    assert len(split_batch(batch, 20)) == 10           # never an empty shard


def test_default_workers_gives_every_worker_enough_tokens_and_at_least_one_row():
    assert default_workers({"x": np.zeros((8, 16))}) == 1                   # 128 tokens: one thread
    for B, T in ((32, 24), (3, 512), (64, 64)):
        workers = default_workers({"x": np.zeros((B, T))})
        assert 1 <= workers <= min(backend.cpu_count(), B)
        assert workers == 1 or B * T / workers >= MIN_SHARD_TOKENS


def test_workers_below_one_are_refused():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        loss_and_grads(float64_model(), uneven_lm_batch(rng), workers=0)


def test_lora_dropout_keeps_its_masks_reproducible_on_many_workers():
    """A model that draws dropout masks runs on one thread: same seed, same gradients."""
    def grads(workers):
        lm = LoraModel(float64_model(), LoraConfig(r=2, lora_dropout=0.3))
        randomize(lm, "lora_B", np.random.default_rng(5))
        return loss_and_grads(lm, uneven_lm_batch(np.random.default_rng(6)), workers=workers)[1]
    serial, threaded = grads(1), grads(4)
    for name in serial:
        assert np.array_equal(serial[name], threaded[name]), name


def test_blas_thread_limit_applies_inside_the_block_and_is_lifted_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    def blas_thread_counts():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    before = blas_thread_counts()
    with blas_threads(1):
        assert all(n == 1 for n in blas_thread_counts())
    assert blas_thread_counts() == before


def test_training_on_two_workers_is_reproducible_and_learns():
    """A fixed worker count gives bit-identical runs; the loss falls as on one thread."""
    data = make_dataset("copy", 400, seed=0, block_size=24)
    config = GPTConfig(vocab_size=56, block_size=24, n_layer=2, n_head=2, n_embd=32)
    cfg = TrainConfig(steps=30, batch_size=16, lr=1e-2, warmup_steps=5, progress=False, workers=2)
    runs = [train(GPT(config, seed=0), data, None, cfg).losses for _ in range(2)]
    assert runs[0] == runs[1]
    assert np.mean(runs[0][-5:]) < 0.9 * np.mean(runs[0][:3])


FAULT_PROBE = """
import resource, numpy as np
from minilora.nn import backend
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.optim import AdamW
from minilora.fast import FAST, memory
from minilora.fast.parallel import loss_and_grads
memory.keep_freed_memory()
model = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_embd=128), seed=0)
model.kernels = FAST
rng = np.random.default_rng(0)
batch = {"x": rng.integers(0, 64, (16, 64)), "y": rng.integers(0, 64, (16, 64)), "mask": np.ones((16, 64), np.float32)}
opt = AdamW()
def step():
    opt.step(model.params, loss_and_grads(model, batch, workers=2)[1])
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(memory.keep_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and glibc's mallopt are Linux's")
def test_training_steps_reuse_freed_memory_instead_of_faulting_in_new_pages():
    """After warm-up a step touches no new page; with the setting off, the same step faults thousands."""
    def faults_per_step(keep):
        env = {**os.environ, "MINILORA_KEEP_FREED_MEMORY": keep, "OPENBLAS_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", FAULT_PROBE], env=env, capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept == "True", float(faults)
    kept_on, faults_on = faults_per_step("1")
    kept_off, faults_off = faults_per_step("0")
    if not kept_on:
        pytest.skip("the C library is not glibc")
    assert not kept_off and faults_off > 1000, f"the probe should fault without the setting ({faults_off})"
    assert faults_on < 0.05 * faults_off, (faults_on, faults_off)    # measured: 0-50 against 4,600-6,600
