"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv 2106.09685).

A frozen pre-trained weight W0 (d_out, d_in) is adapted by a low-rank update (§4.1, eq. 3):

    h = W0 x + (alpha / r) B A x,    A (r, d_in) random,  B (d_out, r) zero at init,

so dW = B A has W0's shape and rank at most r, and the adapted model equals the base model at
step 0. Only A and B train; W0 gets no gradient and no optimizer state.

Shapes: B batch, T time, C channels, r rank, N = B*T rows. (B the batch size and B the matrix
never meet in one formula below: the matrix is written ``B_``/``lora_B`` in code.)

This module holds the math and the configuration:
  * pure functions: ``lora_forward`` / ``lora_backward`` (the layer), ``merge_weights`` /
    ``unmerge_weights`` (W0 + s B A and back), ``init_lora_pair``;
  * ``LoraConfig`` (PEFT's field names) and ``resolve_targets``, which turns a config into the
    list of adapted matrices with their rank and scale.
``minilora.adapters.lora_model.LoraModel`` puts adapters built from these on a ``GPT``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from minilora.nn import backend
from minilora.nn.layers import linear_forward
from minilora.nn.model import GPT

# Short names users write in target_modules -> the module's name inside a block.
TARGETS = {"wq": "attn.wq", "wk": "attn.wk", "wv": "attn.wv", "wo": "attn.wo",
           "fc": "mlp.fc", "proj": "mlp.proj"}
INITS = ("gaussian", "peft_gaussian", "kaiming", "reversed", "zeros")


# --------------------------------------------------------------------------- the layer
def lora_forward(x, W0, b, A, B_, scale, dropout_mask=None):
    """h = x W0^T + b + s (x A^T) B^T, the LoRA linear layer (Hu et al. 2021, eq. 3).

    x (..., d_in), W0 (d_out, d_in), b (d_out,) or None, A (r, d_in), B_ (d_out, r),
    scale s = alpha / r, dropout_mask (..., d_in) or None (scaled keep-mask on the A path only,
    as loralib and PEFT)  ->  h (..., d_out);
    cache = (x2, xa, W0, A, B_, u, scale, dropout_mask, shape of x).
    B A is never formed: (x A^T) is (N, r), a thin matrix, so the extra cost is 2 N r (d_in + d_out).
    """
    ### BEGIN SOLUTION
    h, _ = linear_forward(x, W0, b)                           # frozen path: x W0^T + b
    x2 = x.reshape(-1, x.shape[-1])                           # (N, d_in)
    xa = x2 if dropout_mask is None else x2 * dropout_mask.reshape(x2.shape)
    u = xa @ A.T                                              # (N, r): down-projection
    h += ((scale * u) @ B_.T).reshape(h.shape)                # (N, d_out): up-projection, times alpha/r
                                                              # (scaling the thin (N, r) u is cheaper)
    ### END SOLUTION
    return h, (x2, xa, W0, A, B_, u, scale, dropout_mask, x.shape)


def lora_backward(dh, cache):
    """dh (..., d_out) -> dx (..., d_in), dA (r, d_in), dB (d_out, r). No dW0: W0 is frozen.

    With u = x A^T and h = x W0^T + s u B^T (LORA_NOTES §1):
        dB = s dh^T u,   du = s dh B,   dA = du^T x,   dx = dh W0 + du A.
    At init B = 0, so du = 0 and dA = 0: only B moves in the first step.
    """
    x2, xa, W0, A, B_, u, scale, dropout_mask, x_shape = cache
    ### BEGIN SOLUTION
    dh2 = dh.reshape(-1, dh.shape[-1])                        # (N, d_out)
    dB = scale * (dh2.T @ u)                                  # forward: h += s u B^T   -> dB = s dh^T u
    du = scale * (dh2 @ B_)                                   # (N, r)                  -> du = s dh B
    dA = du.T @ xa                                            # forward: u = xa A^T     -> dA = du^T xa
    dxa = du @ A                                              # (N, d_in)               -> dxa = du A
    if dropout_mask is not None:
        dxa *= dropout_mask.reshape(dxa.shape)                # forward: xa = x * mask
    dx = dh2 @ W0                                             # forward: h = x W0^T + ... -> dh W0
    dx += dxa
    ### END SOLUTION
    return dx.reshape(x_shape), dA, dB


def merge_weights(W0, A, B_, scale):
    """W = W0 + s B A: the merged weight, same shape as W0 (§4.1, "No Additional Inference Latency")."""
    ### BEGIN SOLUTION
    return W0 + scale * (B_ @ A)
    ### END SOLUTION


def unmerge_weights(W, A, B_, scale):
    """W0 = W - s B A: undo ``merge_weights`` (up to float rounding)."""
    ### BEGIN SOLUTION
    return W - scale * (B_ @ A)
    ### END SOLUTION


def init_lora_pair(d_out, d_in, r, *, init="gaussian", std=None, rng=None, dtype=None):
    """A (r, d_in) and B (d_out, r) as the paper starts them: A random, B = 0, so B A = 0 (§4.1).

    init = "gaussian":      A ~ N(0, std^2), std = 1/sqrt(d_in) unless given. minilora's default: the
                            paper says "random Gaussian" without a sigma; 1/sqrt(d_in) does not depend
                            on r, like loralib's kaiming init, so with the alpha/r scale the size of an
                            update stays the same when r changes, which is what §4.1 relies on;
           "peft_gaussian": A ~ N(0, (1/r)^2), exactly PEFT's init_lora_weights="gaussian" (for parity;
                            note the update then shrinks like 1/r^2 with the alpha/r scale);
           "kaiming":       A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (loralib and PEFT's default: kaiming-uniform
                            with a = sqrt(5));
           "reversed":      A = 0, B ~ N(0, std^2) (an ablation: dW = 0 too, but now A moves first);
           "zeros":         A = 0 and B = 0 (an ablation: every gradient stays 0, nothing ever moves).
    """
    rng = rng if rng is not None else backend.rng(0)
    dtype = dtype or backend.default_dtype()
    if std is None:
        std = 1.0 / r if init == "peft_gaussian" else 1.0 / math.sqrt(d_in)
    A, B_ = np.zeros((r, d_in)), np.zeros((d_out, r))
    if init in ("gaussian", "peft_gaussian"):
        A = rng.normal(0.0, std, (r, d_in))
    elif init == "kaiming":
        bound = 1.0 / math.sqrt(d_in)
        A = rng.uniform(-bound, bound, (r, d_in))
    elif init == "reversed":
        B_ = rng.normal(0.0, std, (d_out, r))
    elif init != "zeros":
        raise ValueError(f"unknown init_lora_weights {init!r}; choose one of {INITS}")
    return backend.asarray(A, dtype=dtype), backend.asarray(B_, dtype=dtype)


# --------------------------------------------------------------------------- configuration
@dataclass
class LoraConfig:
    r: int = 8                                   # rank of every adapted matrix
    lora_alpha: float = 8.0                      # scale s = lora_alpha / r (§4.1: set once, not tuned)
    target_modules: tuple = ("wq", "wv")         # any of wq wk wv wo fc proj (§4.2 uses wq, wv)
    layers_to_transform: tuple | None = None     # block indices to adapt; None = every block
    rank_pattern: dict = field(default_factory=dict)    # per-module r, e.g. {"wv": 4, "blocks.0.attn.wq": 2}
    alpha_pattern: dict = field(default_factory=dict)   # per-module lora_alpha, same keys
    lora_dropout: float = 0.0                    # dropout on the A path's input
    init_lora_weights: str = "gaussian"          # gaussian | peft_gaussian | kaiming | reversed | zeros
    init_std: float | None = None                # gaussian std; None = 1/sqrt(d_in) (see init_lora_pair)
    bias: str = "none"                           # none | all | lora_only: which biases also train
    modules_to_save: tuple = ()                  # trained fully and saved with the adapter, e.g. ("head",)
    use_rslora: bool = False                     # scale alpha / sqrt(r) instead (Kalajievski 2023)
    seed: int = 0                                # initialisation of A (and dropout masks)

    def __post_init__(self):
        self.target_modules = tuple([self.target_modules] if isinstance(self.target_modules, str)
                                    else self.target_modules)
        self.modules_to_save = tuple(self.modules_to_save)
        if self.layers_to_transform is not None:
            self.layers_to_transform = tuple(int(i) for i in self.layers_to_transform)
        if self.init_lora_weights not in INITS:
            raise ValueError(f"unknown init_lora_weights {self.init_lora_weights!r}; choose one of {INITS}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if int(self.r) < 1:
            raise ValueError(f"rank r must be a positive integer, got {self.r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _pattern_value(name: str, pattern: dict, default):
    """The value for module ``name`` from a PEFT-style pattern dict (longest matching key wins).

    A key matches when it is the module's full name or a dotted suffix of it ("wv", "attn.wv").
    Short target names are expanded ("wv" -> "attn.wv") before matching.
    """
    best, best_len = default, -1
    for key, value in pattern.items():
        full = TARGETS.get(key, key)
        if (name == full or name.endswith("." + full)) and len(full) > best_len:
            best, best_len = value, len(full)
    return best


def resolve_targets(model: GPT, config: LoraConfig) -> dict[str, tuple[int, float]]:
    """Module name -> (r, scale) for every matrix the config adapts. Raises on bad names or ranks."""
    unknown = [t for t in config.target_modules if t not in TARGETS and t not in TARGETS.values()]
    if unknown or not config.target_modules:
        raise ValueError(f"unknown target_modules {unknown or '(empty)'}; valid names are "
                         f"{sorted(TARGETS)} (or their long forms {sorted(TARGETS.values())})")
    L = model.config.n_layer
    layers = config.layers_to_transform if config.layers_to_transform is not None else range(L)
    bad = [i for i in layers if not 0 <= i < L]
    if bad:
        raise ValueError(f"layers_to_transform {bad} out of range: the model has blocks 0..{L - 1}")
    kinds = [TARGETS.get(t, t) for t in config.target_modules]
    names = [f"blocks.{i}.{k}" for i in layers for k in kinds]
    for key in list(config.rank_pattern) + list(config.alpha_pattern):
        if not any(n == TARGETS.get(key, key) or n.endswith("." + TARGETS.get(key, key)) for n in names):
            raise ValueError(f"rank/alpha pattern key {key!r} matches no adapted module; adapted modules are "
                             f"{names[:6]}{' ...' if len(names) > 6 else ''}")
    out = {}
    for name in names:
        d_out, d_in = model.params[name + ".weight"].shape
        r = int(_pattern_value(name, config.rank_pattern, config.r))
        if not 1 <= r <= min(d_out, d_in):
            raise ValueError(f"rank r = {r} is out of range for {name} with W0 of shape ({d_out}, {d_in}); "
                             f"choose 1 <= r <= min(d_out, d_in) = {min(d_out, d_in)}")
        alpha = float(_pattern_value(name, config.alpha_pattern, config.lora_alpha))
        out[name] = (r, alpha / (math.sqrt(r) if config.use_rslora else r))
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
    return sum(r * sum(model.params[name + ".weight"].shape) for name, (r, _) in resolve_targets(model, config).items())
