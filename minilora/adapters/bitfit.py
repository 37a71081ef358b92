"""BitFit: train only the biases (Zaken et al. 2021; a baseline of Hu et al. 2021, §5.1).

Every weight matrix stays frozen; the bias vectors of the linear layers (and, by default, the
shifts beta of the layer norms) train. Per block of a GPT with width C:

    attn.wq, attn.wk, attn.wv, attn.wo   4 biases of C        4C
    mlp.fc                               1 bias of 4C         4C
    mlp.proj                             1 bias of C           C
    ln1, ln2 (layernorm_bias=True)       2 shifts of C        2C
and ln_f's shift once more:  |Theta| = L * 9C  (+ (2L + 1) C with the layer-norm shifts).

Layer-norm shifts are included by default because Zaken et al. train "the bias terms" of the
whole encoder, the LayerNorm's additive term among them (their §2 writes each LN with its own
bias); they are biases in every sense that matters here (an additive vector, C numbers per norm).
``layernorm_bias=False`` gives the linear biases only. The gains gamma stay frozen, as in BitFit.
The tied LM head has no bias; a classification head trains whole (``modules_to_save``).

As an adapter in the file sense, BitFit owns its own copies of the biases it trains: the host
(``minilora.adapters.adapted.AdaptedModel``) keeps them as "{bias name}.{adapter}", so the base's
biases never change, two BitFit adapters switch on one base, and ``merge_and_unload`` gives a plain
GPT with the trained biases in place: no extra computation at inference, like a merged LoRA.

Shapes: C channels, L blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from minilora import checks
from minilora.adapters.adapted import AdaptedModel, AdapterParts
from minilora.adapters.files import ENVELOPE, register_config
from minilora.nn.model import GPT, GPTConfig


@register_config
@dataclass
class BitFitConfig:
    """Train the biases of every block's linear layers (and the layer norms' shifts)."""
    peft_type: ClassVar[str] = "BITFIT"

    layernorm_bias: bool = True       # also the layer norms' shifts beta (Zaken et al. train them too)
    modules_to_save: tuple = ()       # also trained fully, e.g. ("head",) after add_classification_head
    seed: int = 0                     # nothing is drawn at random; kept for the host's interface

    def __post_init__(self):
        if not isinstance(self.layernorm_bias, bool):
            raise ValueError(f"BitFitConfig.layernorm_bias must be True or False, got {self.layernorm_bias!r}")
        self.seed = checks.integer("BitFitConfig.seed", self.seed, minimum=0)
        self.modules_to_save = tuple([self.modules_to_save] if isinstance(self.modules_to_save, str)
                                     else self.modules_to_save)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BitFitConfig":
        """From ``to_dict``'s dict or a whole adapter_config.json: every field required, none unknown."""
        return checks.from_fields(cls, d, "BitFitConfig.from_dict", envelope=ENVELOPE)

    def build(self, model: GPT, base_linears: dict) -> AdapterParts:
        """No new tensors: the host copies the biases named in ``saved`` and trains the copies."""
        return AdapterParts({}, {}, saved=bias_names(model.config, self.layernorm_bias))


def bias_names(config: GPTConfig, layernorm_bias: bool = True) -> list[str]:
    """The base params BitFit trains: 'blocks.0.attn.wq.bias', ... (and 'blocks.0.ln1.bias', ..., 'ln_f.bias')."""
    names = [f"{m}.bias" for m in config.linear_names()]
    return names + ([f"{n}.bias" for n in config.norm_names()] if layernorm_bias else [])


def expected_trainable_count(config: GPTConfig, layernorm_bias: bool = True) -> int:
    """|Theta| = L * 9C, plus (2L + 1) C with the layer-norm shifts (the module docstring's table)."""
    L, C = config.n_layer, config.n_embd
    return L * 9 * C + ((2 * L + 1) * C if layernorm_bias else 0)


class BitFitModel(AdaptedModel):
    """A frozen GPT whose biases train as adapters (the adapter host of ``minilora.adapters.adapted``)."""

    def __init__(self, model: GPT, config: BitFitConfig | None = None, adapter_name: str = "default"):
        super().__init__(model, config or BitFitConfig(), adapter_name)
