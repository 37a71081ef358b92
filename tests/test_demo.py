"""Specification of the demo, the project's main job (a few steps per run, so it is quick)."""
import pytest

from minilora.experiments.demo import run_demo


@pytest.mark.slow
def test_demo_compares_merges_switches_and_writes_its_report(tmp_path):
    """Every task gets LoRA and full rows over the seeds; merged = unmerged; switching gives each task's
    seed-0 accuracy back; the report and its raw results are written."""
    out = run_demo(tmp_path / "demo", steps=3, progress=False, tasks=("rotate", "ordered"), seeds=(0, 1))
    res = out["results"]
    assert set(res.tasks) == {"rotate", "ordered"} and set(res.method_names) == {"full", "lora r=8"}, res.method_names
    for task in ("rotate", "ordered"):
        lora, full = res.select(task, "lora r=8"), res.select(task, "full")
        assert [r.seed for r in lora] == [0, 1] and [r.seed for r in full] == [0, 1]
        assert lora[0].trainable < full[0].trainable / 40, (lora[0].trainable, full[0].trainable)
        assert out["merge_errors"][task] < 1e-3, out["merge_errors"]
        assert out["switched"][task] == pytest.approx(lora[0].accuracy), (task, out["switched"], lora[0].accuracy)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| rotate | lora r=8 |" in report and "+-" in report, report[:500]
    assert (tmp_path / "demo" / "comparison.png").exists() and (tmp_path / "demo" / "results.json").exists()


def test_the_demo_command_refuses_a_single_seed(capsys):
    """`minilora demo --seeds 1` is an error naming the fix: its table shows a spread over seeds."""
    from minilora.cli import main

    assert main(["demo", "--seeds", "1", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err, err
