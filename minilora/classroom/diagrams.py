"""Diagrams for the tutorials, drawn with matplotlib so that they are code, reviewed like code.

    transformer_block()   the pre-LN GPT-2 block (Radford et al. 2019), with the matrices LoRA adapts
    lora_layer()          the LoRA layer beside the frozen W0 (Hu et al. 2021, Figure 1)
    merging()             W = W0 + s B A and back (§4.1, "No Additional Inference Latency")

Each takes an optional matplotlib ``ax`` and returns it, so a notebook can place it in a figure.
Shape letters: C channels, r rank, d_in and d_out the sides of a weight.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Polygon

FROZEN, TRAINED, PLAIN, ADD = "#9ecae1", "#fdae6b", "#f0f0f0", "#ffffff"


# --------------------------------------------------------------------------- drawing helpers
def _axes(ax, size):
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    ax.set_axis_off()
    ax.set_aspect("equal")
    return ax


def _box(ax, x, y, w, h, text, color=PLAIN, fontsize=9):
    """A rounded box centred at (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="black", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text="", style="-|>", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, lw=1,
                                 connectionstyle=f"arc3,rad={rad}", color="black"))
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=8, va="center")


def _plus(ax, x, y):
    ax.add_patch(plt.Circle((x, y), 0.16, fc=ADD, ec="black"))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11)


# --------------------------------------------------------------------------- the transformer block
def transformer_block(ax=None):
    """x -> x + W_o attn(W_q h, W_k h, W_v h), h = LN1(x); then x + W_proj GELU(W_fc LN2(x))."""
    ax = _axes(ax, (4.6, 7.0))
    ax.set(xlim=(-2.6, 2.8), ylim=(-0.6, 10.2))
    _box(ax, 0.3, 0, 3.2, 0.5, "x (B, T, C): the residual stream", fontsize=8)
    _box(ax, -0.9, 1.2, 1.3, 0.45, "LN1")
    for k, (name, xq) in enumerate((("W_q", -1.9), ("W_k", -0.9), ("W_v", 0.1))):
        _box(ax, xq, 2.3, 0.8, 0.45, name, FROZEN)
        _arrow(ax, (-0.9, 1.45), (xq, 2.07))
    _box(ax, -0.9, 3.4, 3.0, 0.6, "causal attention, NH heads\nsoftmax(q k^T / sqrt(HS)) v", fontsize=7)
    for xq in (-1.9, -0.9, 0.1):
        _arrow(ax, (xq, 2.53), (xq, 3.15))
    _box(ax, -0.9, 4.4, 0.8, 0.45, "W_o", FROZEN)
    _plus(ax, 1.4, 4.9)
    _box(ax, -0.9, 6.0, 1.3, 0.45, "LN2")
    _box(ax, -0.9, 7.0, 1.8, 0.45, "W_fc (4C, C)", FROZEN)
    _box(ax, -0.9, 7.9, 1.0, 0.45, "GELU")
    _box(ax, -0.9, 8.8, 1.8, 0.45, "W_proj (C, 4C)", FROZEN)
    _plus(ax, 1.4, 9.3)
    _arrow(ax, (0, 0.25), (-0.9, 0.97))
    _arrow(ax, (-0.9, 3.65), (-0.9, 4.17))
    _arrow(ax, (-0.5, 4.4), (1.24, 4.85))
    _arrow(ax, (1.4, 0.25), (1.4, 4.74), text="residual")
    _arrow(ax, (1.4, 5.06), (-0.9, 5.77))
    for y0, y1 in ((6.22, 6.77), (7.22, 7.67), (8.12, 8.57)):
        _arrow(ax, (-0.9, y0), (-0.9, y1))
    _arrow(ax, (-0.1, 8.8), (1.24, 9.25))
    _arrow(ax, (1.4, 5.06), (1.4, 9.14), text="residual")
    _arrow(ax, (1.4, 9.46), (1.4, 10.1), text="to the next block")
    ax.text(-2.55, -0.55, "blue: the six matrices of a block, LoRA's targets (§4.2 adapts W_q, W_v)",
            fontsize=7, color="#3182bd")
    ax.set_title("one pre-LN transformer block (GPT-2)", fontsize=10)
    return ax


