"""Specification of the two-task adapter combination demo (PEFT's add_weighted_adapter on trained adapters)."""
import json

from minilora.experiments import combination_demo

SMALL = {"steps": 2, "r": 2, "n_train": 24, "n_test": 8, "batch_size": 8}


def test_demo_scores_every_adapter_on_every_task_and_reports_each_combination(tiny_base):
    """Single adapters, cat/linear/svd and the base, each on both tasks; cat is rank 2r and exact."""
    res = combination_demo.run_combination_demo(tiny_base, seeds=(0,), log=lambda *a: None, **SMALL)
    run = res["runs"][0]
    assert list(run["accuracy"]) == ["shift", "rotate", "cat", "linear", "svd", "base"], list(run["accuracy"])
    assert all(set(acc) == {"shift", "rotate"} for acc in run["accuracy"].values())
    assert run["rank"] == {"cat": 4, "linear": 2, "svd": 2}, run["rank"]
    assert run["relative_error"]["cat"] < 1e-5 < run["relative_error"]["svd"], run["relative_error"]
    assert "| cat |" in combination_demo.table(res)
    json.dumps(res)
