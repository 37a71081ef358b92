"""Spec of minilora.nn.generate: the cached forward, sampling, and the decoding loop.

The cached forward is checked against the model's full forward in float64 (same sums per row:
1e-10 absolute on logits of size ~10). Greedy decoding is checked against teacher-forced exact match
on the shipped base, which is the equivalence minilora.experiments.train.correct_rows relies on.
"""
import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_dataset
from minilora.data.tasks import PRETRAIN_TASKS
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import correct_rows
from minilora.nn.generate import forward_cached, generate, sample_next

from helpers import TINY_LORA_BASE, randomize, tiny_float64_base


def adapted_model(rng):
    """A float64 LoRA model with non-zero B: the adapters must run in the cached path too."""
    lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, target_modules=("wq", "wv", "fc")))
    randomize(lm, ".lora_B.", rng, scale=0.3)
    return lm


# --------------------------------------------------------------------------- the cached forward
def test_prompt_then_one_token_per_step_gives_the_full_forward_logits(rng):
    """Cached: the prompt's 3 positions at once, then 5 single positions; full: all 8 at once."""
    lm = adapted_model(rng)
    idx = rng.integers(0, TINY_LORA_BASE.vocab_size, (2, TINY_LORA_BASE.block_size))
    full, _ = lm.forward(idx)                                            # (B, T, V)
    logits, cache = forward_cached(lm, idx[:, :3])
    parts = [logits]
    for t in range(3, idx.shape[1]):
        logits, cache = forward_cached(lm, idx[:, t:t + 1], cache)
        parts.append(logits)
    err = float(np.abs(np.concatenate(parts, axis=1) - full).max())
    assert err < 1e-10, f"expected the full forward's logits at every position, max error {err:.2e}"


def test_cached_forward_refuses_to_run_past_the_learned_positions(rng):
    """S + T > block_size has no position embedding: a clear error, not an index error."""
    lm = adapted_model(rng)
    _, cache = forward_cached(lm, rng.integers(0, 13, (1, TINY_LORA_BASE.block_size)))
    with pytest.raises(ValueError, match="exceed block_size"):
        forward_cached(lm, np.array([[1]]), cache)


# --------------------------------------------------------------------------- sampling
def test_temperature_zero_and_top_1_are_the_argmax(rng):
    """Greedy is argmax; keeping only the top 1 token gives it at any temperature."""
    logits = rng.standard_normal((4, 9))
    want = logits.argmax(axis=-1)
    greedy = sample_next(logits, temperature=0)
    top1 = sample_next(logits, temperature=2.0, top_k=1, rng=np.random.default_rng(0))
    assert np.array_equal(greedy, want) and np.array_equal(top1, want), f"expected {want}, received {greedy}, {top1}"


def test_samples_follow_softmax_of_logits_over_temperature():
    """20,000 draws: each token's frequency is within 4 standard errors of softmax(z / temperature)."""
    z, temperature, n = np.array([[1.0, 0.0, -1.0, 2.0]]), 1.5, 20_000
    draws = sample_next(np.repeat(z, n, axis=0), temperature=temperature, rng=np.random.default_rng(0))
    p = np.exp(z[0] / temperature) / np.exp(z[0] / temperature).sum()
    freq = np.bincount(draws, minlength=4) / n
    bound = 4 * np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) < bound).all(), f"expected frequencies {p}, received {freq} (bounds {bound})"


def test_top_k_never_samples_outside_the_k_largest():
    """top_k = 2 on logits [0, 3, 1, 2]: only tokens 1 and 3 ever come out."""
    draws = sample_next(np.tile([[0.0, 3.0, 1.0, 2.0]], (5000, 1)), temperature=5.0, top_k=2,
                        rng=np.random.default_rng(1))
    assert set(draws.tolist()) == {1, 3}, f"expected tokens {{1, 3}}, received {sorted(set(draws.tolist()))}"


