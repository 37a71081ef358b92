"""The two short fixed-seed runs whose losses are committed in tests/fixtures/golden_losses.json.

Both use the shipped recipes' settings at a small size: 20 steps of pretraining the base model
(its config, its task mix, its learning rate) from seed 0, and 20 steps of LoRA fine-tuning of the
shipped base on shift with the library's default LoRA config. scripts/make_golden_losses.py writes
the file; tests/test_golden.py checks new runs against it.
"""
import dataclasses

from minilora.data.datasets import make_mixture, make_splits
from minilora.data.tasks import PRETRAIN_TASKS
from minilora.experiments.finetune import default_lora_config, default_train_config, prepare
from minilora.experiments.pretrain import BLOCK_SIZE, base_config, load_base
from minilora.experiments.train import TrainConfig, train
from minilora.nn.model import GPT

STEPS = 20


def pretrain_losses(**train_options) -> list[float]:
    """Losses of 20 steps of pretraining (base config, seed 0, B = 48, lr 1e-3 after 5 warmup steps)."""
    model = GPT(base_config(), seed=0, dtype=train_options.pop("dtype", None))
    data = make_mixture(PRETRAIN_TASKS, 48 * STEPS, seed=0, block_size=BLOCK_SIZE)
    config = TrainConfig(**{**dict(steps=STEPS, batch_size=48, lr=1e-3, warmup_steps=5, eval_every=10**6,
                                   progress=False), **train_options})
    return train(model, data, None, config).losses


def lora_losses(**train_options) -> list[float]:
    """Losses of 20 steps of LoRA on shift from the shipped base (default LoRA config and fine-tuning lr, seed 0)."""
    base = load_base(dtype=train_options.pop("dtype", None))[0]
    data, _ = make_splits("shift", 32 * STEPS, 1, seed=0, block_size=base.config.block_size)
    model = prepare(base, "lora", data, default_lora_config("generation"), seed=0)
    config = dataclasses.replace(default_train_config("lora"), steps=STEPS, warmup_steps=5, eval_every=10**6,
                                 progress=False, **train_options)
    return train(model, data, None, config).losses


RUNS = {"pretrain": pretrain_losses, "lora": lora_losses}