# --------------------------------------------------------------------------- the LoRA layer
def lora_layer(ax=None, r: int = 4):
    """Hu et al. 2021, Figure 1: h = W0 x + (alpha / r) B A x, A random and B = 0 at the start."""
    ax = _axes(ax, (6.0, 4.6))
    ax.set(xlim=(-3.2, 3.6), ylim=(-0.7, 5.6))
    _box(ax, 0, -0.2, 1.8, 0.5, "x  (N, d_in)")
    _box(ax, -1.6, 2.4, 2.0, 2.2, "pretrained\nweights\nW0 (d_out, d_in)\n\nfrozen", FROZEN)
    ax.add_patch(Polygon([(0.5, 1.3), (3.5, 1.3), (2.4, 2.1), (1.6, 2.1)], closed=True, fc=TRAINED, ec="black"))
    ax.text(2.0, 1.6, "A (r, d_in)\nA ~ N(0, sigma^2)", ha="center", va="center", fontsize=7)
    ax.add_patch(Polygon([(1.6, 2.7), (2.4, 2.7), (3.5, 3.5), (0.5, 3.5)], closed=True, fc=TRAINED, ec="black"))
    ax.text(2.0, 3.2, "B (d_out, r)\nB = 0", ha="center", va="center", fontsize=7)
    ax.text(2.5, 2.35, f"r = {r}", fontsize=8)
    _arrow(ax, (2.0, 2.1), (2.0, 2.7))
    _plus(ax, 0.2, 4.4)
    _box(ax, 0.2, 5.25, 1.8, 0.5, "h  (N, d_out)")
    _arrow(ax, (-0.3, 0.05), (-1.4, 1.3))
    _arrow(ax, (0.3, 0.05), (1.8, 1.3))
    _arrow(ax, (-1.0, 3.5), (0.05, 4.3))
    _arrow(ax, (1.6, 3.5), (0.35, 4.3), text="  x alpha / r")
    _arrow(ax, (0.2, 4.56), (0.2, 5.0))
    ax.text(-3.1, -0.65, "h = W0 x + (alpha / r) B A x;  only A and B (orange) train", fontsize=8)
    ax.set_title("the LoRA layer (Hu et al. 2021, Figure 1)", fontsize=10)
    return ax


# --------------------------------------------------------------------------- merging
def _matrix(ax, x, y, w, h, text, color):
    ax.add_patch(plt.Rectangle((x, y), w, h, fc=color, ec="black"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)


def merging(ax=None):
    """W = W0 + s B A once, before inference; W0 = W - s B A to switch adapters (§4.1)."""
    ax = _axes(ax, (7.6, 2.9))
    ax.set(xlim=(-0.3, 10.6), ylim=(-1.0, 2.9))
    _matrix(ax, 0.0, 0.0, 2.0, 2.0, "W0\n(d_out, d_in)", FROZEN)
    ax.text(2.35, 1.0, "+  s", fontsize=12, va="center")
    _matrix(ax, 3.2, 0.0, 0.4, 2.0, "B", TRAINED)
    _matrix(ax, 3.8, 1.6, 2.0, 0.4, "A (r, d_in)", TRAINED)
    ax.text(3.15, -0.3, "(d_out, r)", fontsize=8)
    ax.text(6.1, 1.0, "=", fontsize=14, va="center")
    _matrix(ax, 6.7, 0.0, 2.0, 2.0, "W\n(d_out, d_in)", "#c7e9c0")
    _arrow(ax, (8.9, 1.6), (10.3, 1.6), text="")
    ax.text(8.95, 1.75, "merge: serve W,", fontsize=8)
    ax.text(8.95, 1.25, "no extra latency", fontsize=8)
    _arrow(ax, (10.3, 0.4), (8.9, 0.4))
    ax.text(8.95, 0.55, "unmerge: W - s B A", fontsize=8)
    ax.text(0.0, -0.75, "one (d_out, r) x (r, d_in) product per matrix, once; in float32 W - s B A gives W0 back "
            "up to rounding", fontsize=8)
    ax.set_title("merging an adapter into the frozen weight", fontsize=10)
    return ax
