"""``minilora findings``: the claims learners bring to LoRA, and the paper's §7 findings, measured.

Every comparison runs where the compared methods learn, on several seeds, through one runner
(``minilora.experiments.runner``), and is judged by the rules of ``minilora.experiments.stats``. The
experiments, all on the shipped base and the downstream tasks (``DOWNSTREAM_TASKS``):

    grid            full fine-tuning and LoRA on Wq, Wv at r = 1, 2, 4, 8, 16 (alpha fixed, §4.1), every
                    task and seed; each run also scores the pretraining tasks (forgetting)
    sample sizes    full and LoRA r = 8 with fewer training examples, on an easy and a hard task,
                    with learning curves (accuracy against steps)
    §7              on one task: Wq alone, a fixed parameter budget over matrix types (Table 5),
                    r = 64 for the subspace similarity (Figures 3, 4) and dW vs W (Table 7), the
                    spectrum of the full fine-tuning update
    known rank      LoRA students of a teacher whose update has rank k (minilora.experiments.known_rank)
    memory, speed   one training step counted (minilora.experiments.memory) and timed (speed)

``run_findings`` returns and saves plain data (``findings.json``); ``minilora.experiments.findings_report``
turns it into verdicts, a markdown report and plots, so a notebook that loads the recorded JSON
(``load_findings``) reads the same verdicts without training anything.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minilora import io
from minilora.data.datasets import make_dataset, trim_padding
from minilora.data.tasks import DOWNSTREAM_TASKS, PRETRAIN_TASKS
from minilora.experiments import memory, speed
from minilora.experiments.finetune import BATCH_SIZE, STEPS, SWEPT_LR
from minilora.experiments.known_rank import KnownRankConfig, known_rank_experiment
from minilora.experiments.pretrain import base_info, load_base
from minilora.experiments.runner import Budget, Runner, full_method, lora_method, run_methods
from minilora.experiments.section7 import section7_measurements, section7_small_r
from minilora.experiments.train import evaluate, to_backend

RECORDED = Path(__file__).resolve().parent / "recorded" / "findings.json"


@dataclass
class FindingsConfig:
    tasks: tuple = DOWNSTREAM_TASKS
    seeds: tuple = (0, 1, 2)
    steps: int = STEPS                # every run (400); full fine-tuning reaches >= 95% on every task in it
    batch_size: int = BATCH_SIZE      # 32
    n_train: int = 4000
    n_test: int = 500
    # learning rates per task, chosen by the sweep of minilora.experiments.lr_sweep (finetune.SWEPT_LR:
    # full 1e-3 everywhere; LoRA 1e-2 on rotate and double, 5e-3 on ordered)
    full_lr: dict = field(default_factory=lambda: dict(SWEPT_LR["full"]))
    lora_lr: dict = field(default_factory=lambda: dict(SWEPT_LR["lora"]))
    lora_alpha: float = 16.0          # fixed for every r (§4.1: set once, not tuned)
    ranks: tuple = (1, 4, 8, 16)      # Table 6's small ranks and one above r = 8 (r = 64 runs in §7)
    sample_tasks: tuple = ("rotate", "double")   # an easy and a hard task
    sample_sizes: tuple = (250,)                  # besides n_train (a 16x smaller training set)
    curve_every: int = 100            # learning curves: evaluate every this many steps
    section7_task: str = "double"
    wq_ranks: tuple = (1, 16)         # Table 6: Wq alone
    budget_configs: tuple = ((("wq",), 8), (("wq", "wv"), 4), (("wq", "wk", "wv", "wo"), 2))   # Table 5, 3 of 7
    r_large: int = 64                 # §7.2 compares r = 8 with r = 64
    forget_n: int = 200               # examples per pretraining task for the forgetting measure
    timing_rounds: int = 20
    known_rank: KnownRankConfig = field(default_factory=KnownRankConfig)

    def budget(self) -> Budget:
        return Budget(steps=self.steps, batch_size=self.batch_size, warmup_steps=self.steps // 10,
                      n_train=self.n_train, n_test=self.n_test)

    @classmethod
    def quick(cls, **overrides) -> "FindingsConfig":
        """Tiny settings for tests: a few steps, two seeds, two ranks; the numbers mean nothing."""
        settings = dict(seeds=(0, 1), steps=4, batch_size=8, n_train=64, n_test=32, ranks=(1, 8),
                        sample_sizes=(32,), curve_every=2, wq_ranks=(1,), r_large=16, forget_n=16, timing_rounds=2,
                        budget_configs=((("wq",), 4), (("wq", "wv"), 2)),
                        known_rank=KnownRankConfig(k=2, ranks=(1, 2, 4), n_inputs=4, steps=3))
        settings.update(overrides)
        return cls(**settings)


# --------------------------------------------------------------------------- methods
def methods(cfg: FindingsConfig) -> dict:
    """Every method the findings compare, by name."""
    lora = lambda r, **kw: lora_method(r, lr=cfg.lora_lr, lora_alpha=cfg.lora_alpha, **kw)
    out = {"full": full_method(lr=cfg.full_lr)}
    out.update({f"lora r={r}": lora(r) for r in cfg.ranks})
    out.update({f"lora wq r={r}": lora(r, targets=("wq",), name=f"lora wq r={r}") for r in cfg.wq_ranks})
    for targets, r in cfg.budget_configs:
        name = f"lora {','.join(targets)} r={r}"
        out[name] = lora(r, targets=targets, name=name)
    out[f"lora r={cfg.r_large}"] = lora(cfg.r_large)
    return out


def forgetting_measure(base, n: int):
    """A runner measure: exact match on ``n`` fresh examples of each pretraining task (the same
    examples for every run), with the model as it is after fine-tuning."""
    data = {t: trim_padding(make_dataset(t, n, seed=30_000, block_size=base.config.block_size)) for t in PRETRAIN_TASKS}
    return lambda model, task, runner: {t: evaluate(model, d)["accuracy"] for t, d in data.items()}


# --------------------------------------------------------------------------- the experiments
def run_grid(runner: Runner, cfg: FindingsConfig, m: dict):
    """Claims 1, 2, 4: full and LoRA at every r, every task and seed. The sample-size tasks' full and
    r = 8 runs are trained first with learning curves, and the grid reuses them."""
    curve = {"eval_every": cfg.curve_every}
    curves = run_methods([m["full"].with_budget(**curve), m["lora r=8"].with_budget(**curve)], cfg.sample_tasks,
                         cfg.seeds, runner=runner)
    grid = run_methods([m["full"]] + [m[f"lora r={r}"] for r in cfg.ranks], cfg.tasks, cfg.seeds, runner=runner)
    return grid, curves


def run_sample_sizes(runner: Runner, cfg: FindingsConfig, m: dict):
    """Claim 3: full and LoRA r = 8 with fewer training examples (same steps, so more epochs)."""
    sized = [m[name].with_budget(name=f"{name} n={n}", n_train=n) for n in cfg.sample_sizes
             for name in ("full", "lora r=8")]
    return run_methods(sized, cfg.sample_tasks, cfg.seeds, runner=runner)


def run_section7(runner: Runner, cfg: FindingsConfig, m: dict):
    """§7 on one task: Wq alone, the fixed budget, r = r_large; models kept for the matrix analyses."""
    names = [f"lora wq r={r}" for r in cfg.wq_ranks] + [f"lora {','.join(t)} r={r}" for t, r in cfg.budget_configs]
    runs = run_methods([m[n] for n in names] + [m[f"lora r={cfg.r_large}"]], [cfg.section7_task], cfg.seeds,
                       runner=runner)
    return runs, section7_measurements(runner, cfg, m)


def kept_models(cfg: FindingsConfig, m: dict):
    """Which runs keep their trained model: the §7 task's full, small-r, r = 8 and r_large runs."""
    keys = {m[name].key(cfg.section7_task) for name in ("full", f"lora r={section7_small_r(cfg)}", "lora r=8",
                                                        f"lora r={cfg.r_large}")}
    return lambda method, task, seed: task == cfg.section7_task and method.key(task) in keys


