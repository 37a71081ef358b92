"""The training loop, evaluation, loss curves and checkpoints, shared by pretraining, LoRA and
full fine-tuning, so that their numbers are comparable.

A batch is a dict of NumPy arrays from ``minilora.data.datasets``:
    generation:      x (B, T), y (B, T) next-token targets, mask (B, T) 1 on answer tokens
    classification:  x (B, T), last (B,) position the head reads, labels (B,)
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm  # plain tqdm, not tqdm.auto: no widget JSON in notebooks

from minilora import checks, fast, io
from minilora.data.datasets import TextData, iterate_batches
from minilora.experiments import resume
from minilora.fast import memory, parallel
from minilora.nn import backend
from minilora.nn.loss import forward_loss
from minilora.nn.loss import loss_and_grads as plain_loss_and_grads
from minilora.nn.model import GPT
from minilora.nn.optim import AdamW, clip_grad_norm, linear_warmup_decay, loraplus_lr_scale


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stopped before applying the bad update."""


@dataclass
class TrainConfig:
    steps: int = 1000            # optimizer steps
    batch_size: int = 32         # B: examples per step
    lr: float = 3e-3             # peak learning rate (AdamW)
    warmup_steps: int = 50       # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1    # linear decay ends at min_lr_ratio * lr
    weight_decay: float = 0.01   # decoupled, on matrices only (AdamW)
    grad_clip: float = 1.0       # global-norm clipping; 0 turns it off
    eval_every: int = 250        # steps between evaluations (and checkpoints, unless save_every says otherwise)
    seed: int = 0                # batch order
    progress: bool = True        # show a tqdm progress bar
    fast: bool = True            # the optimised kernels, worker threads and memory reuse of minilora.fast
    workers: int | None = None   # with fast: threads sharing each batch; None: one per core (fast.parallel)
    save_every: int | None = None  # steps between resumable checkpoints (with checkpoint_dir); None: eval_every
    loraplus_lr_ratio: float | None = None   # LoRA+ (Hayou et al. 2024): lr of B (and 1-d params) = ratio x lr

    def __post_init__(self):
        _check_train_config(self)


@dataclass
class History:
    """What one training run measured."""
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)        # {"step", "loss", "accuracy"}
    seconds: float = 0.0
    ms_per_step: float = 0.0
    trainable_params: int = 0
    optimizer_bytes: int = 0
    last_good_checkpoint: str | None = None

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}


def _check_train_config(c: TrainConfig) -> None:
    """Refuse a setting that would train nothing or something else: steps = 0 or -1, lr = 0 or NaN, ..."""
    for name in ("steps", "batch_size", "eval_every"):
        setattr(c, name, checks.integer(f"TrainConfig.{name}", getattr(c, name), minimum=1))
    c.warmup_steps = checks.integer("TrainConfig.warmup_steps", c.warmup_steps, minimum=0)
    c.seed = checks.integer("TrainConfig.seed", c.seed, minimum=0)
    c.lr = checks.number("TrainConfig.lr", c.lr, above=0)
    c.min_lr_ratio = checks.number("TrainConfig.min_lr_ratio", c.min_lr_ratio, minimum=0)
    c.weight_decay = checks.number("TrainConfig.weight_decay", c.weight_decay, minimum=0)
    c.grad_clip = checks.number("TrainConfig.grad_clip", c.grad_clip, minimum=0)
    for name in ("workers", "save_every"):
        if getattr(c, name) is not None:
            setattr(c, name, checks.integer(f"TrainConfig.{name}", getattr(c, name), minimum=1))
    if c.loraplus_lr_ratio is not None:
        c.loraplus_lr_ratio = checks.number("TrainConfig.loraplus_lr_ratio", c.loraplus_lr_ratio, above=0)


# --------------------------------------------------------------------------- one step
def to_backend(batch: dict) -> dict:
    """Move a batch of NumPy arrays to the active backend."""
    return {k: backend.asarray(v) for k, v in batch.items()}


# --------------------------------------------------------------------------- evaluation
def correct_rows(logits, batch) -> np.ndarray:
    """Per-example exact match as a NumPy bool array (B,).

    Generation: every answer token is the argmax. Under teacher forcing this equals greedy
    decoding: if all answer positions are right given the right prefix, greedy decoding
    produces that same prefix at every step, and the first wrong position is wrong either way.
    """
    pred = logits.argmax(axis=-1)
    if "labels" in batch:
        ok = pred == batch["labels"]
    else:
        ok = ((pred == batch["y"]) | (batch["mask"] == 0)).all(axis=-1)
    return backend.to_numpy(ok)


