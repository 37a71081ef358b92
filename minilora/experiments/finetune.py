"""Fine-tuning the base model on a downstream task, with LoRA or fully, through the same loop.

Both methods start from the same pretrained weights, see the same batches and are measured
the same way (accuracy, trainable parameters, optimizer-state bytes, file bytes, ms per step),
so their comparison is fair. Classification tasks get a new head that trains fully in both
methods (PEFT: modules_to_save; Hu et al. 2021 train the task head alongside LoRA too).
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from minilora import checks, io
from minilora.data.datasets import ClassificationData, TextData, make_splits
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.qbase import quantize_base
from minilora.nn.checkpoint import save_model
from minilora.nn.model import GPT
from minilora.experiments.pretrain import load_base
from minilora.experiments.train import History, TrainConfig, evaluate, evaluate_text, train

METHODS = ("lora", "full", "qlora", "dora", "qdora")   # qlora: LoRA on the base stored in 4 bits (NF4,
QUANTIZED = ("qlora", "qdora")                         # double quantization); dora: LoraConfig(use_dora=True);
DORA = ("dora", "qdora")                               # qdora: DoRA on the 4-bit base


def default_lora_config(task_kind: str = "generation") -> LoraConfig:
    """r = 4 on all four attention matrices, alpha = 2r.

    The paper adapts attention only (§4.2) and finds a fixed budget best spread over more matrix
    types at lower rank (Table 5). ``minilora findings`` measures the paper's own default (r = 8 on
    Wq, Wv) against full fine-tuning on every downstream task, on seeds.
    """
    return LoraConfig(r=4, lora_alpha=8, target_modules=("wq", "wk", "wv", "wo"),
                      modules_to_save=("head",) if task_kind == "classification" else ())


# The budget every comparison in minilora uses, and the learning rates per method and task that the
# sweep of minilora.experiments.lr_sweep chose in it (recorded in recorded/lr_sweep.json): the best of
# each method on each task, ties to the method's best overall. minilora.experiments.findings reads them.
STEPS, BATCH_SIZE = 400, 32            # full fine-tuning reaches >= 95% on every downstream task in it
SWEPT_LR = {"full": {"rotate": 1e-3, "double": 1e-3, "ordered": 1e-3},
            "lora": {"rotate": 1e-2, "double": 1e-2, "ordered": 5e-3}}


def default_train_config(method: str, task: str | None = None) -> TrainConfig:
    """The findings' budget and the swept learning rate of ``method`` on ``task`` (SWEPT_LR): LoRA takes a
    larger rate than full fine-tuning, as in the paper's recipes; QLoRA takes LoRA's. A task without a
    swept rate (or none) gets the method's smallest swept rate."""
    rates = SWEPT_LR["full" if method == "full" else "lora"]
    lr = rates.get(task, min(rates.values()))
    return TrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr=lr, warmup_steps=STEPS // 10,
                       eval_every=100, weight_decay=0.0)


@dataclass
class FinetuneResult:
    task: str
    method: str
    accuracy: float
    loss: float
    trainable_params: int
    optimizer_bytes: int
    file_bytes: int
    ms_per_step: float
    history: History
    model: object = field(repr=False, default=None)


def _copy_of(model: GPT) -> GPT:
    """An independent copy, so fine-tuning never touches the caller's base model."""
    params = {k: v.copy() for k, v in model.params.items()}
    clone = GPT(copy.deepcopy(model.config), params)
    clone.linears.update(model.linears)                       # a 4-bit base's layers read their parts by name
    clone.weight_parts = {k: list(v) for k, v in model.weight_parts.items()}
    clone.freeze()
    return clone


def prepare(base: GPT, method: str, task_data, lora_config: LoraConfig | None = None, *, seed: int = 0):
    """The model to train: a LoRA-wrapped copy of ``base`` (on a 4-bit copy for "qlora" and "qdora") or a fully
    trainable copy. "dora" and "qdora" use ``lora_config`` (default: the library's) with use_dora=True."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method in DORA and lora_config is not None and not lora_config.use_dora:
        raise ValueError(f"method {method!r} trains DoRA, but the LoraConfig given has use_dora=False; pass "
                         f"LoraConfig(..., use_dora=True) or no config")
    model = _copy_of(base)
    if method in QUANTIZED:                  # Dettmers et al. 2023: the frozen block linears in 4 bits
        quantize_base(model, "nf4", double_quant=True)
    classification = isinstance(task_data, ClassificationData)
    if classification:
        model.add_classification_head(task_data.n_classes, seed=seed)
    if method == "full":
        model.unfreeze()
        return model
    config = lora_config or default_lora_config("classification" if classification else "generation")
    if method in DORA:                       # Liu et al. 2024 (on the 4-bit base: QDoRA)
        config = dataclasses.replace(config, use_dora=True)
    if classification and "head" not in config.modules_to_save:
        raise ValueError("a classification task trains a new head: add 'head' to modules_to_save")
    return LoraModel(model, config, adapter_name="default")


def saved_bytes(model) -> int:
    """Bytes on disk of what this method must store: the adapter (LoRA) or the whole model (full)."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, LoraModel):
            model.save_adapter(tmp)
        else:
            save_model(model, tmp)
        return io.dir_size(tmp)


def finetune(task: str, method: str = "lora", *, base: GPT | None = None, lora_config: LoraConfig | None = None,
             train_config: TrainConfig | None = None, n_train: int = 4000, n_test: int = 500, seed: int = 0,
             progress: bool | None = None, text_file=None, **checkpoints) -> FinetuneResult:
    """Fine-tune ``base`` (default: the shipped base) on a shipped task or a text file.

    ``seed`` draws the data, the new head and the batch order; a ``train_config`` the caller gives
    keeps its own values (its seed and progress setting included), and is not modified.
    ``checkpoints``: checkpoint_dir, resume_from, run_info, passed to ``train`` (resumable runs).
    """
    n_train, n_test = checks.integer("n_train", n_train, minimum=1), checks.integer("n_test", n_test, minimum=1)
    base = base if base is not None else load_base()[0]
    cfg = train_config or dataclasses.replace(default_train_config(method, None if text_file else task), seed=seed)
    if progress is not None:
        cfg = dataclasses.replace(cfg, progress=progress)
    if text_file is not None:
        data = TextData.from_file(text_file, block_size=base.config.block_size)
        train_data, test_data = data.split(0.9)
        name = Path(text_file).name
    else:
        train_data, test_data = make_splits(task, n_train, n_test, seed=seed, block_size=base.config.block_size)
        name = task
    model = prepare(base, method, train_data, lora_config, seed=seed)
    history = train(model, train_data, test_data, cfg, desc=f"{method} {name}", **checkpoints)
    final = evaluate_text(model, test_data) if text_file is not None else evaluate(model, test_data)
    return FinetuneResult(task=name, method=method, accuracy=final["accuracy"], loss=final["loss"],
                          trainable_params=history.trainable_params, optimizer_bytes=history.optimizer_bytes,
                          file_bytes=saved_bytes(model), ms_per_step=history.ms_per_step,
                          history=history, model=model)
