"""LoRA on a real GPT-2: read a Hugging Face folder, tune it in NumPy on a text file, hand it to PEFT.

    gpt, tok = load_hf("gpt2/")                          # config.json, model.safetensors, tokenizer files
    run = finetune_hf("gpt2/", "notes.txt")              # LoRA on Wq, Wv; the base stays frozen
    ids = generate(run.model, tok.encode("The"), 40)     # minilora.nn.generate
    run.model.save_adapter("adapter/")                   # PEFT's format, minilora's module names
    write_lora_model_adapter(run.model, "gpt2_adapter/") # PEFT on GPT2LMHeadModel (fused c_attn)

The model is minilora's GPT holding GPT-2's weights (``minilora.interop.hf_gpt2``); the text is
encoded with GPT-2's byte-level BPE (``minilora.interop.tokenizer``, the optional ``tokenizers``
library) and trained on in random windows of ``block_size`` tokens, like any text file.

The defaults follow the LoRA paper's GPT-2 runs (Hu et al. 2021, §5.5 and Table 11): LoRA on Wq and
Wv, learning rate 2e-4 with a linear schedule, no weight decay on the adapter. r = 8 and
lora_alpha = 16 are PEFT's common choice; the paper used r = 4, lora_alpha = 32.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import TextData
from minilora.experiments.train import History, TrainConfig, evaluate_text, train
from minilora.interop.hf_gpt2 import read_hf_gpt2
from minilora.interop.tokenizer import BPETokenizer, has_tokenizer
from minilora.nn.checkpoint import load_model
from minilora.nn.model import GPT


def default_hf_lora_config() -> LoraConfig:
    """r = 8, lora_alpha = 16 on Wq and Wv (the matrices Hu et al. 2021 adapt in GPT-2, §5.5)."""
    return LoraConfig(r=8, lora_alpha=16, target_modules=("wq", "wv"))


def default_hf_train_config() -> TrainConfig:
    """200 steps of B = 4 windows at lr 2e-4 (Hu et al. 2021, Table 11), warm-up 20, no weight decay."""
    return TrainConfig(steps=200, batch_size=4, lr=2e-4, warmup_steps=20, weight_decay=0.0, eval_every=200)


def load_hf(directory, *, dtype=None) -> tuple[GPT, BPETokenizer | None]:
    """(frozen GPT, its BPE tokenizer or None without tokenizer files) from a Hugging Face GPT-2 folder,
    or from a minilora checkpoint folder holding such a model's weights and tokenizer files (import-hf)."""
    if io.read_json(Path(directory) / "config.json").get("format") == "minilora.model":
        model, _ = load_model(directory, dtype=dtype)
    else:
        model = GPT(*read_hf_gpt2(directory, dtype=dtype))
    model.freeze()
    return model, BPETokenizer.from_folder(directory) if has_tokenizer(directory) else None


def text_windows(tokenizer, path, block_size: int) -> tuple[TextData, TextData]:
    """(train, validation): the file encoded to token ids, split 90/10 in file order; windows of block_size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {str(path)!r}; give the path of a UTF-8 text file")
    ids = np.array(tokenizer.encode(path.read_text(encoding="utf-8")), dtype=np.int64)
    need = 10 * (block_size + 1)                 # the last 10% must hold one window and its shifted target
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens; block_size = {block_size} needs at least {need} (the "
                         f"last 10% is kept for validation): use more text or a smaller --block-size")
    data = TextData(ids, tokenizer, block_size, source=str(path))
    return data.split(0.9)


@dataclass
class HFRun:
    """What ``finetune_hf`` returns: the adapted model, its tokenizer and what training measured."""
    model: LoraModel
    tokenizer: BPETokenizer
    history: History
    val_loss_before: float
    val_loss: float
    train_tokens: int
    extra: dict = field(default_factory=dict)


def finetune_hf(directory, text_file, *, lora_config: LoraConfig | None = None,
                train_config: TrainConfig | None = None, block_size: int = 128, dtype=None,
                eval_batches: int = 4) -> HFRun:
    """LoRA-tune the GPT-2 in ``directory`` on ``text_file``; the validation loss is measured before and after.

    block_size: tokens per training window (at most the model's n_positions).
    """
    base, tok = load_hf(directory, dtype=dtype)
    if tok is None:
        raise FileNotFoundError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
                                f"the text cannot be encoded without the model's own tokenizer")
    if not 1 <= block_size <= base.config.block_size:
        raise ValueError(f"block_size must be in 1..{base.config.block_size} (the model's n_positions), "
                         f"got {block_size}")
    cfg = train_config or default_hf_train_config()
    train_data, val_data = text_windows(tok, text_file, block_size)
    model = LoraModel(base, lora_config or default_hf_lora_config())
    measure = dict(batches=eval_batches, batch_size=cfg.batch_size)
    before = evaluate_text(model, val_data, **measure)["loss"]
    history = train(model, train_data, None, dataclasses.replace(cfg), desc=f"lora {Path(text_file).name}")
    after = evaluate_text(model, val_data, **measure)["loss"]
    return HFRun(model, tok, history, before, after, len(train_data))
