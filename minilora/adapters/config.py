"""``LoraConfig``: which matrices get a LoRA adapter, at what rank and scale (PEFT's field names).

``resolve_targets`` turns a config into the adapted matrices with their rank r and scale
s = ``lora_scale(lora_alpha, r, use_rslora)`` (Hu et al. 2021, §4.1, or rsLoRA's), and ``build`` makes an
adapter's tensors and layer specs for ``minilora.adapters.adapted.AdaptedModel``.

The LoRA family is options of the one config, as in PEFT: ``use_dora`` (DoRA, Liu et al. 2024:
layers of the kind "dora" with a magnitude per output row), ``use_rslora`` (the scale
alpha / sqrt(r)), ``init_lora_weights="pissa"`` or ``"olora"`` (A and B from W0's SVD or QR, the
frozen residual kept as the adapter's own copy of W0) and ``lora_fa`` (A frozen at its init).
LoRA+ is an optimizer option (``TrainConfig.loraplus_lr_ratio``), not a layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from minilora import checks
from minilora.adapters import patterns
from minilora.adapters.adapted import AdapterParts
from minilora.adapters.dora import MAGNITUDE, dora_magnitude_init
from minilora.adapters.files import ENVELOPE, register_config
from minilora.adapters.lora import INITS, init_lora_pair, lora_scale
from minilora.adapters.lora_init import olora_init, pissa_init
from minilora.adapters.qlinear import QUANT_OPTIONS, frozen_weight
from minilora.nn import backend
from minilora.nn.linears import LinearSpec
from minilora.nn.model import GPT, SHORT_NAMES

WEIGHT_INITS = ("pissa", "olora")                # inits that start A, B on W0 itself (PEFT's names)


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
    init_lora_weights: str = "gaussian"          # gaussian | peft_gaussian | kaiming | reversed | zeros | pissa | olora
    init_std: float | None = None                # gaussian std; None = 1/sqrt(d_in) (see init_lora_pair)
    bias: str = "none"                           # none | all (every bias, LayerNorm's too) | lora_only
    modules_to_save: tuple = ()                  # trained fully and saved with the adapter, e.g. ("head",)
    use_rslora: bool = False                     # rsLoRA's rank-stabilised scale (Kalajdzievski 2023), see lora_scale
    use_dora: bool = False                       # DoRA (Liu et al. 2024): W' = m (W0 + s B A) / ||W0 + s B A||
    dora_detach_norm: bool = True                # DoRA §4.3: ||.|| a constant in the backward (PEFT); False: exact
    lora_fa: bool = False                        # LoRA-FA (Zhang et al. 2023): A stays frozen, only B (and m) train
    seed: int = 0                                # initialisation of A (and dropout masks)

    def __post_init__(self):
        _check_fields(self)                          # every value checked before it is used (see below)
        if self.init_lora_weights not in INITS + WEIGHT_INITS:
            raise ValueError(f"unknown init_lora_weights {self.init_lora_weights!r}; choose one of "
                             f"{INITS + WEIGHT_INITS}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        """From ``to_dict``'s dict or a whole adapter_config.json: every field required, none unknown."""
        return checks.from_fields(cls, d, "LoraConfig.from_dict", envelope=ENVELOPE)

    def build(self, model: GPT, base_linears: dict) -> AdapterParts:
        """A (r, d_in) and B (d_out, r) for every target, and a "lora" (or "dora") spec for each.

        ``base_linears``: the model's specs without adapters, whose tensors the layers read.
        LoRA's init: A random, B = 0 (§4.1). PiSSA/OLoRA: A, B from W0 and the residual
        W_res = W0 - s B A as the adapter's own frozen copy of the weight (``saved`` + ``frozen``),
        so the base model itself is never changed. DoRA adds m = ||W + s B A|| row-wise (W = W0,
        W_res, or on a 4-bit base the dequantized W0: QDoRA), so every variant starts exactly at the
        base model. PiSSA/OLoRA on a 4-bit base are refused.
        """
        _check_fields(self)                          # again: a field set after construction is checked too
        tensors, specs, saved, frozen = {}, {}, [], set()
        for k, (name, (r, scale)) in enumerate(resolve_targets(model, self).items()):
            d_out, d_in = model.weight_shape(name)
            base = base_linears[name]                         # a 4-bit base's options say how to dequantize W0
            W = model.params.get(name + ".weight")            # None on a 4-bit base (its parts hold W0)
            if W is None and self.init_lora_weights in WEIGHT_INITS:
                raise ValueError(f"{name} is stored in 4 bits: {self.init_lora_weights}'s factors are decomposed "
                                 f"from the float W0 and their residual W0 - s B A would be a float copy of the "
                                 f"weight; build them on the float base, or use LoRA/DoRA's init on a 4-bit base")
            if W is None and self.use_dora:                   # QDoRA: m from the dequantized W0, as PEFT's
                W = dequantized_weight(model, base)           # dequantize_module_weight; no float copy is kept
            a_key, b_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
            if self.init_lora_weights in WEIGHT_INITS:
                A, B_, W = initial_factors(self.init_lora_weights, W, r, scale)
                tensors[name + ".weight"] = W                 # the residual, under W0's own key
                saved.append(name + ".weight")
                frozen.add(name + ".weight")
            else:
                # One generator per (seed, r, module): an r = 8 A is not the first 8 rows of an r = 64 A,
                # which would make the two adapters share directions before any training (§7.2 compares them).
                A, B_ = init_lora_pair(d_out, d_in, r, init=self.init_lora_weights, std=self.init_std,
                                       rng=backend.rng([self.seed, r, k]), dtype=model.dtype)
            tensors[a_key], tensors[b_key] = A, B_
            if self.lora_fa:
                frozen.add(a_key)
            roles = {**base.tensors, "lora_A": a_key, "lora_B": b_key}
            options = {**base.options, "scale": scale, "dropout": self.lora_dropout}
            if self.use_dora:
                m_key = f"{name}.{MAGNITUDE}"
                tensors[m_key] = dora_magnitude_init(W, A, B_, scale)     # (d_out,): ||W + s B A|| row-wise
                roles["lora_magnitude"] = m_key
                options["detach_norm"] = bool(self.dora_detach_norm)
            specs[name] = LinearSpec("dora" if self.use_dora else "lora", roles, options)
        if self.bias == "all":                                # PEFT: every parameter named "bias"; the host
            saved += [p for p in model.own_param_names() if p.endswith(".bias")]   # adds modules_to_save
        elif self.bias == "lora_only":
            saved += [f"{n}.bias" for n in specs]
        return AdapterParts(tensors, specs, saved, frozen)


