"""One runner for every comparison of fine-tuning methods: a method is a config, not a script.

    Budget       what every run gets unless its method says otherwise: steps, batch size, data sizes
    Method       what to train: a registered preparer ("full", "lora", ...) with its own settings
                 (a LoraConfig for "lora" and "qlora"), its learning rate, any change to the budget or
                 to the training loop (LoRA+'s ratio) and measures of its own (merge drift on a 4-bit base)
    Runner       trains (method, task, seed) once, caches the result and measures every method the
                 same way: accuracy, loss, learning curve, time per step, trainable parameters, and
                 any extra ``measures`` (forgetting, say)
    run_methods  methods x tasks x seeds -> ``Results`` (``minilora.experiments.results``: mean +- sd,
                 markdown tables, error-bar plots, JSON)

A preparer turns the frozen base into the model to train for one task and seed. A new method family
is one registered function, and every report, table and plot then takes it as it takes LoRA:

    @register_preparer("bitfit")
    def prepare_bitfit(base, train_data, config, seed):
        ...   # return a model with params, trainable, forward/classify and backward

Seeds: run seed s draws the task's train/test split (unless ``Budget.data_seed`` fixes one split for
every seed), the adapter's random initialisation and the batch order. The spread over seeds is then
all the randomness a user of the method meets.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable

from minilora.adapters.config import LoraConfig
from minilora.data.datasets import ClassificationData, make_splits, trim_padding
from minilora.experiments import finetune
from minilora.experiments.pretrain import load_base
from minilora.experiments.results import Results, RunResult
from minilora.experiments.train import TrainConfig, evaluate, train


# --------------------------------------------------------------------------- budgets and methods
@dataclass(frozen=True)
class Budget:
    steps: int = 300                 # AdamW steps per run
    batch_size: int = 32             # examples per step
    warmup_steps: int = 30           # linear warmup, then linear decay to 0.1 lr (TrainConfig)
    weight_decay: float = 0.0
    n_train: int = 4000              # generated training examples
    n_test: int = 500                # held-out examples (no input also in the training set)
    eval_every: int = 0              # > 0: evaluate every eval_every steps too (a learning curve)
    data_seed: int | None = None     # None: each run seed draws its own split; else this split for all


@dataclass(frozen=True)
class Method:
    """A fine-tuning method as data: ``PREPARERS[kind](base, train_data, config, seed)`` makes the model.

    name: the label in tables and plots ("full", "lora r=8"); unique within one comparison.
    lr: one learning rate, or {task: lr} when the rate was tuned per task (as the paper's Table 9
    lists one per GLUE task); ``lr_for(task)`` reads it.
    budget: changes to the runner's Budget for this method only, as (field, value) pairs
    (``Method.with_budget`` builds them): a method may need more steps, or see fewer examples.
    train: changes to the TrainConfig for this method only, as (field, value) pairs: LoRA+ is LoRA
    with (("loraplus_lr_ratio", 16.0),).
    measures: names of method measures (``register_measure``) taken after each run of this method,
    stored in ``RunResult.extra[name]``: the merge drift of a model on a 4-bit base, say.
    """
    name: str
    kind: str
    lr: float | dict
    config: object = None
    budget: tuple = ()
    train: tuple = ()
    measures: tuple = ()

    def lr_for(self, task: str) -> float:
        """The learning rate for ``task``: the one rate, or this task's entry of the {task: lr} map."""
        if not isinstance(self.lr, dict):
            return float(self.lr)
        if task not in self.lr:
            raise ValueError(f"method {self.name!r} has learning rates for {sorted(self.lr)} only, not for task "
                             f"{task!r}; add it to the lr mapping")
        return float(self.lr[task])

    def budget_for(self, default: Budget) -> Budget:
        """The runner's budget with this method's changes applied."""
        try:
            return dataclasses.replace(default, **dict(self.budget))
        except TypeError as e:
            raise ValueError(f"method {self.name!r}: bad budget change {dict(self.budget)} ({e}); "
                             f"valid fields are {[f.name for f in dataclasses.fields(Budget)]}") from None

    def train_config(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with this method's TrainConfig changes applied."""
        try:
            return dataclasses.replace(cfg, **dict(self.train))
        except TypeError as e:
            raise ValueError(f"method {self.name!r}: bad TrainConfig change {dict(self.train)} ({e}); "
                             f"valid fields are {[f.name for f in dataclasses.fields(TrainConfig)]}") from None

    def with_budget(self, name: str | None = None, **changes) -> "Method":
        """A copy with budget changes (and optionally a new name): ``m.with_budget(n_train=250)``."""
        merged = {**dict(self.budget), **changes}
        return dataclasses.replace(self, name=name or self.name, budget=tuple(sorted(merged.items())))

    def to_dict(self) -> dict:
        config = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        lr = dict(self.lr) if isinstance(self.lr, dict) else self.lr
        d = {"name": self.name, "kind": self.kind, "lr": lr, "config": config, "budget": dict(self.budget)}
        if self.train:                       # only when set, so the records of other methods stay as they were
            d["train"] = dict(self.train)
        if self.measures:
            d["measures"] = list(self.measures)
        return d

    def key(self, task: str | None = None) -> str:
        """What identifies a run's recipe: kind, lr (for ``task``, if given), config and budget. The name
        is only a label, and eval_every only adds evaluations, so neither is part of it."""
        if task is not None:
            self.lr_for(task)                # a task without a learning rate is an error, not a key
        return recipe_key(self.to_dict(), task)


def recipe_key(method: dict, task: str | None = None) -> str:
    """``Method.key`` of a method's record (``Method.to_dict()``, or as a saved Results holds it)."""
    d = {k: v for k, v in method.items() if k != "name"}
    d["budget"] = {k: v for k, v in d["budget"].items() if k != "eval_every"}
    if task is not None and isinstance(d["lr"], dict):
        d["lr"] = d["lr"][task]
    if task is not None:
        d["lr"] = float(d["lr"])
    return json.dumps(d, sort_keys=True, default=str)


def lora_method(r: int, *, lr: float | dict, targets=("wq", "wv"), lora_alpha: float | None = None,
                name: str | None = None, **config) -> Method:
    """Method("lora r=8", "lora", lr, LoraConfig(r, lora_alpha (default 2r), targets, ...))."""
    cfg = LoraConfig(r=r, lora_alpha=2.0 * r if lora_alpha is None else lora_alpha,
                     target_modules=tuple(targets), **config)
    return Method(name or f"lora r={r}", "lora", lr, cfg)


def full_method(*, lr: float | dict, name: str = "full") -> Method:
    """Full fine-tuning: every weight of the base trains."""
    return Method(name, "full", lr)


# --------------------------------------------------------------------------- the preparer registry
PREPARERS: dict[str, Callable] = {}


def register_preparer(kind: str):
    """Decorator: ``fn(base, train_data, config, seed) -> model`` prepares methods of this kind."""
    def register(fn):
        if kind in PREPARERS and PREPARERS[kind] is not fn:
            raise ValueError(f"a preparer for {kind!r} is registered already ({PREPARERS[kind].__name__})")
        PREPARERS[kind] = fn
        return fn
    return register


def prepare_model(base, train_data, method: Method, seed: int):
    """The model ``method`` trains on ``train_data`` for run seed ``seed``; ``base`` is never changed."""
    if method.kind not in PREPARERS:
        raise ValueError(f"method {method.name!r}: no preparer registered for kind {method.kind!r}; "
                         f"registered kinds are {sorted(PREPARERS)} (see register_preparer)")
    return PREPARERS[method.kind](base, train_data, method.config, seed)


@register_preparer("full")
def prepare_full(base, train_data, config, seed):
    """A trainable copy of every base weight (and a new head for a classification task)."""
    return finetune.prepare(base, "full", train_data, seed=seed)


@register_preparer("lora")
def prepare_lora(base, train_data, config, seed):
    """LoRA with ``config`` (a LoraConfig) on a copy of the base; the run seed draws A (config.seed
    is replaced by it), and a classification task trains its new head fully (PEFT: modules_to_save)."""
    config = config or LoraConfig()
    changes = {"seed": seed}
    if isinstance(train_data, ClassificationData) and "head" not in config.modules_to_save:
        changes["modules_to_save"] = tuple(config.modules_to_save) + ("head",)
    return finetune.prepare(base, "lora", train_data, dataclasses.replace(config, **changes), seed=seed)


@register_preparer("qlora")
def prepare_qlora(base, train_data, config, seed):
    """QLoRA (Dettmers et al. 2023): ``prepare_lora`` on a copy of the base whose block linears are
    stored in NF4 with double quantization (``finetune.prepare``'s "qlora"); with
    ``config.use_dora`` it is QDoRA, DoRA on the 4-bit base."""
    config = config or LoraConfig()
    changes = {"seed": seed}
    if isinstance(train_data, ClassificationData) and "head" not in config.modules_to_save:
        changes["modules_to_save"] = tuple(config.modules_to_save) + ("head",)
    return finetune.prepare(base, "qlora", train_data, dataclasses.replace(config, **changes), seed=seed)


# --------------------------------------------------------------------------- method measures
MEASURES: dict[str, Callable] = {}


def register_measure(name: str):
    """Decorator: ``fn(model, test_data) -> JSON-able value`` becomes a measure a Method can name in
    ``Method.measures`` (taken after each of its runs, with the run's held-out data)."""
    def register(fn):
        if name in MEASURES and MEASURES[name] is not fn:
            raise ValueError(f"a measure named {name!r} is registered already ({MEASURES[name].__name__})")
        MEASURES[name] = fn
        return fn
    return register


def measure(name: str) -> Callable:
    """The registered measure ``name``, or an error naming the registered ones."""
    if name not in MEASURES:
        raise ValueError(f"no measure registered as {name!r}; registered: {sorted(MEASURES)} (see register_measure; "
                         f"the module that registers it must be imported)")
    return MEASURES[name]


# --------------------------------------------------------------------------- the runner
class Runner:
    """A base model, a default budget, and every run made so far (cached by recipe, task and seed).

    measures: {name: fn(model, task, runner) -> JSON-able value}, called after each run's training
    and stored in ``RunResult.extra[name]`` (e.g. accuracy on the pretraining tasks).
    keep_if: fn(method, task, seed) -> bool; the trained models of those runs are kept (``model``),
    for analyses that read their weights later. Others are dropped after measuring.
    """

    def __init__(self, base=None, budget: Budget | None = None, *, measures: dict | None = None,
                 keep_if: Callable | None = None, log: Callable | None = print):
        self.base = base if base is not None else load_base()[0]
        self.budget = budget or Budget()
        self.measures = dict(measures or {})
        self.log = log or (lambda *a, **k: None)
        self.keep_if = keep_if or (lambda method, task, seed: False)
        self.runs: dict[tuple, RunResult] = {}
        self.models: dict[tuple, object] = {}
        self._data: dict[tuple, tuple] = {}
        self.seconds = 0.0

    def data(self, task: str, seed: int, budget: Budget | None = None):
        """(train, test) of ``task`` for run seed ``seed`` under ``budget`` (cached), with the padding
        columns no example reaches cut off (``trim_padding``: same results, less time per step)."""
        b = budget or self.budget
        data_seed = seed if b.data_seed is None else b.data_seed
        key = (task, data_seed, b.n_train, b.n_test)
        if key not in self._data:
            splits = make_splits(task, b.n_train, b.n_test, seed=data_seed, block_size=self.base.config.block_size)
            self._data[key] = tuple(trim_padding(d) for d in splits)
        return self._data[key]

    def run(self, method: Method, task: str, seed: int, *, keep: bool = False) -> RunResult:
        """Train ``method`` on ``task`` with ``seed`` (once; later calls return the cached result).

        keep=True keeps the trained model too (``model``), for analyses that read its weights.
        """
        key = (method.key(task), task, int(seed))
        b = method.budget_for(self.budget)
        keep = keep or self.keep_if(method, task, seed)
        cached = self.runs.get(key)
        if cached is not None and (not keep or key in self.models) and (cached.curve or not b.eval_every):
            return dataclasses.replace(cached, method=method.name)
        train_data, test_data = self.data(task, seed, b)
        model = prepare_model(self.base, train_data, method, seed)
        cfg = TrainConfig(steps=b.steps, batch_size=b.batch_size, lr=method.lr_for(task), warmup_steps=b.warmup_steps,
                          weight_decay=b.weight_decay, eval_every=b.eval_every or b.steps, seed=seed,
                          progress=False)
        cfg = method.train_config(cfg)
        t0 = time.perf_counter()
        history = train(model, train_data, test_data if b.eval_every else None, cfg, desc=method.name)
        final = evaluate(model, test_data)
        extra = {name: fn(model, task, self) for name, fn in self.measures.items()}
        extra.update({name: measure(name)(model, test_data) for name in method.measures})
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        curve = [{"step": 0, **evaluate(prepare_model(self.base, train_data, method, seed), test_data)}] \
            if b.eval_every else []
        curve += [{"step": e["step"], "accuracy": e["accuracy"], "loss": e["loss"]} for e in history.evals]
        result = RunResult(task=task, method=method.name, seed=int(seed), accuracy=final["accuracy"],
                           loss=final["loss"], trainable=history.trainable_params, ms_per_step=history.ms_per_step,
                           seconds=seconds, steps=b.steps, n_train=b.n_train, curve=curve, extra=extra)
        self.runs[key] = result
        if keep:
            self.models[key] = model
        self.log(f"  {task:<10} {method.name:<22} seed {seed}  accuracy {100 * result.accuracy:5.1f}%  "
                 f"loss {result.loss:.3f}  ({seconds:.1f} s)", flush=True)
        return result

    def remember(self, results: Results) -> int:
        """Take the runs of an earlier comparison (a saved ``Results``, made under this runner's budget)
        into the cache: a later run of the same recipe, task and seed returns it instead of training
        again (a long comparison resumes; two comparisons share the runs they have in common).
        Returns how many runs were taken."""
        if results.budget and results.budget != dataclasses.asdict(self.budget):
            raise ValueError(f"those runs were made under another budget ({results.budget}), not this runner's "
                             f"({dataclasses.asdict(self.budget)})")
        taken = 0
        for run in results.runs:
            if run.method in results.methods:
                key = (recipe_key(results.methods[run.method], run.task), run.task, int(run.seed))
                taken += key not in self.runs
                self.runs.setdefault(key, run)
        return taken

    def model(self, method: Method, task: str, seed: int):
        """The trained model of that run (trained now if it was not kept)."""
        self.run(method, task, seed, keep=True)
        return self.models[(method.key(task), task, int(seed))]


def run_methods(methods, tasks, seeds, *, runner: Runner | None = None, keep: bool = False, **runner_kw) -> Results:
    """Every method on every task with every seed: a ``Results`` of the raw per-seed runs.

    methods: Method objects with distinct names; tasks: registered task names; seeds: ints.
    runner: share one Runner (and its cache) between calls; otherwise one is made from runner_kw
    (base, budget, measures, log).
    """
    methods, tasks, seeds = list(methods), list(tasks), [int(s) for s in seeds]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct within one comparison, got {names}")
    if not (methods and tasks and seeds):
        raise ValueError(f"need at least one method, task and seed, got {names}, {tasks}, {seeds}")
    runner = runner or Runner(**runner_kw)
    runs = [runner.run(m, t, s, keep=keep) for t in tasks for m in methods for s in seeds]
    return Results(runs=runs, methods={m.name: m.to_dict() for m in methods},
                   budget=dataclasses.asdict(runner.budget))
