"""minilora: LoRA from first principles in NumPy, with every backward pass written by hand.

The public API in one import::

    from minilora import GPT, GPTConfig, LoraConfig, LoraModel, load_base, train, TrainConfig, evaluate

The package is laid out by who reads it: ``minilora.nn`` (the network and its math),
``minilora.adapters`` (LoRA and its relatives), ``minilora.fast`` (the optimised forms of nn,
tested equal to it), ``minilora.data`` (tasks and datasets), ``minilora.experiments`` (training,
fine-tuning, analyses, reports), ``minilora.classroom`` (exercises and grading).
"""
__version__ = "0.1.0"

from minilora.adapters.bitfit import BitFitConfig, BitFitModel
from minilora.adapters.bottleneck import AdapterConfig, AdapterModel
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.adapters.prefix import PrefixConfig, PrefixModel
from minilora.data.datasets import make_dataset, make_splits
from minilora.data.tasks import default_tokenizer
from minilora.experiments.finetune import finetune
from minilora.experiments.pretrain import load_base, pretrain
from minilora.experiments.train import TrainConfig, evaluate, train
from minilora.nn import backend
from minilora.nn.backend import set_backend
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT, GPTConfig

__all__ = ["AdapterConfig", "AdapterModel", "BitFitConfig", "BitFitModel", "GPT", "GPTConfig", "LoraConfig",
           "LoraModel", "PrefixConfig", "PrefixModel", "TrainConfig",
           "backend", "default_tokenizer", "evaluate", "finetune", "load_base", "load_model", "make_dataset",
           "make_splits", "pretrain", "save_model", "set_backend", "train"]
