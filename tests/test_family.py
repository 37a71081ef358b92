"""Specification of the LoRA-family comparison: each member a Method on the one runner, one Results, stats verdicts."""
import json

import pytest

from helpers import SWEEP_C, SWEEP_L
from minilora.cli import main
from minilora.experiments import family, stats
from minilora.experiments.finetune import SWEPT_LR
from minilora.experiments.results import Results, RunResult
from minilora.experiments.runner import Budget, Runner
from minilora.experiments.train import TrainConfig

TINY = Budget(steps=2, batch_size=4, warmup_steps=1, n_train=24, n_test=8)


def test_family_methods_are_configs_of_lora_plus_full():
    """Every member at every rank, full once; DoRA/rsLoRA/PiSSA change LoraConfig, LoRA+ the training loop."""
    methods = {m.name: m for m in family.family_methods((1, 8))}
    assert len(methods) == 2 * (len(family.DEFAULT) - 1) and methods["full"].kind == "full", sorted(methods)
    assert "rslora r=1" not in methods, "rsLoRA at r = 1 is LoRA (alpha / sqrt(1) = alpha / 1)"
    assert {m.kind for n, m in methods.items() if n != "full"} == {"lora"}, {m.kind for m in methods.values()}
    assert methods["dora r=1"].config.use_dora and methods["dora r=1"].config.r == 1
    assert methods["rslora r=8"].config.use_rslora and not methods["lora r=8"].config.use_rslora
    assert methods["pissa r=8"].config.init_lora_weights == "pissa"
    assert methods["lora r=1"].config.lora_alpha == methods["lora r=8"].config.lora_alpha == 16.0, "alpha fixed in r"
    assert tuple(methods["lora r=8"].config.target_modules) == ("wq", "wv")
    with pytest.raises(ValueError, match="unknown methods"):
        family.family_methods((1,), ("lora", "vera"))


def test_loraplus_gets_its_ratio_and_the_members_get_the_swept_rates():
    """LoRA+ carries loraplus_lr_ratio = 16 to the TrainConfig, at A's rate = LoRA's / 16; the others take the
    findings' swept rate of LoRA on each task, full fine-tuning its own."""
    methods = {m.name: m for m in family.family_methods((8,))}
    plus = methods["loraplus r=8"]
    assert plus.train_config(TrainConfig()).loraplus_lr_ratio == family.LORAPLUS_RATIO, plus.train
    assert methods["lora r=8"].train == () and methods["dora r=8"].train == ()
    for task, lr in SWEPT_LR["lora"].items():
        assert methods["dora r=8"].lr_for(task) == lr, (task, methods["dora r=8"].lr)
        assert plus.lr_for(task) * family.LORAPLUS_RATIO == pytest.approx(lr), "LoRA+'s B at LoRA's lr"
    assert methods["full"].lr_for("double") == SWEPT_LR["full"]["double"]
    extra = {m.name: m for m in family.family_methods((1,), ("lora", "full"), tasks=("shift",))}
    assert extra["lora r=1"].lr_for("shift") == min(SWEPT_LR["lora"].values()), "an unswept task: smallest rate"


def test_the_family_runs_through_the_runner_and_a_saved_file_resumes_without_training(tiny_base):
    """run_family returns a Results; given it back as `saved`, nothing is trained again."""
    methods = family.family_methods((1,), ("lora", "dora", "full"), tasks=("shift",))
    logged = []
    res = family.run_family(["shift"], [0, 1], methods, budget=TINY, base=tiny_base, log=lambda *a, **k: logged.append(a))
    assert isinstance(res, Results) and len(res.runs) == 6 and len(logged) == 6, len(res.runs)
    dora = res.select("shift", "dora r=1")[0]
    lora = res.select("shift", "lora r=1")[0]
    assert dora.trainable - lora.trainable == 2 * SWEEP_L * SWEEP_C, "DoRA adds one magnitude per output row of Wq, Wv"
    again = family.run_family(["shift"], [0, 1], methods, budget=TINY, base=tiny_base, saved=res, log=lambda *a, **k: logged.append(a))
    assert len(logged) == 6, f"a resumed comparison must not train again ({len(logged) - 6} new runs)"
    assert [vars(r) for r in again.runs] == [vars(r) for r in res.runs]
    json.dumps(res.to_dict())
    with pytest.raises(ValueError, match="another budget"):
        Runner(tiny_base, Budget(steps=3), log=None).remember(res)


def run(method, seed, acc, ms, task="double"):
    return RunResult(task=task, method=method, seed=seed, accuracy=acc, loss=0.0, trainable=10, ms_per_step=ms,
                     seconds=1.0, steps=1, n_train=1)


def test_summary_pairs_each_run_with_lora_of_the_same_rank_and_seed():
    """Step time ratio per seed against LoRA at the same r; accuracy as a Summary; a clear gap is "held"."""
    runs = [run("lora r=2", s, a, ms) for s, a, ms in ((0, 0.50, 10.0), (1, 0.52, 20.0), (2, 0.51, 10.0))]
    runs += [run("dora r=2", s, a, ms) for s, a, ms in ((0, 0.90, 12.0), (1, 0.91, 22.0), (2, 0.92, 11.0))]
    rows = {r["method"]: r for r in family.summary_rows(Results(runs))}
    dora = rows["dora r=2"]
    assert dora["ms_vs_lora"].mean == pytest.approx((1.2 + 1.1 + 1.1) / 3), dora["ms_vs_lora"]
    assert dora["accuracy"].mean == pytest.approx(0.91) and dora["accuracy"].sd == pytest.approx(0.01)
    assert dora["verdict"].verdict == stats.HELD and dora["vs"] == "lora r=2", dora["verdict"]
    assert rows["lora r=2"]["verdict"] is None and dora["optimizer_bytes"] == 8 * 10
    assert "| double | dora r=2 | 91.0 +- 1.0% | 3 |" in family.table(Results(runs)), family.table(Results(runs))


def test_a_gap_inside_the_spread_is_within_noise_and_runs_at_chance_are_not_judged():
    """Means 0.50 vs 0.52 with sds 0.1: within noise; every seed at 0% exact match: not judged."""
    runs = [run("lora r=1", s, a, 1.0) for s, a in enumerate((0.42, 0.52, 0.62))]
    runs += [run("dora r=1", s, a, 1.0) for s, a in enumerate((0.4, 0.5, 0.6))]
    runs += [run("full", s, 0.0, 1.0) for s in range(3)]
    rows = {r["method"]: r for r in family.summary_rows(Results(runs))}
    assert rows["dora r=1"]["verdict"].verdict == stats.NOISE, rows["dora r=1"]["verdict"]
    assert rows["full"]["vs"] == "lora r=1" and rows["full"]["verdict"].startswith("not judged"), rows["full"]


@pytest.mark.slow
def test_family_command_writes_json_table_and_plot(tmp_path):
    """`minilora family --quick` writes family.json (a Results), family.md (the table) and family.png."""
    assert main(["family", "--quick", "--seeds", "1", "--ranks", "1", "--methods", "lora", "dora", "full",
                 "--out", str(tmp_path)]) == 0
    res = Results.load(tmp_path / "family.json")
    assert res.method_names == ["lora r=1", "dora r=1", "full"], res.method_names
    assert "| double | dora r=1 |" in (tmp_path / "family.md").read_text() and (tmp_path / "family.png").is_file()