def measure_memory_and_speed(base, cfg: FindingsConfig, m: dict) -> dict:
    """Claims 5 and 6 on one batch of the first task: memory counted, formula, traced peak; step times."""
    from minilora.experiments.runner import prepare_model

    data = make_dataset(cfg.tasks[0], cfg.batch_size, seed=0, block_size=base.config.block_size)
    batch = to_backend({"x": data.x, "y": data.y, "mask": data.mask})
    models = {name: prepare_model(base, data, m[key], 0) for name, key in (("full", "full"), ("lora", "lora r=8"))}
    c, (B, T) = base.config, data.x.shape
    r, n_targets = m["lora r=8"].config.r, len(m["lora r=8"].config.target_modules)
    out = {"B": B, "T": T, "r": r, "lora_targets": n_targets, "measured": {}, "formula": {}, "traced_peak": {}}
    for name, model in models.items():
        out["measured"][name] = memory.measure_step(model, batch)
        out["traced_peak"][name] = memory.trace_step(model, batch)
        n_train = model.num_params(trainable_only=True)
        groups = (memory.full_groups(model.num_params()) if name == "full"
                  else memory.lora_groups(model.num_params() - n_train, n_train))
        u = c.n_layer * n_targets * r if name == "lora" else 0
        act = memory.activation_bytes(B=B, T=T, C=c.n_embd, L=c.n_layer, NH=c.n_head, V=c.vocab_size, lora_u=u)
        out["formula"][name] = memory.estimate(groups, act)
    out["extrapolated"] = {f"{shape}, B={b}, {bits}-bit": memory.extrapolate(shape, B=b, r=r, bits=bits)
                           for shape in memory.GPT_SHAPES for b in (1, 8) for bits in (32, 16)}
    times = speed.time_steps(models, batch, rounds=cfg.timing_rounds)
    flops = {k: speed.train_step_flops(c, B, T, **kw)["train_step"]
             for k, kw in (("full", {}), ("lora", {"lora_r": r, "lora_targets": n_targets}))}
    out["speed"] = {**speed.step_ratio(times, "lora", "full"), "flops_ratio": flops["lora"] / flops["full"],
                    "times_s": times}
    return out


