"""Specification of the LoRA-family comparison: methods as configs, one JSON record per run, mean +- sd."""
import json

import pytest

from minilora.cli import main
from minilora.experiments import family

TINY = {"steps": 2, "batch_size": 4, "warmup_steps": 1, "n_train": 24, "n_test": 8}


def test_family_methods_are_configs_of_lora_plus_full():
    """Every member at every rank, full once; DoRA/rsLoRA/PiSSA change LoraConfig, LoRA+ the optimizer."""
    methods = {m["name"]: m for m in family.family_methods((1, 8))}
    assert len(methods) == 2 * (len(family.DEFAULT) - 1) + 1 and methods["full"]["kind"] == "full", sorted(methods)
    assert methods["dora r=1"]["config"]["use_dora"] and methods["dora r=1"]["config"]["r"] == 1
    assert methods["rslora r=8"]["config"]["use_rslora"]
    assert methods["pissa r=8"]["config"]["init_lora_weights"] == "pissa"
    assert methods["loraplus r=8"]["train"] == {"loraplus_lr_ratio": family.LORAPLUS_RATIO}
    assert {m["lr"] for n, m in methods.items() if m["family"] not in ("full", "loraplus")} == {family.LR["lora"]}
    assert methods["loraplus r=1"]["lr"] * family.LORAPLUS_RATIO == family.LR["lora"], "LoRA+'s B at LoRA's lr"
    with pytest.raises(ValueError, match="unknown methods"):
        family.family_methods((1,), ("lora", "vera"))


def test_runs_are_plain_records_and_a_saved_file_resumes_without_training(tiny_base):
    """run_family returns JSON records; given those records back, it trains nothing new."""
    methods = family.family_methods((1,), ("lora", "dora", "full"))
    logged = []
    res = family.run_family(["shift"], [0, 1], methods, budget=TINY, base=tiny_base, log=logged.append)
    assert len(res["runs"]) == 6 and len(logged) == 6, len(res["runs"])
    run = next(r for r in res["runs"] if r["method"] == "dora r=1")
    assert set(run) >= {"task", "method", "r", "seed", "accuracy", "trainable", "optimizer_bytes", "ms_per_step"}
    lora = next(r for r in res["runs"] if r["method"] == "lora r=1" and r["seed"] == run["seed"])
    assert run["trainable"] - lora["trainable"] == 4 * 2 * 16, "DoRA adds one magnitude per output row"
    again = family.run_family(["shift"], [0, 1], methods, budget=TINY, base=tiny_base, runs=res["runs"],
                              log=logged.append)
    assert len(logged) == 6 and again["runs"] == res["runs"], "a resumed comparison must not train again"
    json.dumps(res)


def record(method, fam, r, seed, acc, ms):
    return {"task": "t", "method": method, "family": fam, "r": r, "seed": seed, "accuracy": acc, "loss": 0.0,
            "trainable": 1, "optimizer_bytes": 8, "ms_per_step": ms}


def test_summary_pairs_each_run_with_lora_of_the_same_rank_and_seed():
    """Step time ratio per seed against LoRA at the same r; accuracy mean +- sd; a clear gap gets a verdict."""
    methods = family.family_methods((2,), ("lora", "dora"))
    runs = [record("lora r=2", "lora", 2, s, a, ms) for s, a, ms in ((0, 0.50, 10.0), (1, 0.52, 20.0), (2, 0.51, 10.0))]
    runs += [record("dora r=2", "dora", 2, s, a, ms)
             for s, a, ms in ((0, 0.90, 12.0), (1, 0.91, 22.0), (2, 0.92, 11.0))]
    rows = {r["method"]: r for r in family.summary_rows({"methods": methods, "runs": runs})}
    dora = rows["dora r=2"]
    assert dora["ms_vs_lora"][0] == pytest.approx((1.2 + 1.1 + 1.1) / 3), dora["ms_vs_lora"]
    assert dora["accuracy"][0] == pytest.approx(0.91) and dora["accuracy"][1] == pytest.approx(0.01)
    assert dora["verdict"] == "dora ahead of LoRA", dora["verdict"]


def test_verdict_is_within_noise_when_the_spread_covers_the_gap():
    """Means 0.50 and 0.52 with sds about 0.1: not a finding."""
    assert family.verdict([0.4, 0.5, 0.6], [0.42, 0.52, 0.62], "dora", "LoRA") == "within noise"
    assert family.verdict([0.1, 0.1, 0.1], [0.9, 0.9, 0.9], "dora", "LoRA") == "dora behind LoRA"


def test_seeds_that_agree_by_chance_still_carry_the_sampling_error():
    """100% three times against 99.8% three times on 500 examples: sd 0 over seeds, yet within noise."""
    assert family.verdict([1.0] * 3, [0.998] * 3, "dora", "LoRA") == "dora ahead of LoRA"
    assert family.verdict([1.0] * 3, [0.998] * 3, "dora", "LoRA", n_test=500) == "within noise"


@pytest.mark.slow
def test_family_command_writes_json_table_and_plot(tmp_path, capsys):
    """`minilora family --quick` writes family.json (records), family.md (the table) and family.png."""
    assert main(["family", "--quick", "--seeds", "1", "--ranks", "1", "--methods", "lora", "dora", "full",
                 "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "family.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["lora r=1", "dora r=1", "full"], runs
    assert "| shift | dora r=1 |" in (tmp_path / "family.md").read_text() and (tmp_path / "family.png").is_file()