def evaluate(model: GPT, data, *, batch_size: int = 512, fast: bool = True) -> dict:
    """Mean loss and exact-match accuracy of ``model`` over every example of ``data``.

    ``fast``: use minilora.fast's kernels (the same numbers up to float rounding).
    """
    fields = ("x", "last", "labels") if hasattr(data, "labels") else ("x", "y", "mask")
    total_loss, correct, n = 0.0, 0, len(data)
    if n == 0:
        raise ValueError("evaluate() got no examples; evaluate on at least one (n_test >= 1)")
    with _speed_ups(model, fast):
        for start in range(0, n, batch_size):
            batch = to_backend({f: getattr(data, f)[start:start + batch_size] for f in fields})
            loss, logits, _ = forward_loss(model, batch)
            rows = len(batch["x"])
            total_loss += loss * rows      # rows weigh equally (masked tokens are averaged per batch)
            correct += int(correct_rows(logits, batch).sum())
    return {"loss": total_loss / n, "accuracy": correct / n}


def evaluate_text(model: GPT, data: TextData, *, batches: int = 8, batch_size: int = 32, seed: int = 0,
                  fast: bool = True) -> dict:
    """Mean next-character loss and token accuracy on random windows of a text."""
    rng = np.random.default_rng(seed)
    losses, accs = [], []
    with _speed_ups(model, fast):
        for _ in range(batches):
            batch = to_backend(data.sample(batch_size, rng))
            loss, logits, _ = forward_loss(model, batch)
            losses.append(loss)
            accs.append(float(backend.to_numpy((logits.argmax(-1) == batch["y"]).mean())))
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs))}


def _evaluate_any(model, data):
    return evaluate_text(model, data) if isinstance(data, TextData) else evaluate(model, data)


# --------------------------------------------------------------------------- the loop
def _batches(data, batch_size, seed):
    if isinstance(data, TextData):
        rng = np.random.default_rng(seed)
        while True:
            yield data.sample(batch_size, rng)
    yield from iterate_batches(data, batch_size, seed)


def train(model: GPT, train_data, eval_data=None, config: TrainConfig | None = None, *,
          optimizer=None, checkpoint_dir=None, resume_from=None, run_info: dict | None = None,
          on_eval: Callable | None = None, desc: str = "train") -> History:
    """Train ``model.trainable`` with AdamW (or ``optimizer``) on ``train_data``.

    Every ``eval_every`` steps and at the end: evaluate on ``eval_data``. With a ``checkpoint_dir``,
    every ``save_every`` steps (default ``eval_every``) and at the end: save a resumable checkpoint
    there, as one save (``minilora.experiments.resume``), never from NaN or inf weights.
    ``resume_from``: a checkpoint folder of this same run (same model, data and config): training
    continues from its step and ends where the uninterrupted run ends. ``run_info``: JSON facts
    stored in the checkpoint (the command line keeps its options there). ``on_eval(model, step)`` is
    called at the same points as the evaluation (an analysis that reads the weights during training). A NaN or inf loss stops
    training before the bad update is applied and raises NonFiniteLossError naming the last good checkpoint.
    """
    cfg = config or TrainConfig()
    _check_train_config(cfg)           # again: a field set after construction (cfg.steps = 0) is checked too
    if model.num_params(trainable_only=True) == 0:
        raise ValueError("the model has no trainable parameter (everything frozen, or its adapter disabled or "
                         "deleted), so training would change nothing; unfreeze parameters or set an adapter")
    if optimizer is not None and cfg.loraplus_lr_ratio is not None:
        raise ValueError("TrainConfig.loraplus_lr_ratio builds the optimizer, so it cannot apply to the optimizer "
                         "you passed; give that one lr_scale=loraplus_lr_scale(ratio) instead")
    scale = loraplus_lr_scale(cfg.loraplus_lr_ratio) if cfg.loraplus_lr_ratio is not None else None
    opt = optimizer or AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay, lr_scale=scale)
    hist = History(trainable_params=model.num_params(trainable_only=True))
    fingerprints = {}                  # what a resumed run must share with the run that saved the checkpoint
    if checkpoint_dir is not None or resume_from is not None:
        fingerprints = {"frozen weights": resume.frozen_fingerprint(model),
                        "training data": resume.data_fingerprint(train_data)}
    if checkpoint_dir is not None:     # refuse an unusable folder now, not after the first save_every steps
        io.check_save_target(checkpoint_dir, resume.model_file_names(model) + resume.STATE_FILES)
    start = 0
    if resume_from is not None:
        start, saved = resume.restore(resume_from, model=model, optimizer=opt, config=cfg, fingerprints=fingerprints)
        for key, value in saved.items():
            setattr(hist, key, value)
    batches = _batches(train_data, cfg.batch_size, cfg.seed)
    for _ in range(start):             # the data position: draw again, and drop, the batches already used
        next(batches)
    save_every = cfg.save_every or cfg.eval_every
    with _speed_ups(model, cfg.fast):
        bar = tqdm(range(start, cfg.steps), desc=desc, disable=not cfg.progress, leave=False, mininterval=0.5)
        for step in bar:
            opt.lr = linear_warmup_decay(step, total_steps=cfg.steps, warmup_steps=min(cfg.warmup_steps, cfg.steps),
                                         base_lr=cfg.lr, min_lr=cfg.lr * cfg.min_lr_ratio)
            t0 = time.perf_counter()
            batch = to_backend(next(batches))
            loss, grads = (parallel.loss_and_grads(model, batch, workers=cfg.workers) if cfg.fast
                           else plain_loss_and_grads(model, batch))
            if not math.isfinite(loss):
                _stop_non_finite(f"loss became {loss} at step {step}; training stopped before applying that update",
                                 opt.lr, hist)
            if cfg.grad_clip:
                clip_grad_norm(grads, cfg.grad_clip)
            opt.step(model.params, grads)
            backend.synchronize()
            hist.seconds += time.perf_counter() - t0
            hist.steps.append(step)
            hist.losses.append(loss)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
            last = step == cfg.steps - 1
            if eval_data is not None and ((step + 1) % cfg.eval_every == 0 or last):
                hist.evals.append({"step": step + 1, **_evaluate_any(model, eval_data)})
            if on_eval is not None and ((step + 1) % cfg.eval_every == 0 or last):
                on_eval(model, step + 1)
            if checkpoint_dir is not None and ((step + 1) % save_every == 0 or last):
                _save_checkpoint(model, opt, step + 1, cfg, hist, fingerprints, Path(checkpoint_dir), run_info)
        bar.close()
    hist.ms_per_step = 1000 * hist.seconds / max(cfg.steps, 1)
    hist.optimizer_bytes = opt.state_bytes()
    return hist


