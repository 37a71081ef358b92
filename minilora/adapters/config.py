"""``LoraConfig``: which matrices get a LoRA adapter, at what rank and scale (PEFT's field names).

``resolve_targets`` turns a config into the adapted matrices with their rank r and scale
s = ``lora_scale(lora_alpha, r, use_rslora)`` (Hu et al. 2021, §4.1, or rsLoRA's), and ``build`` makes an
adapter's tensors and layer specs for ``minilora.adapters.adapted.AdaptedModel``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from minilora import checks
from minilora.adapters.adapted import AdapterParts
from minilora.adapters.files import ENVELOPE, register_config
from minilora.adapters.lora import INITS, init_lora_pair, lora_scale
from minilora.adapters import patterns
from minilora.nn import backend
from minilora.nn.linears import LinearSpec
from minilora.nn.model import GPT, SHORT_NAMES


@register_config
@dataclass
class LoraConfig:
    """Which layers get LoRA adapters and how (PEFT's field names and meanings)."""
    peft_type: ClassVar[str] = "LORA"

    r: int = 8                                   # rank of every adapted matrix
    lora_alpha: float = 8.0                      # scale s = lora_alpha / r (§4.1: set once, not tuned)
    target_modules: tuple = ("wq", "wv")         # any of wq wk wv wo fc proj (§4.2 uses wq, wv)
    layers_to_transform: tuple | None = None     # block indices to adapt; None = every block
    rank_pattern: dict = field(default_factory=dict)    # per-module r, e.g. {"blocks.0.attn.wq": 2, "wv": 4}:
    alpha_pattern: dict = field(default_factory=dict)   # per-module lora_alpha; PEFT's rule, first matching key wins
    lora_dropout: float = 0.0                    # dropout on the A path's input
    init_lora_weights: str = "gaussian"          # gaussian | peft_gaussian | kaiming | reversed | zeros
    init_std: float | None = None                # gaussian std; None = 1/sqrt(d_in) (see init_lora_pair)
    bias: str = "none"                           # none | all (every bias, LayerNorm's too) | lora_only
    modules_to_save: tuple = ()                  # trained fully and saved with the adapter, e.g. ("head",)
    use_rslora: bool = False                     # rsLoRA's rank-stabilised scale (Kalajdzievski 2023), see lora_scale
    seed: int = 0                                # initialisation of A (and dropout masks)

    def __post_init__(self):
        _check_fields(self)                          # every value checked before it is used (see below)
        if self.init_lora_weights not in INITS:
            raise ValueError(f"unknown init_lora_weights {self.init_lora_weights!r}; choose one of {INITS}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        """From ``to_dict``'s dict or a whole adapter_config.json: every field required, none unknown."""
        return checks.from_fields(cls, d, "LoraConfig.from_dict", envelope=ENVELOPE)

    def build(self, model: GPT, base_linears: dict) -> AdapterParts:
        """A (r, d_in) random and B (d_out, r) = 0 for every target (§4.1), and "lora" specs for them.

        ``base_linears``: the model's specs without adapters, whose tensors the LoRA layers read.
        """
        _check_fields(self)                          # again: a field set after construction is checked too
        tensors, specs = {}, {}
        for k, (name, (r, scale)) in enumerate(resolve_targets(model, self).items()):
            d_out, d_in = model.weight_shape(name)
            # One generator per (seed, r, module): an r = 8 A is not the first 8 rows of an r = 64 A,
            # which would make the two adapters share directions before any training (§7.2 compares them).
            A, B_ = init_lora_pair(d_out, d_in, r, init=self.init_lora_weights, std=self.init_std,
                                   rng=backend.rng([self.seed, r, k]), dtype=model.dtype)
            a_key, b_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
            tensors[a_key], tensors[b_key] = A, B_
            base = base_linears[name]                         # a 4-bit base's options say how to dequantize W0
            specs[name] = LinearSpec("lora", {**base.tensors, "lora_A": a_key, "lora_B": b_key},
                                     {**base.options, "scale": scale, "dropout": self.lora_dropout})
        saved = []                                            # modules_to_save: the host adds those
        if self.bias == "all":                                # PEFT: every parameter named "bias"
            saved = [p for p in model.own_param_names() if p.endswith(".bias")]
        elif self.bias == "lora_only":
            saved = [f"{n}.bias" for n in specs]
        return AdapterParts(tensors, specs, saved)


def _names(field: str, value) -> tuple:
    """A module-name list as a tuple; one string is one name (PEFT: target_modules="wq")."""
    value = (value,) if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"LoraConfig.{field} must be a module name or a list of names, got {value!r}")
    return tuple(value)


def _check_fields(c: LoraConfig) -> None:
    """Refuse values that would train something else than asked: r = 2.5 truncated, alpha = 0 (the
    update s B A would vanish), NaN, a string where a number belongs. Normalises the name lists."""
    c.r = checks.integer("LoraConfig.r", c.r, minimum=1)
    c.lora_alpha = checks.number("LoraConfig.lora_alpha", c.lora_alpha, above=0)
    c.lora_dropout = checks.number("LoraConfig.lora_dropout", c.lora_dropout, minimum=0, below=1)
    if c.init_std is not None:
        c.init_std = checks.number("LoraConfig.init_std", c.init_std, above=0)
    c.seed = checks.integer("LoraConfig.seed", c.seed, minimum=0)
    if not isinstance(c.use_rslora, bool):
        raise ValueError(f"LoraConfig.use_rslora must be True or False, got {c.use_rslora!r}")
    c.target_modules, c.modules_to_save = _names("target_modules", c.target_modules), \
        _names("modules_to_save", c.modules_to_save)
    layers = c.layers_to_transform
    if layers is not None:                           # PEFT: an int means that one block
        layers = [layers] if not isinstance(layers, (list, tuple)) else layers
        if not layers:
            raise ValueError("LoraConfig.layers_to_transform=[] adapts nothing; give block indices, or None "
                             "for every block")
        c.layers_to_transform = tuple(checks.integer("LoraConfig.layers_to_transform", i, minimum=0) for i in layers)
    for name, check in (("rank_pattern", lambda k, v: checks.integer(f"rank_pattern[{k!r}]", v, minimum=1)),
                        ("alpha_pattern", lambda k, v: checks.number(f"alpha_pattern[{k!r}]", v, above=0))):
        pattern = getattr(c, name)
        if not isinstance(pattern, dict) or not all(isinstance(k, str) for k in pattern):
            raise ValueError(f"LoraConfig.{name} must map module names to values, got {pattern!r}")
        setattr(c, name, {k: check(k, v) for k, v in pattern.items()})


def resolve_targets(model: GPT, config: LoraConfig) -> dict[str, tuple[int, float]]:
    """Module name -> (r, scale) for every matrix the config adapts. Raises on bad names or ranks."""
    unknown = [t for t in config.target_modules if t not in SHORT_NAMES and t not in SHORT_NAMES.values()]
    if unknown or not config.target_modules:
        raise ValueError(f"unknown target_modules {unknown or '(empty)'}; valid names are "
                         f"{sorted(SHORT_NAMES)} (or their long forms {sorted(SHORT_NAMES.values())})")
    L = model.config.n_layer
    layers = config.layers_to_transform if config.layers_to_transform is not None else range(L)
    bad = [i for i in layers if not 0 <= i < L]
    if bad:
        raise ValueError(f"layers_to_transform {bad} out of range: the model has blocks 0..{L - 1}")
    kinds = [SHORT_NAMES.get(t, t) for t in config.target_modules]
    names = [f"blocks.{i}.{k}" for i in layers for k in kinds]
    unmatched = patterns.unmatched_keys({**config.rank_pattern, **config.alpha_pattern}, names)
    if unmatched:
        raise ValueError(f"rank/alpha pattern keys {unmatched}: each matches no adapted module; adapted modules are "
                         f"{names[:6]}{' ...' if len(names) > 6 else ''}")
    out = {}
    for name in names:
        d_out, d_in = model.weight_shape(name)
        # PEFT's rule: the FIRST key (in the dict's order) that matches the end of the name wins
        r = int(patterns.pattern_value(config.rank_pattern, name, config.r))
        if not 1 <= r <= min(d_out, d_in):
            raise ValueError(f"rank r = {r} is out of range for {name} with W0 of shape ({d_out}, {d_in}); "
                             f"choose 1 <= r <= min(d_out, d_in) = {min(d_out, d_in)}")
        alpha = float(patterns.pattern_value(config.alpha_pattern, name, config.lora_alpha))
        out[name] = (r, lora_scale(alpha, r, config.use_rslora))
    return out


def expected_trainable_count(config: LoraConfig, n_layer: int, d_model: int) -> int:
    """|Theta| = 2 x L_hat x d_model x r (Hu et al. 2021, §5.1), for square attention targets.

    L_hat is the number of adapted matrices. For other shapes count r (d_in + d_out) per matrix,
    as ``lora_param_count`` does.
    """
    square = {"wq", "wk", "wv", "wo", "attn.wq", "attn.wk", "attn.wv", "attn.wo"}
    if not set(config.target_modules) <= square or config.rank_pattern:
        raise ValueError("the 2 x L_hat x d x r formula holds for square attention targets with one rank; "
                         "use lora_param_count for MLP targets or rank patterns")
    layers = config.layers_to_transform if config.layers_to_transform is not None else range(n_layer)
    return 2 * len(config.target_modules) * len(layers) * d_model * config.r


def lora_param_count(model: GPT, config: LoraConfig) -> int:
    """Trainable LoRA parameters for any targets: sum over adapted W0 (d_out, d_in) of r (d_in + d_out)."""
    return sum(r * sum(model.weight_shape(name)) for name, (r, _) in resolve_targets(model, config).items())
