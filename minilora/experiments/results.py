"""The one result format of minilora's comparisons: raw per-seed runs, mean +- sd, tables, plots, JSON.

``minilora.experiments.runner.run_methods`` returns a ``Results``; every report (the findings, the
demo, the rank analyses) reads it the same way and saves it as plain JSON that a notebook loads
instead of training again (``Results.load``).

    results.summary("shift", "lora r=8")             Summary(mean, sd, n, values) of accuracy
    results.summary("shift", "full", "extra.forget.copy")   any number a measure stored
    results.table()                                  markdown: tasks x methods, "mean +- sd"
    plot_bars(results, path) / plot_lines(...)       error bars = one standard deviation over seeds
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from minilora import io
from minilora.experiments.stats import Summary, summarize


@dataclass
class RunResult:
    """One run: a method trained on a task with a seed, and what it measured."""
    task: str
    method: str                  # the Method's name
    seed: int
    accuracy: float              # exact match on the held-out examples, 0..1
    loss: float                  # mean test loss
    trainable: int               # trainable parameters
    ms_per_step: float           # training time per step (noisy on a shared machine)
    seconds: float               # training and evaluation, wall time
    steps: int
    n_train: int
    curve: list = field(default_factory=list)   # [{"step", "accuracy", "loss"}], step 0 = before training
    extra: dict = field(default_factory=dict)   # {measure name: value}

    def get(self, metric: str):
        """A field ("accuracy") or a value a measure stored, by dotted path ("extra.forget.copy")."""
        value = self
        for part in metric.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        return value


@dataclass
class Results:
    runs: list                   # [RunResult]
    methods: dict = field(default_factory=dict)   # {name: Method.to_dict()}
    budget: dict = field(default_factory=dict)    # the runner's default Budget

    # ---------------------------------------------------------------- reading
    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.runs))

    @property
    def method_names(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs))

    def select(self, task: str | None = None, method: str | None = None) -> list:
        """The runs of ``task`` and ``method`` (None: any), in seed order."""
        runs = [r for r in self.runs if task in (None, r.task) and method in (None, r.method)]
        return sorted(runs, key=lambda r: r.seed)

    def values(self, task: str, method: str, metric: str = "accuracy") -> list[float]:
        runs = self.select(task, method)
        if not runs:
            raise KeyError(f"no runs of method {method!r} on task {task!r}; have methods {self.method_names} "
                           f"on tasks {self.tasks}")
        return [float(r.get(metric)) for r in runs]

    def summary(self, task: str, method: str, metric: str = "accuracy") -> Summary:
        """mean +- sd over seeds of ``metric`` for one (task, method)."""
        return summarize(self.values(task, method, metric))

    def __add__(self, other: "Results") -> "Results":
        """Both sets of runs (a run in both appears once)."""
        seen = {(r.task, r.method, r.seed) for r in self.runs}
        extra = [r for r in other.runs if (r.task, r.method, r.seed) not in seen]
        return Results(self.runs + extra, {**self.methods, **other.methods}, self.budget or other.budget)

    # ---------------------------------------------------------------- writing
    def table(self, metric: str = "accuracy", *, scale: float = 100.0, unit: str = "%", digits: int = 1,
              methods=None, tasks=None) -> str:
        """Markdown: one row per task, one column per method, cells "mean +- sd" over n seeds."""
        methods, tasks = list(methods or self.method_names), list(tasks or self.tasks)
        lines = ["| task | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for t in tasks:
            cells = [self.summary(t, m, metric).fmt(scale, digits, unit) if self.select(t, m) else "" for m in methods]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        n = sorted({len(self.select(t, m)) for t in tasks for m in methods if self.select(t, m)})
        lines.append(f"\nmean +- standard deviation over {'/'.join(map(str, n))} seeds.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"format": "minilora.results", "version": 1, "methods": self.methods, "budget": self.budget,
                "runs": [asdict(r) for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        if d.get("format") != "minilora.results":
            raise ValueError(f"not a minilora results record (format = {d.get('format')!r})")
        return cls([RunResult(**r) for r in d["runs"]], d.get("methods", {}), d.get("budget", {}))

    def save(self, path) -> Path:
        """Write the results as JSON (atomically)."""
        io.write_json(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path) -> "Results":
        return cls.from_dict(io.read_json(Path(path)))


# --------------------------------------------------------------------------- plots
def plot_bars(results: Results, path=None, *, metric: str = "accuracy", scale: float = 100.0,
              ylabel: str = "exact match (%)", title: str = "", methods=None, tasks=None, ax=None):
    """Grouped bars: tasks along x, one bar per method at its mean, the error bar one sd over seeds,
    and each seed's value as a dot (with 3 seeds the dots are the honest picture)."""
    import matplotlib.pyplot as plt
    import numpy as np

    methods, tasks = list(methods or results.method_names), list(tasks or results.tasks)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks) * max(len(methods), 2) / 2, 3.6))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        xs = np.arange(len(tasks)) + (k - (len(methods) - 1) / 2) * width
        s = [results.summary(t, m, metric) if results.select(t, m) else None for t in tasks]
        ax.bar(xs, [scale * x.mean if x else 0 for x in s], width, yerr=[scale * x.sd if x else 0 for x in s],
               capsize=3, label=m, alpha=0.85)
        for x, summ in zip(xs, s):
            if summ:
                ax.plot([x] * summ.n, [scale * v for v in summ.values], "k.", ms=3)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return _finish(ax, path) if own else ax


def plot_lines(xs, series: dict, path=None, *, xlabel: str, ylabel: str, title: str = "", scale: float = 1.0,
               logx: bool = False, logy: bool = False, ax=None):
    """Lines with error bars: series = {label: [Summary per x]} (mean +- sd over seeds at each x)."""
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, summaries in series.items():
        ax.errorbar(xs, [scale * s.mean for s in summaries], yerr=[scale * s.sd for s in summaries],
                    marker="o", ms=4, capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(list(xs), [str(x) for x in xs])
        ax.minorticks_off()
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _finish(ax, path) if own else ax


def _finish(ax, path):
    fig = ax.figure
    ax.title.set_fontsize(9)
    if path is None:
        fig.tight_layout()
        return fig
    return io.save_figure(fig, path)