def run_findings(out_dir=None, config: FindingsConfig | None = None, *, base=None, log=print) -> dict:
    """Run every experiment; write ``out_dir``/findings.json and the report (if out_dir is given)."""
    from minilora.experiments.findings_report import write_report

    cfg = config or FindingsConfig()
    t0 = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    base = base if base is not None else load_base()[0]
    m = methods(cfg)
    runner = Runner(base, cfg.budget(), measures={"forget": forgetting_measure(base, cfg.forget_n)},
                    keep_if=kept_models(cfg, m), log=log)
    timings = {}

    def timed(name, fn):
        log(f"[{name}]", flush=True)
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    grid, curves = timed("grid", lambda: run_grid(runner, cfg, m))
    sized = timed("sample sizes", lambda: run_sample_sizes(runner, cfg, m))
    s7_runs, s7 = timed("section 7", lambda: run_section7(runner, cfg, m))
    known = timed("known rank", lambda: known_rank_experiment(base, cfg.known_rank, log=log))
    mem = timed("memory and speed", lambda: measure_memory_and_speed(base, cfg, m))
    base_forget = forgetting_measure(base, cfg.forget_n)(base, None, None)
    sweep = RECORDED.parent / "lr_sweep.json"          # the sweep behind full_lr and lora_lr, if recorded
    data = {"format": "minilora.findings", "version": 1, "config": _plain(dataclasses.asdict(cfg)),
            "grid": grid.to_dict(), "curves": curves.to_dict(), "sample_sizes": sized.to_dict(),
            "section7_runs": s7_runs.to_dict(), "section7": s7, "known_rank": known, "memory": mem,
            "base": {"forget": base_forget, "info": base_info(), "params": base.num_params()},
            "lr_sweep": io.read_json(sweep) if sweep.is_file() else None,
            "machine": {"cpu_count": os.cpu_count(), "load_average_start": load,
                        "load_average_end": [round(x, 2) for x in os.getloadavg()] if load else None,
                        "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time(),
                        "timings": timings}}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "findings.json", data)
        write_report(data, out)
        log(f"wrote {out / 'report.md'} in {data['machine']['wall_seconds']:.0f} s", flush=True)
    return data


def load_findings(path=None) -> dict:
    """The recorded findings (``RECORDED``: the last full run shipped with minilora) or those at ``path``."""
    path = Path(path) if path is not None else RECORDED
    if not path.is_file():
        raise FileNotFoundError(f"no findings at {path}; run `minilora findings --out DIR` and pass DIR/findings.json")
    data = io.read_json(path)
    if data.get("format") != "minilora.findings":
        raise ValueError(f"{path} is not a minilora findings record (format = {data.get('format')!r})")
    return data


def _plain(x):
    """JSON-ready copies of tuples and NumPy numbers inside nested containers."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
