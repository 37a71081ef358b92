"""Optimizers, the learning-rate schedule and gradient clipping, for trainable parameters only.

Every function works on flat dicts with the model's dotted names:
    params: name -> array, ALL parameters (frozen ones included); updated in place
    grads:  name -> array, only the TRAINABLE names; same shape as params[name]

Shapes: grads[name], and every state array kept for it, have the shape of params[name].

Optimizer state is created lazily, one entry per name that appears in ``grads``. Frozen
parameters never have a gradient, so they never get state: with LoRA, AdamW holds 2 x (adapter
size) numbers instead of 2 x (model size). [LoRA] §4.2: up to 2/3 less VRAM, "as we do not need
to store the optimizer states for the frozen parameters".

Updates are in place (``p -= ...``), never ``params[name] = p - ...``: the dict entries stay the
same array objects, so references held elsewhere (a LoRA layer, a tied embedding) see the update,
and frozen parameters stay bit-identical because nothing touches them.

Array math goes through ``xp``, so the same code runs on NumPy and on CuPy.
"""
from __future__ import annotations

import math

from minilora.nn.backend import xp


def _check_grads(params: dict, grads: dict) -> None:
    """Refuse gradients for unknown names or with the wrong shape, before anything is updated."""
    unknown = sorted(set(grads) - set(params))
    if unknown:
        raise ValueError(
            f"grads has names that are not in params: {unknown}. Gradients must use the same "
            f"dotted names as the params dict (e.g. 'blocks.0.attn.wq.lora_A')."
        )
    for name, g in grads.items():
        if g.shape != params[name].shape:
            raise ValueError(
                f"gradient for {name!r} has shape {tuple(g.shape)}, "
                f"but the parameter has shape {tuple(params[name].shape)}"
            )


# --------------------------------------------------------------------------- SGD
class SGD:
    """Stochastic gradient descent with optional momentum, as torch.optim.SGD (dampening 0).

        g   = grad + weight_decay * p         # L2 penalty, coupled: it passes through momentum
        buf = momentum * buf + g              # buf starts at 0, so the first buf is g
        p  -= lr * buf                        # (without momentum: p -= lr * g)

    ``state``: name -> {"momentum_buffer": array}, only for names that had a gradient and only
    when momentum > 0.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.state: dict[str, dict] = {}

    def step(self, params: dict, grads: dict) -> None:
        """Update ``params[name]`` in place for every name in ``grads``; grads are not modified."""
        _check_grads(params, grads)
        for name, g in grads.items():
            p = params[name]
            if self.weight_decay != 0.0:
                g = g + self.weight_decay * p  # a new array: the caller's grad stays as it was
            if self.momentum != 0.0:
                if name not in self.state:
                    self.state[name] = {"momentum_buffer": xp.zeros_like(p)}
                buf = self.state[name]["momentum_buffer"]
                buf *= self.momentum
                buf += g
                g = buf
            p -= self.lr * g

    def state_bytes(self) -> int:
        """Bytes held in optimizer state (the momentum buffers)."""
        return sum(s["momentum_buffer"].nbytes for s in self.state.values())


# --------------------------------------------------------------------------- AdamW
def adamw_update(p, g, m, v, t: int, lr: float, b1: float, b2: float, eps: float, wd: float):
    """One AdamW step for one parameter, in place on ``p``, ``m`` and ``v``; returns None.

    p, g, m, v: arrays of one shape: parameter, its gradient, first and second moment.
    t:          this parameter's step number, counting from 1 (the bias corrections need t >= 1).
    lr, b1, b2, eps, wd: learning rate, moment decay rates, denominator guard, weight decay.

    Loshchilov & Hutter 2019, Algorithm 2 (decoupled weight decay, applied before the Adam step),
    with Kingma & Ba 2015's bias-corrected moments, in the order torch.optim.AdamW uses.
    ### BEGIN HINT
        p  *= 1 - lr * wd                            # decoupled weight decay, before the Adam step
        m   = b1 m + (1 - b1) g                      # first moment (mean of g)
        v   = b2 v + (1 - b2) g^2                    # second moment (uncentred variance of g)
        m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)   # Kingma & Ba 2015, bias correction
        p  -= lr * m_hat / (sqrt(v_hat) + eps)
    ### END HINT
    """
    ### BEGIN SOLUTION
    # Decoupled: the decay shrinks p directly, it is not added to g (that would be Adam + L2,
    # where the decay gets divided by sqrt(v_hat) like everything else).
    p *= 1.0 - lr * wd
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    # One scratch buffer: sqrt(v_hat) + eps, then the step itself.
    step = xp.sqrt(v)
    step /= math.sqrt(1.0 - b2**t)  # sqrt(v_hat)
    step += eps
    xp.divide(m, step, out=step)  # m / (sqrt(v_hat) + eps)
    step *= lr / (1.0 - b1**t)  # lr * m_hat / (sqrt(v_hat) + eps)
    p -= step
    ### END SOLUTION


def _default_no_decay(name: str, p) -> bool:
    """Default ``no_decay``: True for 0-d and 1-d parameters (biases, LayerNorm gains)."""
    return p.ndim < 2


class AdamW:
    """AdamW with a per-parameter step count.

    ``state``: name -> {"m": array, "v": array, "t": int}, created the first time a name has a
    gradient. Each parameter counts its own steps ``t``: a parameter that joins later (a new
    adapter added mid-training) starts its own bias correction at t = 1 instead of inheriting the
    global step, and a parameter without a gradient in some step is not updated and does not
    advance its ``t``. (torch.optim.AdamW also keeps a step count per parameter.)

    ``no_decay(name, array) -> bool`` picks the parameters that get no weight decay; by default
    those with ndim < 2. ``lr`` may be set between steps (schedules do).
    ``lr_scale(name, array) -> float`` multiplies the learning rate per parameter (default 1 for
    all), what torch expresses with parameter groups; ``loraplus_lr_scale`` gives LoRA+'s.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, no_decay=None, lr_scale=None):
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.no_decay = _default_no_decay if no_decay is None else no_decay
        self.lr_scale = lr_scale
        self.state: dict[str, dict] = {}

    def step(self, params: dict, grads: dict) -> None:
        """Update ``params[name]`` in place for every name in ``grads``; grads are not modified."""
        _check_grads(params, grads)
        b1, b2 = self.betas
        for name, g in grads.items():
            p = params[name]
            if name not in self.state:
                self.state[name] = {"m": xp.zeros_like(p), "v": xp.zeros_like(p), "t": 0}
            s = self.state[name]
            s["t"] += 1
            wd = 0.0 if self.no_decay(name, p) else self.weight_decay
            lr = self.lr if self.lr_scale is None else self.lr * self.lr_scale(name, p)
            adamw_update(p, g, s["m"], s["v"], s["t"], lr, b1, b2, self.eps, wd)

    def state_bytes(self) -> int:
        """Bytes held in optimizer state (m and v; the step counts are not counted)."""
        return sum(s["m"].nbytes + s["v"].nbytes for s in self.state.values())


