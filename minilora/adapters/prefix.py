"""Prefix-embedding and prefix-layer tuning, alone or with LoRA (Hu et al. 2021, §5.1 and Appendix E).

PreEmbed ("prefix-embedding tuning"): l_p + l_i special tokens, not in the vocabulary, whose
embeddings train; l_p go before the tokens (prefix), l_i among them (infix).
    |Theta| = d_model x (l_p + l_i)
PreLayer ("prefix-layer tuning"): instead of the special tokens' embeddings only, "the activations
after every Transformer layer" at the special positions are replaced by trainable ones.
    |Theta| = L x d_model x (l_p + l_i)
LoRA+PE and LoRA+PL (Appendix E): a LoRA adapter and one of these at once (``PrefixConfig.lora``).

In minilora's terms (``minilora.nn.specials``) the trainable tensor S_i (n, C), n = l_p + l_i, is
the activations *entering* block i at the special positions. PreEmbed trains S_0 only: the
embedding layer's output there, which is "learning word embeddings (or equivalently the
activations after the embedding layer)" in the paper's words (the position embedding is a fixed
shift). PreLayer trains S_0 ... S_{L-1}: the input of every block, i.e. the embedding layer's output
and the output of every block but the last. That is L tensors, as the formula counts: the last
block's output at a special position feeds only that position's own logits, which no loss reads
(the causal mask keeps it from every token), so replacing it would add parameters with no gradient.

Where the infix goes: just before the token that ends the prompt ("=" or "?", whose ids the
config's ``infix_before`` holds), so "rev:hello=olleh." runs as [prefix] "rev:hello" [infix]
"=olleh." and the "=" that predicts the first answer token sees every special position. Each
special position takes a position of the context: with block_size positions a row may hold
block_size - l_p - l_i tokens (``minilora.nn.specials.room``); a prefix leaving none is refused.

Initialisation (Li & Liang 2021 found real words' activations a better start than random ones):
S_i is what the frozen base computes entering block i for a sequence of n tokens drawn from the
vocabulary with the config's seed. Unlike LoRA (B = 0), the adapted model therefore does not
equal the base at step 0: n extra positions sit in every sequence from the start.

No merge: the special positions are extra positions of every sequence, not a change of a weight.
They lengthen every forward by n positions, which is their inference cost; LoRA's part of
LoRA+PE merges as usual (``merge_adapter``), the special positions stay.

Shapes: B batch, T tokens, n = l_p + l_i special positions, C channels (d_model), L blocks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from minilora import checks
from minilora.adapters.adapted import AdaptedModel, AdapterParts
from minilora.adapters.config import LoraConfig
from minilora.adapters.files import ENVELOPE, register_config
from minilora.nn import backend
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.specials import SpecialPositions, room

MODES = ("embedding", "layer")          # PreEmbed: S_0 only; PreLayer: S_0 ... S_{L-1}


@register_config
@dataclass
class PrefixConfig:
    """Special positions with trainable activations (PreEmbed / PreLayer), optionally with LoRA."""
    peft_type: ClassVar[str] = "PREFIX"

    n_prefix: int = 2                 # l_p: special positions before the first token
    n_infix: int = 0                  # l_i: special positions just before the prompt's last token
    mode: str = "embedding"           # "embedding" (PreEmbed) or "layer" (PreLayer)
    infix_before: tuple = ()          # token ids the infix goes before ("=" and "?" for minilora's tasks)
    lora: LoraConfig | None = None    # LoRA+PE / LoRA+PL: a LoRA adapter as well (its own fields)
    modules_to_save: tuple = ()       # also trained fully, e.g. ("head",) after add_classification_head
    seed: int = 0                     # the vocabulary tokens whose activations start S_i

    def __post_init__(self):
        self.n_prefix = checks.integer("PrefixConfig.n_prefix (l_p)", self.n_prefix, minimum=0)
        self.n_infix = checks.integer("PrefixConfig.n_infix (l_i)", self.n_infix, minimum=0)
        if self.mode not in MODES:
            raise ValueError(f"unknown prefix mode {self.mode!r}; choose 'embedding' (PreEmbed: trainable special "
                             f"token embeddings) or 'layer' (PreLayer: trainable activations entering every block)")
        self.infix_before = tuple(checks.integer("an infix_before token id", t, minimum=0) for t in self.infix_before)
        self.modules_to_save = tuple([self.modules_to_save] if isinstance(self.modules_to_save, str)
                                     else self.modules_to_save)
        self.seed = checks.integer("PrefixConfig.seed", self.seed, minimum=0)
        if isinstance(self.lora, dict):                   # read from a file: the LoRA part's own fields
            self.lora = LoraConfig.from_dict(self.lora)
        if self.lora is not None and not isinstance(self.lora, LoraConfig):
            raise ValueError(f"PrefixConfig.lora must be a LoraConfig or None, got {type(self.lora).__name__}")
        SpecialPositions(self.n_prefix, self.n_infix, self.infix_before, {0: "S_0"})   # the same checks as the model's

    def to_dict(self) -> dict:
        return asdict(self)                               # the LoRA part as a dict of its fields

    @classmethod
    def from_dict(cls, d: dict) -> "PrefixConfig":
        """From ``to_dict``'s dict or a whole adapter_config.json: every field required, none unknown."""
        return checks.from_fields(cls, d, "PrefixConfig.from_dict", envelope=ENVELOPE)

    @property
    def n(self) -> int:
        return self.n_prefix + self.n_infix

    def blocks(self, n_layer: int) -> list[int]:
        """The blocks whose input at the special positions trains: [0] (PreEmbed) or all (PreLayer)."""
        return [0] if self.mode == "embedding" else list(range(n_layer))

    def build(self, model: GPT, base_linears: dict) -> AdapterParts:
        """S_i (n, C) for each trained block (key "prefix.states.{i}"), the special positions reading
        them, and the LoRA part's tensors and specs when ``lora`` is set."""
        if room(model.config.block_size, self.n) < 1:
            raise ValueError(f"l_p + l_i = {self.n} special positions leave no room for a token in block_size = "
                             f"{model.config.block_size}; use fewer special tokens (at most "
                             f"{model.config.block_size - 1}, and fewer than that to fit a task's rows)")
        blocks = self.blocks(model.config.n_layer)
        inits = real_token_states(model, base_linears, self.n, blocks, seed=self.seed)
        keys = {i: f"prefix.states.{i}" for i in blocks}
        specials = SpecialPositions(self.n_prefix, self.n_infix, self.infix_before, keys)
        parts = AdapterParts({keys[i]: inits[i] for i in blocks}, {}, specials=specials)
        if self.lora is not None:
            lora = self.lora.build(model, base_linears)
            parts = dataclasses.replace(parts, tensors={**parts.tensors, **lora.tensors}, specs=lora.specs,
                                        saved=lora.saved, frozen=lora.frozen)
        return parts


