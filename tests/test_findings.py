"""Specification of ``minilora findings``: the pipeline, and the recorded findings it ships.

The recorded findings (minilora/experiments/recorded/findings.json, from one full run) are held to
the standard they exist for: every compared method learned, full fine-tuning reaches 95% on every
downstream task, and no verdict of the claims rests on runs that stayed at chance.
"""
from pathlib import Path

import pytest

from minilora.data.tasks import DOWNSTREAM_TASKS
from minilora.experiments import lr_sweep
from minilora.experiments.findings import RECORDED, FindingsConfig, load_findings, run_findings
from minilora.experiments.findings_verdicts import NOT_JUDGED, claims_only, results, verdict_table, verdicts
from minilora.experiments.results import Results, RunResult
from minilora.experiments.stats import HELD, NOISE, NOT_HELD

VERDICTS = {HELD, NOT_HELD, NOISE, NOT_JUDGED}
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_findings_write_data_report_and_reproducible_verdicts(tiny_base, tmp_path):
    """A tiny run writes findings.json and report.md; the verdicts recomputed from the saved JSON are
    the ones in the report, and every verdict is one of the four."""
    data = run_findings(tmp_path, FindingsConfig.quick(), base=tiny_base, log=lambda *a, **k: None)
    rows = verdicts(data)
    assert rows and {r["verdict"] for r in rows} <= VERDICTS, {r["verdict"] for r in rows}
    again = verdicts(load_findings(tmp_path / "findings.json"))
    assert again == rows, "verdicts from the saved JSON differ from the run's"
    report = (tmp_path / "report.md").read_text()
    assert "## Verdicts" in report and all(r["claim"] in report for r in rows)
    assert all((tmp_path / f).exists() for f in ("rank.png", "forgetting.png", "known_rank.png", "memory.png"))


def test_load_findings_names_the_fix_for_a_missing_file(tmp_path):
    """A missing record says how to make one."""
    with pytest.raises(FileNotFoundError, match="minilora findings"):
        load_findings(tmp_path / "none.json")


def test_best_learning_rate_is_the_best_mean_over_tasks():
    """best_lr: the best mean over tasks (a tie goes to the smaller rate); chosen_lrs: the best per task."""
    run = lambda m, t, acc: RunResult(t, m, 0, acc, 0.0, 1, 1.0, 1.0, 1, 1)
    res = Results([run("full lr=0.001", "a", 0.9), run("full lr=0.001", "b", 0.7), run("full lr=0.003", "a", 1.0),
                   run("full lr=0.003", "b", 0.5), run("full lr=0.0003", "a", 0.8), run("full lr=0.0003", "b", 0.8)])
    assert lr_sweep.best_lr(res, "full") == 0.0003, "0.8 = 0.8 = 0.75: the tie goes to the smaller rate"
    assert lr_sweep.chosen_lrs(res, "full") == {"a": 0.003, "b": 0.0003}, "per task: the rate with the best accuracy on that task"


# --------------------------------------------------------------------------- the recorded findings
recorded = pytest.mark.skipif(not RECORDED.is_file(), reason="no recorded findings shipped")


@pytest.fixture(scope="module")
def data():
    return load_findings()


@recorded
def test_recorded_findings_ran_every_downstream_task_on_three_seeds(data):
    """The record covers the shipped downstream tasks, each comparison on at least 3 seeds."""
    cfg = data["config"]
    assert tuple(cfg["tasks"]) == DOWNSTREAM_TASKS and len(cfg["seeds"]) >= 3, (cfg["tasks"], cfg["seeds"])
    grid = results(data, "grid")
    assert all(len(grid.select(t, m)) == len(cfg["seeds"]) for t in cfg["tasks"] for m in grid.method_names)


@recorded
def test_full_finetuning_reaches_95_percent_on_every_task_in_the_budget(data):
    """The regime where the comparison means something: full fine-tuning learns every task, every seed."""
    grid = results(data, "grid")
    worst = {t: min(grid.values(t, "full")) for t in data["config"]["tasks"]}
    assert all(a >= 0.95 for a in worst.values()), f"worst seed per task: {worst}"


@recorded
def test_no_verdict_of_the_claims_rests_on_runs_that_did_not_learn(data):
    """Claims 1, 2 and 4 (same budget, every task) are all judged: every compared run learned."""
    rows = [r for r in verdicts(data) if r["section"][:2] in ("1.", "2.", "4.")]
    unjudged = [(r["claim"], r["rule"]) for r in rows if r["verdict"] == NOT_JUDGED]
    assert rows and not unjudged, unjudged


@recorded
def test_recorded_memory_counts_equal_the_formula_and_the_knee_is_at_k(data):
    """The counted memory of both methods equals the formula; the known-rank knee sits at r = k."""
    mem = data["memory"]
    assert mem["measured"] == mem["formula"], (mem["measured"], mem["formula"])
    knee = [r for r in verdicts(data) if r["section"] == "known rank"][0]
    assert knee["verdict"] == HELD, knee


@recorded
def test_docs_and_readme_show_the_verdicts_of_the_recorded_run(data):
    """docs/findings.md holds the recorded run's verdict table row for row, and README its claims' rows, so
    neither can state a verdict the record does not."""
    rows = verdicts(data)
    docs = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fix = "paste the table that findings_verdicts.verdict_table(verdicts(load_findings())) prints"
    assert verdict_table(rows) in docs, f"docs/findings.md: the verdict table is not the recorded run's; {fix}"
    assert verdict_table(claims_only(rows), rules=False) in readme, \
        f"README.md: the findings table is not the recorded run's; {fix} (claims_only, rules=False)"


def test_the_command_refuses_a_single_seed(capsys):
    """`minilora findings --seeds 1` is an error: a spread needs at least two seeds."""
    from minilora.cli import main

    assert main(["findings", "--seeds", "1", "--quick"]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_writes_the_quick_report(tmp_path):
    """`minilora findings --quick --out DIR` writes report.md and findings.json (and `analyze` is the same)."""
    from minilora.cli import main

    assert main(["analyze", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").is_file() and load_findings(tmp_path / "findings.json")["config"]["steps"] == 4
