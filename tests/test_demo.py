"""Specification of the demo, the project's main job (a few steps per run, so it is quick)."""
import pytest

from minilora.experiments.demo import run_demo


@pytest.mark.slow
def test_demo_compares_merges_switches_and_writes_its_report(tmp_path):
    """Every task gets a LoRA and a full row; merged = unmerged; switching gives each task's accuracy back."""
    out = run_demo(tmp_path / "demo", steps=3, progress=False, tasks=("rotate", "palindrome"))
    rows = {(r.task, r.method): r for r in out["results"]}
    assert set(rows) == {(t, m) for t in ("rotate", "palindrome") for m in ("lora", "full")}
    for task in ("rotate", "palindrome"):
        lora, full = rows[task, "lora"], rows[task, "full"]
        assert lora.trainable_params < full.trainable_params / 40
        assert out["merge_errors"][task] < 1e-3, out["merge_errors"]
        assert out["switched"][task] == pytest.approx(lora.accuracy), (task, out["switched"], lora.accuracy)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| rotate | lora |" in report and (tmp_path / "demo" / "comparison.png").exists()