def dequantized_weight(model: GPT, spec: LinearSpec):
    """W0 (d_out, d_in) of a 4-bit layer ``spec``, dequantized in the model's dtype as its forward does."""
    t = {role: model.params[p] for role, p in spec.tensors.items()}
    return frozen_weight(model.dtype, t, {k: v for k, v in spec.options.items() if k in QUANT_OPTIONS})


def initial_factors(init: str, W0, r: int, scale: float):
    """(A0 (r, d_in), B0 (d_out, r), W_res (d_out, d_in)) of PiSSA ("pissa") or OLoRA ("olora").

    Decomposed in float64 (``minilora.adapters.lora_init``), then cast to W0's dtype, so the
    same W0 always gives the same factors: ``LoraModel.convert_to_plain_lora`` recomputes them.
    """
    decompose = {"pissa": pissa_init, "olora": olora_init}[init]
    A0, B0, W_res = decompose(backend.asarray(W0, dtype=np.float64), r, scale)
    return tuple(backend.asarray(a, dtype=W0.dtype) for a in (A0, B0, W_res))


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
    for flag in ("use_rslora", "use_dora", "dora_detach_norm", "lora_fa"):
        if not isinstance(getattr(c, flag), bool):
            raise ValueError(f"LoraConfig.{flag} must be True or False, got {getattr(c, flag)!r}")
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