# --------------------------------------------------------------------------- the loop
def test_greedy_decoding_is_the_same_with_and_without_the_cache_even_past_block_size(rng):
    """20 new tokens from a 5-token prompt with block_size 8: identical ids with and without the cache."""
    lm = adapted_model(rng)
    prompt = rng.integers(0, 13, 5)
    cached = generate(lm, prompt, 20, temperature=0)
    plain = generate(lm, prompt, 20, temperature=0, use_cache=False)
    assert cached.shape == (25,) and np.array_equal(cached[:5], prompt), f"received {cached}"
    assert np.array_equal(cached, plain), f"expected {plain}, received {cached}"


def test_the_seed_fixes_the_sample(rng):
    """Same seed, same tokens; the batch rows are sampled independently."""
    lm = adapted_model(rng)
    prompt = np.tile(rng.integers(0, 13, (1, 2)), (3, 1))
    a, b = (generate(lm, prompt, 6, temperature=1.0, seed=7) for _ in range(2))
    assert np.array_equal(a, b), f"expected the same sample twice, received\n{a}\n{b}"
    assert len({tuple(row) for row in a}) > 1, f"expected different rows from one prompt, received\n{a}"


def test_generation_stops_once_every_row_produced_the_stop_token(rng):
    """stop_id ends the loop early; the stop token is kept."""
    lm = adapted_model(rng)
    prompt = rng.integers(0, 13, 3)
    first = int(generate(lm, prompt, 1, temperature=0)[-1])
    out = generate(lm, prompt, 10, temperature=0, stop_id=first)
    assert out.tolist() == prompt.tolist() + [first], f"expected one new token {first}, received {out}"


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                                             ({"max_new_tokens": -1}, "max_new_tokens")])
def test_bad_settings_are_refused_by_name(rng, kwargs, message):
    """A negative temperature, a top_k outside 1..V or a negative length is a clear error."""
    lm = adapted_model(rng)
    with pytest.raises(ValueError, match=message):
        generate(lm, [1, 2], **{"max_new_tokens": 3, **kwargs})


@pytest.mark.parametrize("task", PRETRAIN_TASKS)
def test_greedy_decoding_answers_exactly_where_teacher_forced_argmax_is_right(task):
    """On the shipped base, generated answer == true answer exactly for the examples correct_rows counts."""
    base, tok = load_base(dtype=np.float64)
    data = make_dataset(task, 40, seed=5, block_size=base.config.block_size)
    logits, _ = base.forward(data.x)
    teacher = correct_rows(logits, {"y": data.y, "mask": data.mask})
    greedy = []
    for prompt, answer in zip(data.prompts, data.answers):
        out = generate(base, tok.encode(prompt), len(answer), temperature=0)
        greedy.append(tok.decode(out[len(prompt):]) == answer)
    assert np.array_equal(np.array(greedy), teacher), f"expected greedy == teacher forcing per example, " \
        f"received greedy {np.flatnonzero(greedy).tolist()} vs teacher {np.flatnonzero(teacher).tolist()}"
    assert teacher.mean() > 0.5, f"expected the base to know {task} (accuracy > 0.5), received {teacher.mean():.2f}"


def test_greedy_generation_on_an_imported_gpt2_equals_transformers_generate():
    """The tiny GPT-2 of tests/fixtures/hf_gpt2_bpe_tiny: 24 greedy tokens, the ones GPT2LMHeadModel.generate gave."""
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    from minilora.nn.model import GPT
    from interop_fixtures import FIXTURES, expected

    ref = expected(FIXTURES / "hf_gpt2_bpe_tiny")
    model = GPT(*read_hf_gpt2(FIXTURES / "hf_gpt2_bpe_tiny"))
    out = generate(model, ref["prompt"], 24, temperature=0)
    want = ref["greedy"].tolist()
    assert out.tolist() == want, f"expected transformers' {want}, received {out.tolist()}"
