"""The memory report: each method's parts measured on a real model, checked against the formula, and
extrapolated by the formula to 7B and 65B models (QLoRA's claim: a 65B model fine-tuned in < 48 GB).

    rows = measured_report(load_base()[0], B=32, T=24)          # full, LoRA, QLoRA, DoRA, QDoRA
    rows = extrapolate(SHAPES["65B"], PAPER_SETTING)            # the same parts for a 65B model
    offload_cost(rows_by_method["qlora"]["frozen weights"])     # what keeping the base on the CPU would cost

The formula (``minilora.experiments.footprint.estimate``) describes minilora's own step: float32
weights and activations, no gradient checkpointing. ``PAPER_SETTING`` changes only the precisions
and the batch to those of the QLoRA paper's runs (16-bit weights and activations, batch 1 of 512
tokens, gradient checkpointing, r = 64 on every linear layer); each assumption is a field, so a
reader can change it and see what moves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from minilora.experiments.footprint import METHODS, PARTS, Shape, build, estimate, lm_batch, measure_step

GB = 1e9
ALL_LINEARS = ("wq", "wk", "wv", "wo", "fc", "proj")
# GPT-2-form models of LLaMA's sizes (Touvron et al. 2023): depth, width, heads and vocabulary of
# LLaMA-7B and LLaMA-65B. LLaMA's SwiGLU MLP has 3 C x 2.7C matrices, within 1% of GPT-2's 8 C^2,
# and an untied output layer (V C more weights, 2% of 7B); the GPT form ties it.
SHAPES = {"7B": Shape(L=32, C=4096, NH=32, V=32000, T_max=2048),
          "65B": Shape(L=80, C=8192, NH=64, V=32000, T_max=2048)}


@dataclass(frozen=True)
class Setting:
    """The assumptions of one extrapolation (every one a number a reader can change)."""
    B: int = 1                        # sequences per step
    T: int = 512                      # tokens per sequence
    r: int = 64                       # LoRA rank (QLoRA §4: r = 64 on all linear layers)
    targets: tuple = ALL_LINEARS      # adapted matrices of every block
    weight_bits: int = 16             # float weights (BF16 in the paper; full fine-tuning trains them in 16 bits)
    adapter_bits: int = 16            # adapters and their gradients
    activation_bits: int = 16         # activations (BF16 compute)
    checkpointing: bool = True        # gradient checkpointing: keep each block's input, recompute the rest


PAPER_SETTING = Setting()
MINILORA_SETTING = Setting(B=32, T=512, r=8, targets=("wq", "wv"), weight_bits=32, adapter_bits=32,
                           activation_bits=32, checkpointing=False)


def _row(method: str, parts: dict, **extra) -> dict:
    total = sum(parts[p] for p in PARTS)
    return {"method": method, **{p: int(parts[p]) for p in PARTS}, "total": int(total),
            "shares": {p: parts[p] / total for p in PARTS}, **extra}


def measured_report(base, *, B: int = 32, T: int | None = None, r: int = 8, targets=("wq", "wv"),
                    methods=METHODS) -> list[dict]:
    """For each method: the parts measured on one float32 training step of ``base`` and the formula's.

    Each row: method, the measured bytes per part, total, shares, "formula" (the estimate's parts)
    and "matches" (True when every part agrees byte for byte).
    """
    T = T or base.config.block_size
    batch = lm_batch(base.config, B, T)
    rows = []
    for method in methods:
        measured = measure_step(build(method, base, r=r, targets=targets), batch)
        formula = estimate(Shape.of(base.config), method, B=B, T=T, r=r, targets=targets)
        rows.append(_row(method, measured, formula={p: int(formula[p]) for p in PARTS},
                         matches=all(measured[p] == formula[p] for p in PARTS)))
    return rows


def extrapolate(shape: Shape, setting: Setting = PAPER_SETTING, methods=METHODS) -> list[dict]:
    """The formula's parts for each method on a model of ``shape`` under ``setting`` (bytes, shares)."""
    rows = []
    for method in methods:
        parts = estimate(shape, method, B=setting.B, T=setting.T, r=setting.r, targets=setting.targets,
                         weight_bits=setting.weight_bits, adapter_bits=setting.adapter_bits,
                         activation_bits=setting.activation_bits, checkpointing=setting.checkpointing)
        rows.append(_row(method, parts, params=shape.params(), setting=asdict(setting)))
    return rows


def offload_cost(frozen_bytes: int, *, bus_gb_s: float = 25.0, device_gb_s: float = 2000.0) -> dict:
    """What keeping the frozen weights in CPU memory would cost per training step, instead of on the device.

    Each step reads every frozen weight twice (the forward's x W0^T and the backward's dy W0), so
    offloaded weights would cross the bus twice per step (three times with gradient checkpointing,
    which recomputes the forward; not counted here). bus_gb_s: host-to-device bandwidth (PCIe 4.0
    x16 moves about 25 GB/s in practice); device_gb_s: the device memory's (an A100 80 GB's HBM2e:
    about 2,000 GB/s). Returns the bytes read per step and the seconds those reads take each way.
    """
    read = 2 * frozen_bytes
    return {"bytes_per_step": read, "bus_seconds": read / (bus_gb_s * GB), "device_seconds": read / (device_gb_s * GB),
            "bus_gb_s": bus_gb_s, "device_gb_s": device_gb_s}


def with_setting(setting: Setting = PAPER_SETTING, **changes) -> Setting:
    """``setting`` with some assumptions changed, e.g. with_setting(adapter_bits=32)."""
    return replace(setting, **changes)
