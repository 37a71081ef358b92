"""Pretraining the small base model that LoRA later adapts, and loading the shipped copy.

The base model learns a mix of character tasks (copy, reverse, sort of words of letters or of
digits; see ``minilora.data.tasks``). The downstream tasks (rotate, double, ordered) are related but
new: that is the setting of Hu et al. 2021, §1, a pretrained model adapted to tasks it was not
trained on. The digits matter: a base that never wrote a digit leaves LoRA, whose embeddings stay
frozen, unable to learn arithmetic at all (docs/findings.md), as an LLM that never saw a token would.

``minilora/checkpoints/base`` ships the result of ``minilora pretrain`` with the defaults
below, so tutorials and the demo start in seconds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from minilora.data.datasets import make_dataset, make_mixture
from minilora.data.tasks import PRETRAIN_TASKS, CharTokenizer, default_tokenizer
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT, GPTConfig
from minilora.experiments.train import TrainConfig, evaluate, train

SHIPPED_BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "base"
BLOCK_SIZE = 24          # T: the longest task example ("srt:" + 8 + "=" + 8 + ".") is 22 tokens


def base_config(vocab_size: int | None = None) -> GPTConfig:
    """The shipped base model: 4 layers, 4 heads, C = 128 (about 0.8 M parameters, 3.2 MB)."""
    V = vocab_size or default_tokenizer().vocab_size
    return GPTConfig(vocab_size=V, block_size=BLOCK_SIZE, n_layer=4, n_head=4, n_embd=128)


@dataclass
class PretrainConfig:
    tasks: tuple = PRETRAIN_TASKS   # the pretraining mix
    n_train: int = 60000     # generated training examples (an even mix of the tasks)
    n_eval: int = 600        # held-out examples per task for the accuracy report
    seed: int = 0            # weights, data and batch order
    train: TrainConfig = None

    def __post_init__(self):
        if self.train is None:
            # letters only: lr 1e-3 learned sort to 99.5% in 3000 steps (2e-3, 3e-3 stalled near 97-98%);
            # with a digit word in 4, 3000 steps left letter sort undertrained (98.8%), 4000 give it as
            # many letter words as before
            self.train = TrainConfig(steps=4000, batch_size=48, lr=1e-3, warmup_steps=100,
                                     eval_every=250)


def pretrain(cfg: PretrainConfig | None = None, *, out_dir=None, progress: bool = True, **checkpoints):
    """Train a base model from scratch; returns (model, history, accuracy per task).

    ``checkpoints``: checkpoint_dir, resume_from, run_info, passed to ``train`` (resumable runs).
    """
    cfg = cfg or PretrainConfig()
    train_config = dataclasses.replace(cfg.train, progress=progress)      # the caller's config stays as it is
    tok = default_tokenizer()
    model = GPT(base_config(tok.vocab_size), seed=cfg.seed)
    data = make_mixture(cfg.tasks, cfg.n_train, seed=cfg.seed, block_size=BLOCK_SIZE)
    held_out = make_mixture(cfg.tasks, cfg.n_eval, seed=cfg.seed + 10_000, block_size=BLOCK_SIZE)
    history = train(model, data, held_out, train_config, desc="pretrain", **checkpoints)
    accuracy = task_accuracy(model, cfg.tasks, seed=cfg.seed + 20_000, n=cfg.n_eval)
    if out_dir is not None:
        save_model(model, out_dir, extra={"tokenizer": tok.to_dict(), "pretrain_tasks": list(cfg.tasks),
                                          "accuracy": accuracy, "pretrain": asdict(cfg)})
    return model, history, accuracy


def task_accuracy(model: GPT, tasks=PRETRAIN_TASKS, *, seed: int = 20_000, n: int = 600) -> dict[str, float]:
    """Exact-match accuracy per task on ``n`` fresh examples each."""
    return {t: evaluate(model, make_dataset(t, n, seed=seed, block_size=model.config.block_size))["accuracy"]
            for t in tasks}


def base_info(path=None) -> dict:
    """What the base's config.json records about how it was made (tasks, recipe, accuracy)."""
    from minilora.io import read_json

    return read_json(Path(path or SHIPPED_BASE) / "config.json").get("extra", {})


def load_base(path=None, *, dtype=None) -> tuple[GPT, CharTokenizer]:
    """The shipped pretrained base (or the one at ``path``) and its tokenizer."""
    path = Path(path) if path is not None else SHIPPED_BASE
    if not (path / "config.json").exists():
        hint = "run `minilora pretrain` to create it" if path == SHIPPED_BASE else "check the path"
        raise FileNotFoundError(f"no base model at {path}; {hint}")
    model, extra = load_model(path, dtype=dtype)
    tok = CharTokenizer.from_dict(extra["tokenizer"]) if "tokenizer" in extra else default_tokenizer()
    model.freeze()           # a loaded base is frozen; fine-tuning decides what trains
    return model, tok