# --------------------------------------------------------------------------- LoRA+
def loraplus_lr_scale(ratio: float):
    """LoRA+ (Hayou et al. 2024, arXiv 2402.12354): B learns ``ratio`` times faster than A.

    Returns ``lr_scale(name, array) -> float`` for ``AdamW(lr_scale=...)``: ``ratio`` for every
    lora_B matrix and every 1-d trainable parameter (biases, LayerNorm gains, DoRA magnitudes),
    1 for the rest (lora_A, full matrices such as a trained head). These are the groups PEFT's
    ``create_loraplus_optimizer`` forms (``"lora_B" in name or param.ndim == 1``); ratio is the
    paper's lambda = eta_B / eta_A, for which it suggests about 2^4 = 16.
    Two PEFT details minilora does not copy: PEFT gives LoRA on embedding layers an absolute lr
    (``loraplus_lr_embedding``, 1e-6), and minilora adapts no embedding; PEFT's groups use
    ``loraplus_weight_decay`` (default 0.0) instead of the optimizer's weight decay, so pass
    weight_decay=0.0 for PEFT's defaults.
    """
    if not ratio > 0:
        raise ValueError(f"the LoRA+ ratio lr_B / lr_A must be positive, got {ratio}")

    def lr_scale(name: str, p) -> float:
        return float(ratio) if ("lora_B" in name or p.ndim == 1) else 1.0
    return lr_scale


# --------------------------------------------------------------------------- schedule
def linear_warmup_decay(step: int, *, total_steps: int, warmup_steps: int, base_lr: float,
                        min_lr: float = 0.0) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then linear decay to ``min_lr``.

        step < warmup_steps:            base_lr * (step + 1) / warmup_steps
                                        (step 0 already trains; step warmup_steps - 1 gives base_lr)
        warmup_steps <= step < total:   from base_lr at step = warmup_steps, linearly,
                                        reaching min_lr at step = total_steps
        step >= total_steps:            min_lr
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    frac = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return base_lr + frac * (min_lr - base_lr)


# --------------------------------------------------------------------------- clipping
def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all grads in place so their global L2 norm is at most ``max_norm``; return the norm.

    The norm is over all arrays together, sqrt(sum_i sum(g_i^2)), accumulated in float64. If it
    exceeds max_norm every grad is multiplied by max_norm / (norm + 1e-6) (as
    torch.nn.utils.clip_grad_norm_), so the result lands just under max_norm. The returned value
    is the norm BEFORE clipping. A non-finite norm (inf or nan) is returned without scaling
    anything: scaling would turn every gradient into nan or 0, and the caller should decide
    (skip the step, lower the learning rate, stop).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    total = 0.0
    for g in grads.values():
        g64 = g.astype(xp.float64, copy=False)
        total = total + xp.sum(g64 * g64)  # stays on the device until the one float() below
    norm = math.sqrt(float(total))
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm
