"""LoRA among its alternatives: the paper's baselines as methods of the shared runner (Hu et al. 2021, §5.1).

Each baseline is a registered preparer (``minilora.experiments.runner``), so a method is a config:

    bitfit_method(lr)                          BitFit: the biases train (Zaken et al. 2021)
    prefix_method(l_p, l_i, "embedding", lr)   PreEmbed: special tokens' embeddings train
    prefix_method(l_p, l_i, "layer", lr)       PreLayer: the activations entering every block train
    prefix_method(..., lora=LoraConfig(...))   LoRA+PE / LoRA+PL (Appendix E)
    adapter_method(m, "houlsby", lr)           AdapterH (Houlsby et al. 2019), bottleneck m
    lora_method(r, lr=...), full_method(lr=...) the runner's own

Every run measures, besides the runner's accuracy, loss, trainable count and ms per step:
    optimizer_bytes   AdamW's state: two float32 moments per trainable parameter
    extra_positions   special positions added to every sequence (l_p + l_i; 0 for the others)
    inference_ratio   forward time of the trained model, LoRA merged first, over the base's, on 64
                      test rows in 10 interleaved rounds (median of the per-round ratios; the machine is
                      shared, so read it next to extra_positions, which is exact)

Shapes: B batch, T time, C channels, L blocks.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np

from minilora import fast
from minilora.adapters.adapted import AdaptedModel
from minilora.adapters.bitfit import BitFitConfig, BitFitModel
from minilora.adapters.bottleneck import AdapterConfig, AdapterModel
from minilora.adapters.config import LoraConfig
from minilora.adapters.prefix import PrefixConfig, PrefixModel, infix_token_ids
from minilora.data.datasets import ClassificationData
from minilora.data.tasks import default_tokenizer
from minilora.nn import backend
from minilora.nn.model import GPT
from minilora.experiments.runner import Method, register_preparer


# --------------------------------------------------------------------------- methods as configs
def bitfit_method(*, lr, layernorm_bias: bool = True, name: str = "BitFit") -> Method:
    """BitFit: every bias of the blocks (and the layer norms' shifts) trains; nothing else."""
    return Method(name, "bitfit", lr, BitFitConfig(layernorm_bias=layernorm_bias))


def prefix_method(n_prefix: int, n_infix: int, mode: str = "embedding", *, lr, lora: LoraConfig | None = None,
                  name: str | None = None) -> Method:
    """PreEmbed (mode "embedding") or PreLayer ("layer") with l_p, l_i special positions, optionally with
    LoRA (LoRA+PE, LoRA+PL). The infix goes before the prompt's last token ('=' or '?')."""
    short = "PE" if mode == "embedding" else "PL"
    label = name or (f"LoRA+{short}" if lora else f"Pre{'Embed' if mode == 'embedding' else 'Layer'}") \
        + f" lp={n_prefix},li={n_infix}"
    config = PrefixConfig(n_prefix=n_prefix, n_infix=n_infix, mode=mode, lora=lora,
                          infix_before=infix_token_ids(default_tokenizer().encode))
    return Method(label, "prefix", lr, config)


def adapter_method(bottleneck: int, variant: str = "houlsby", *, lr, name: str | None = None) -> Method:
    """AdapterH ("houlsby", two per block) or AdapterL ("lin", one per block) with bottleneck m."""
    label = name or f"Adapter{'H' if variant == 'houlsby' else 'L'} m={bottleneck}"
    return Method(label, "adapter", lr, AdapterConfig(variant=variant, bottleneck=bottleneck))


# --------------------------------------------------------------------------- preparers
def _copy_with_head(base: GPT, train_data, seed: int) -> tuple[GPT, tuple]:
    """A frozen copy of ``base`` (a new head for a classification task) and the modules_to_save it needs."""
    model = GPT(copy.deepcopy(base.config), {k: v.copy() for k, v in base.params.items()})
    model.freeze()
    if isinstance(train_data, ClassificationData):
        model.add_classification_head(train_data.n_classes, seed=seed)
        return model, ("head",)
    return model, ()


def _with_saved(config, extra: tuple, **changes):
    saved = tuple(dict.fromkeys(tuple(config.modules_to_save) + extra))
    return dataclasses.replace(config, modules_to_save=saved, **changes)


@register_preparer("bitfit")
def prepare_bitfit(base, train_data, config, seed):
    """BitFit on a copy of the base; a classification task trains its new head fully."""
    model, extra = _copy_with_head(base, train_data, seed)
    return BitFitModel(model, _with_saved(config or BitFitConfig(), extra, seed=seed))


@register_preparer("prefix")
def prepare_prefix(base, train_data, config, seed):
    """Prefix tuning (and LoRA with it) on a copy of the base; the run seed draws the start tokens of
    the states and LoRA's A."""
    model, extra = _copy_with_head(base, train_data, seed)
    config = config or PrefixConfig()
    lora = None if config.lora is None else dataclasses.replace(config.lora, seed=seed)
    return PrefixModel(model, _with_saved(config, extra, seed=seed, lora=lora))


@register_preparer("adapter")
def prepare_adapter(base, train_data, config, seed):
    """Bottleneck adapters on a copy of the base; the run seed draws W_down."""
    model, extra = _copy_with_head(base, train_data, seed)
    return AdapterModel(model, _with_saved(config or AdapterConfig(), extra, seed=seed))


# --------------------------------------------------------------------------- measures
def optimizer_bytes(model, task, runner) -> int:
    """Bytes of AdamW's state: two moments (m, v) per trainable parameter, in the model's dtype."""
    return 2 * model.num_params(trainable_only=True) * np.dtype(model.dtype).itemsize


def extra_positions(model, task, runner) -> int:
    """Special positions every sequence carries (l_p + l_i), 0 without prefix tuning."""
    specials = getattr(getattr(model, "model", model), "specials", None)
    return 0 if specials is None else specials.n


def inference_ratio(model, task, runner, *, rounds: int = 10, warmup: int = 2, rows: int = 64) -> float:
    """Median over interleaved rounds of forward time (trained model, LoRA merged) / forward time (base),
    on ``rows`` test examples with the training loop's fast kernels.

    A plain GPT (full fine-tuning) has the base's architecture exactly: its ratio is 1 by construction.
    """
    if not isinstance(model, AdaptedModel):
        return 1.0
    _, test = runner.data(task, 0)
    n = min(rows, len(test))
    x = backend.asarray(test.x[:n])
    last = backend.asarray(test.last[:n]) if isinstance(test, ClassificationData) else None
    forward = (lambda: model.classify(x, last)) if last is not None else (lambda: model.forward(x))
    mergeable = all(s.kind in ("linear", "qlinear", "lora") for s in model.layouts[model.active_adapter].values())
    if mergeable:
        model.merge_adapter()                         # Hu et al. 2021, §4.1: no additional inference latency
    try:
        ratios = []
        for k in range(warmup + rounds):
            t = {}
            for which in (("adapted", "base") if k % 2 == 0 else ("base", "adapted")):
                t0 = time.perf_counter()
                with fast.use_kernels(model):
                    if which == "base":
                        with _base_view(model):
                            forward()
                    else:
                        forward()
                backend.synchronize()
                t[which] = time.perf_counter() - t0
            if k >= warmup:
                ratios.append(t["adapted"] / t["base"])
        return float(np.median(ratios))
    finally:
        if mergeable:
            model.unmerge_adapter()


class _base_view:
    """The base model's layers for the block (a merged adapter is set aside by its merge, so the base
    is timed with the merged weights: the same shapes and work as W0)."""

    def __init__(self, host):
        self.host = host

    def __enter__(self):
        h = self.host
        self.saved = (dict(h.model.linears), {k: dict(v) for k, v in h.model.norms.items()}, h.model.specials)
        h.model.linears.update(h.base_linears)
        h.model.norms.update({n: dict(r) for n, r in h.base_norms.items()})
        h.model.specials = None
        return h

    def __exit__(self, *exc):
        linears, norms, specials = self.saved
        self.host.model.linears.clear()
        self.host.model.linears.update(linears)
        self.host.model.norms.update(norms)
        self.host.model.specials = specials


MEASURES = {"optimizer_bytes": optimizer_bytes, "extra_positions": extra_positions,
            "inference_ratio": inference_ratio}