def real_token_states(model: GPT, base_linears: dict, n: int, blocks, *, seed: int = 0) -> dict:
    """block i -> S_i (n, C): what the base computes entering block i for n vocabulary tokens drawn with
    ``seed`` at positions 0 .. n-1 (the base's own layers, whatever adapter the model carries now)."""
    ids = backend.asarray(backend.rng(seed).integers(0, model.config.vocab_size, size=(1, n)))
    linears, norms, special = dict(model.linears), {k: dict(v) for k, v in model.norms.items()}, model.specials
    model.linears.update(base_linears)
    model.norms.update({k: {"weight": f"{k}.weight", "bias": f"{k}.bias"} for k in model.norms})
    model.specials = None
    try:
        x = model.params["wte.weight"][ids] + model.params["wpe.weight"][:n]     # (1, n, C)
        states = {}
        for i in range(max(blocks) + 1):
            if i in blocks:
                states[i] = x[0].copy()                                          # (n, C)
            x, _ = model._block_forward(i, x, False)
        return states
    finally:
        model.linears.clear()
        model.linears.update(linears)
        model.norms.update(norms)
        model.specials = special


def expected_trainable_count(config: PrefixConfig, gpt: GPTConfig) -> int:
    """d_model (l_p + l_i) for PreEmbed, L d_model (l_p + l_i) for PreLayer (Hu et al. 2021, §5.1);
    the LoRA part (if any) and modules_to_save are counted apart."""
    return len(config.blocks(gpt.n_layer)) * gpt.n_embd * config.n


class PrefixModel(AdaptedModel):
    """A frozen GPT with prefix adapters (the adapter host of ``minilora.adapters.adapted``)."""

    def __init__(self, model: GPT, config: PrefixConfig | None = None, adapter_name: str = "default"):
        super().__init__(model, config or PrefixConfig(), adapter_name)


def infix_token_ids(encode) -> tuple:
    """The ids of '=' and '?', the tokens that end minilora's prompts, by the tokenizer's ``encode``."""
    return tuple(int(t) for t in np.asarray(encode("=?")).reshape(-1))
