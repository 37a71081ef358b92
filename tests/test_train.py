"""Specification of the training loop: determinism, learning, evaluation, the NaN guard."""
import math

import numpy as np
import pytest

from minilora.data.datasets import TextData, make_dataset
from minilora.nn.checkpoint import load_model
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.optim import AdamW
from minilora.experiments.train import NonFiniteLossError, TrainConfig, evaluate, train

TINY = GPTConfig(vocab_size=56, block_size=24, n_layer=2, n_head=2, n_embd=32)


def quick(steps=60, **kw):
    return TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup_steps=5, eval_every=30, progress=False, **kw)


def test_fixed_seed_training_is_bit_reproducible():
    """Two runs with the same seeds give identical losses and identical weights."""
    data = make_dataset("copy", 400, seed=0, block_size=24)
    runs = []
    for _ in range(2):
        model = GPT(TINY, seed=0)
        runs.append((train(model, data, None, quick(20)).losses, model.params["blocks.1.mlp.fc.weight"]))
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])


def test_short_training_run_learns_the_copy_task():
    """60 AdamW steps on copy take the loss from about log(V) to below 85% of it."""
    data = make_dataset("copy", 2000, seed=0, block_size=24)
    hist = train(GPT(TINY, seed=0), data, None, quick(60))
    start, end = np.mean(hist.losses[:3]), np.mean(hist.losses[-5:])
    assert start == pytest.approx(math.log(56), rel=0.1), f"initial loss {start:.3f} vs log V = {math.log(56):.3f}"
    assert end < 0.85 * start, f"loss went from {start:.3f} to {end:.3f}"


def greedy_exact_match(model, data):
    """Independent reference: decode each answer token by token and compare strings."""
    correct = 0
    for x, y, m in zip(data.x, data.y, data.mask):
        first = int(np.argmax(m))                  # x[first] is the last prompt token ("=")
        n_answer = int(m.sum())
        seq = list(x[:first + 1])
        for _ in range(n_answer):
            logits, _ = model.forward(np.array([seq]))
            seq.append(int(logits[0, -1].argmax()))
        correct += seq[first + 1:] == list(y[first:first + n_answer])
    return correct / len(data)


def test_teacher_forced_exact_match_equals_greedy_decoding():
    """evaluate()'s one-pass accuracy equals token-by-token greedy decoding, on a half-trained model."""
    data = make_dataset("reverse", 40, seed=3, block_size=24)
    model = GPT(TINY, seed=1)
    train(model, make_dataset("reverse", 2000, seed=0, block_size=24), None, quick(80))
    acc = evaluate(model, data)["accuracy"]
    assert acc == pytest.approx(greedy_exact_match(model, data))
    assert 0 < acc or greedy_exact_match(model, data) == 0


def test_classification_training_learns_beyond_chance():
    """A new head reading the final '?' can fit 16 labelled examples (loss far below log 2)."""
    data = make_dataset("palindrome", 16, seed=0, block_size=24)
    model = GPT(TINY, seed=0)
    model.add_classification_head(2)
    hist = train(model, data, data, quick(60))
    assert hist.final["loss"] < 0.3 * math.log(2) and hist.final["accuracy"] > 0.9, hist.final


class _PoisonAfter(AdamW):
    """AdamW that writes a NaN into the weights after ``n`` steps (to trigger the guard)."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.count = n, 0

    def step(self, params, grads):
        super().step(params, grads)
        self.count += 1
        if self.count == self.n:
            params["ln_f.weight"][0] = np.nan


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN loss raises NonFiniteLossError naming the last checkpoint, which is finite and loads."""
    data = make_dataset("copy", 200, seed=0, block_size=24)
    with pytest.raises(NonFiniteLossError, match=r"step 5\)"):
        train(GPT(TINY, seed=0), data, None, TrainConfig(steps=20, batch_size=8, warmup_steps=2, eval_every=5, progress=False),
              optimizer=_PoisonAfter(7, lr=1e-3), checkpoint_dir=tmp_path / "ckpt")
    model, _ = load_model(tmp_path / "ckpt")
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_text_file_dataset_trains(tmp_path):
    """Any plain text file is a dataset: training on it lowers the next-character loss."""
    path = tmp_path / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    data = TextData.from_file(path, block_size=24)
    hist = train(GPT(TINY, seed=0), data, data, quick(40))
    assert np.mean(hist.losses[-5:]) < 0.7 * np.mean(hist.losses[:3])


def test_frozen_parameters_are_not_changed_by_training():
    """Training with a frozen subset leaves those arrays bit-identical."""
    model = GPT(TINY, seed=0)
    model.freeze(["wte.weight", "blocks.0.attn.wq.weight"])
    before = {k: model.params[k].copy() for k in ("wte.weight", "blocks.0.attn.wq.weight")}
    train(model, make_dataset("copy", 200, seed=0, block_size=24), None, quick(5))
    assert all(np.array_equal(model.params[k], v) for k, v in before.items())


# --------------------------------------------------------------------------- settings checked before training
@pytest.mark.parametrize("field, value", [("steps", 0), ("steps", -1), ("steps", 2.5), ("lr", 0), ("lr", -1e-3),
                                          ("lr", math.nan), ("lr", math.inf), ("eval_every", 0), ("batch_size", 0),
                                          ("workers", 0), ("save_every", 0), ("seed", -1), ("weight_decay", -0.1),
                                          ("grad_clip", math.nan), ("steps", "10")])
def test_a_setting_that_would_train_nothing_or_something_else_is_refused(field, value):
    """steps 0 or -1 would save an untrained model, lr 0 would train nothing, NaN poisons it: ValueError naming it."""
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_training_a_model_with_nothing_trainable_is_an_error():
    """Everything frozen, or the only adapter disabled or deleted: training would change nothing, so it is refused."""
    from minilora.adapters.config import LoraConfig
    from minilora.adapters.lora_model import LoraModel

    data = make_dataset("copy", 40, seed=0, block_size=24)
    frozen = GPT(TINY, seed=0)
    frozen.freeze()
    with pytest.raises(ValueError, match="no trainable parameter"):
        train(frozen, data, None, quick(2))
    lm = LoraModel(GPT(TINY, seed=0), LoraConfig(r=2))
    with lm.disable_adapter(), pytest.raises(ValueError, match="no trainable parameter"):
        train(lm, data, None, quick(2))
    lm.delete_adapter("default")
    with pytest.raises(ValueError, match="no trainable parameter"):
        train(lm, data, None, quick(2))


def test_evaluating_no_examples_is_a_clear_error():
    """An empty test set is a ValueError, not a ZeroDivisionError."""
    data = make_dataset("copy", 4, seed=0, block_size=24)
    empty = type(data)(data.x[:0], data.y[:0], data.mask[:0], data.task, [], [])
    with pytest.raises(ValueError, match="no examples"):
        evaluate(GPT(TINY, seed=0), empty)


def test_a_setting_changed_after_construction_is_checked_when_training_starts():
    """cfg.steps = 0 set on an existing TrainConfig is refused by train(), not silently run."""
    config = quick(2)
    config.steps = 0
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        train(GPT(TINY, seed=0), make_dataset("copy", 40, seed=0, block_size=24), None, config)