def _save_checkpoint(model, opt, steps_done, cfg, hist, fingerprints, directory, run_info):
    """One resumable checkpoint, as one save; refused when a weight is NaN or inf (the update just made)."""
    bad = [k for k in sorted(model.trainable) if not bool(backend.xp.isfinite(model.params[k]).all())]
    if bad:
        _stop_non_finite(f"after step {steps_done - 1} the weights hold NaN or inf ({bad[0]}); they were not saved",
                         opt.lr, hist)
    state = {"steps": hist.steps, "losses": hist.losses, "evals": hist.evals, "seconds": hist.seconds,
             "last_good_checkpoint": f"{directory} (step {steps_done})"}
    with io.atomic_folder(directory, resume.model_file_names(model) + resume.STATE_FILES) as tmp:
        resume.write_model_files(model, tmp)
        resume.write_state(tmp, model=model, optimizer=opt, step=steps_done, config=cfg, history=state,
                           fingerprints=fingerprints, run=run_info)
    hist.last_good_checkpoint = state["last_good_checkpoint"]


@contextlib.contextmanager
def _speed_ups(model, on: bool):
    """With ``on``: minilora.fast's kernels for this run, and freed memory kept for reuse (glibc).

    They change no result beyond float rounding (tests/test_fast.py); ``TrainConfig(fast=False)``
    trains with the textbook layers alone.
    """
    if not on:
        yield
        return
    memory.keep_freed_memory()
    with fast.use_kernels(model):
        yield


def _stop_non_finite(what, lr, hist):
    kept = (f"the last good checkpoint is {hist.last_good_checkpoint}" if hist.last_good_checkpoint
            else "no checkpoint was written (pass checkpoint_dir to keep one)")
    raise NonFiniteLossError(
        f"{what}, and {kept}. Lower the learning rate (it was {lr:.2e}) or keep gradient clipping on (grad_clip).")


# --------------------------------------------------------------------------- plots
def plot_histories(histories: dict[str, History], path, *, title: str = "training loss") -> Path:
    """Loss curves of several runs (smoothed over 20 steps) in one PNG."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, h in histories.items():
        losses = np.asarray(h.losses)
        k = min(20, max(len(losses), 1))
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) >= k else losses
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=label)
    ax.set(xlabel="step", ylabel="loss (20-step mean)", title=title, yscale="log")
    ax.legend(fontsize=8)
    return io.save_figure(fig, path)
