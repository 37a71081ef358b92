"""Specification of minilora.experiments.runner and results: one runner, one result format, for every method.

The runs use the sweep specs' random tiny GPT (tests/helpers.py) and a few steps: they test the
plumbing (caching, seeds, the preparer registry, JSON), not what the methods learn.
"""
import dataclasses

import numpy as np
import pytest

from minilora.adapters.config import LoraConfig

from minilora.experiments import runner as runner_mod
from minilora.experiments.results import Results, plot_bars, plot_lines
from minilora.experiments.runner import (Budget, Method, Runner, full_method, lora_method, prepare_model,
                                         register_measure, register_preparer, run_methods)

BUDGET = Budget(steps=3, batch_size=8, warmup_steps=1, n_train=32, n_test=16)


@pytest.fixture
def runner(tiny_base):
    return Runner(tiny_base, BUDGET, log=None)


def test_a_run_is_trained_once_and_then_read_from_the_cache(runner):
    """The same recipe, task and seed returns the cached result, relabelled with the caller's name."""
    m = lora_method(2, lr=1e-2)
    first = runner.run(m, "rotate", 0)
    again = runner.run(Method("another label", m.kind, m.lr, m.config), "rotate", 0)
    assert len(runner.runs) == 1, f"expected 1 training run, got {len(runner.runs)}"
    assert again.accuracy == first.accuracy and again.method == "another label", (again.method, again.accuracy)


def test_the_recipe_key_ignores_name_and_evaluation_schedule_but_not_the_budget():
    """Renaming or adding evaluations does not change a run; fewer training examples does."""
    m = lora_method(4, lr=1e-2)
    assert m.key() == m.with_budget(name="x", eval_every=5).key()
    assert m.key() != m.with_budget(n_train=16).key()
    assert m.key() != lora_method(4, lr=2e-2).key()


def test_each_seed_draws_its_own_data_and_initialisation(runner):
    """Seeds 0 and 1 differ in their training split and their LoRA A; a fixed data_seed shares the split."""
    tr0, _ = runner.data("rotate", 0)
    tr1, _ = runner.data("rotate", 1)
    assert tr0.prompts != tr1.prompts, "two seeds gave the same training examples"
    fixed = Budget(**{**BUDGET.__dict__, "data_seed": 7})
    assert runner.data("rotate", 0, fixed)[0].prompts == runner.data("rotate", 1, fixed)[0].prompts
    m = lora_method(2, lr=1e-2)
    m0, m1 = prepare_model(runner.base, tr0, m, 0), prepare_model(runner.base, tr0, m, 1)
    a0 = m0.params[m0.param_name("blocks.0.attn.wq.lora_A.weight")]
    a1 = m1.params[m1.param_name("blocks.0.attn.wq.lora_A.weight")]
    assert not np.array_equal(a0, a1), "the run seed must draw LoRA's A"


def test_a_registered_preparer_makes_a_new_method_a_config(runner, monkeypatch):
    """A method family is one registered function; run_methods then treats it like LoRA and full."""
    monkeypatch.setattr(runner_mod, "PREPARERS", dict(runner_mod.PREPARERS))

    @register_preparer("biases_only")
    def prepare_biases(base, train_data, config, seed):          # a BitFit-like toy: train the biases
        model = runner_mod.prepare_full(base, train_data, None, seed)
        model.freeze()
        model.unfreeze([k for k in model.params if k.endswith(".bias")])
        return model

    res = run_methods([Method("bias", "biases_only", 1e-2), full_method(lr=1e-3)], ["rotate"], [0, 1], runner=runner)
    bias_runs = res.select("rotate", "bias")
    n_bias = sum(int(v.size) for k, v in runner.base.params.items() if k.endswith(".bias"))
    assert [r.trainable for r in bias_runs] == [n_bias, n_bias], (bias_runs[0].trainable, n_bias)
    with pytest.raises(ValueError, match="registered already"):
        register_preparer("biases_only")(lambda *a: None)


def test_unknown_kinds_and_repeated_names_are_refused(runner):
    """An unregistered kind names the registered ones; two methods with one name cannot be compared."""
    with pytest.raises(ValueError, match="registered kinds"):
        runner.run(Method("q", "qlora_nf3", 1e-3), "rotate", 0)
    with pytest.raises(ValueError, match="distinct"):
        run_methods([full_method(lr=1e-3), full_method(lr=2e-3)], ["rotate"], [0], runner=runner)
    with pytest.raises(ValueError, match="valid fields"):
        lora_method(2, lr=1e-2).with_budget(epochs=3).budget_for(BUDGET)


def test_classification_tasks_train_a_new_head_with_lora(runner):
    """LoRA on a yes/no task adds the head to modules_to_save by itself, as PEFT users write it."""
    train, _ = runner.data("ordered", 0)
    model = prepare_model(runner.base, train, lora_method(2, lr=1e-2), 0)
    assert {model.param_name("head.weight"), model.param_name("head.bias")} <= model.trainable, \
        sorted(k for k in model.trainable if ".lora_" not in k)


def test_measures_and_learning_curves_are_recorded_per_run(tiny_base):
    """extra holds each measure's value; eval_every adds a curve that starts before training (step 0)."""
    r = Runner(tiny_base, BUDGET, measures={"n_params": lambda model, task, runner: model.num_params()}, log=None)
    run = r.run(full_method(lr=1e-3).with_budget(eval_every=1), "rotate", 0)
    assert run.extra["n_params"] == tiny_base.num_params(), run.extra
    assert [p["step"] for p in run.curve] == [0, 1, 2, 3], run.curve


def test_results_summarise_tabulate_and_survive_json(runner, tmp_path):
    """mean +- sd per (task, method); a markdown row per task; save then load gives equal runs."""
    res = run_methods([full_method(lr=1e-3), lora_method(2, lr=1e-2)], ["rotate"], [0, 1, 2], runner=runner)
    accs = [r.accuracy for r in res.select("rotate", "lora r=2")]
    s = res.summary("rotate", "lora r=2")
    assert s.n == 3 and np.isclose(s.mean, np.mean(accs)) and np.isclose(s.sd, np.std(accs, ddof=1))
    table = res.table()
    assert table.splitlines()[0] == "| task | full | lora r=2 |" and "| rotate |" in table, table
    back = Results.load(res.save(tmp_path / "r.json"))
    assert [vars(r) for r in back.runs] == [vars(r) for r in res.runs]
    assert back.summary("rotate", "full", "loss") == res.summary("rotate", "full", "loss")
    assert len((res + back).runs) == len(res.runs), "adding the same runs twice keeps each once"


def test_error_bar_plots_are_written(runner, tmp_path):
    """plot_bars and plot_lines save PNG files."""
    res = run_methods([full_method(lr=1e-3)], ["rotate"], [0, 1], runner=runner)
    assert plot_bars(res, tmp_path / "bars.png").exists()
    assert plot_lines([1, 2], {"full": [res.summary("rotate", "full")] * 2}, tmp_path / "lines.png",
                      xlabel="x", ylabel="y").exists()


# --------------------------------------------------------------------------- per-method training changes and measures
def test_a_methods_train_changes_reach_the_training_loop(runner, monkeypatch):
    """LoRA+ is LoRA with train=(("loraplus_lr_ratio", 16.0),): the loop gets the ratio; plain LoRA gets none."""
    seen = {}
    real_train = runner_mod.train

    def spy(model, train_data, test_data, cfg, **kw):
        seen[kw.get("desc")] = cfg.loraplus_lr_ratio
        return real_train(model, train_data, test_data, cfg, **kw)

    monkeypatch.setattr(runner_mod, "train", spy)
    plus = dataclasses.replace(lora_method(2, lr=1e-3, name="lora+"), train=(("loraplus_lr_ratio", 16.0),))
    run_methods([lora_method(2, lr=1e-3), plus], ["rotate"], [0], runner=runner)
    assert seen == {"lora r=2": None, "lora+": 16.0}, seen
    assert plus.key() != lora_method(2, lr=1e-3).key(), "a TrainConfig change must be part of the recipe"
    assert "train" not in lora_method(2, lr=1e-3).to_dict(), "methods without changes keep their old record"
    with pytest.raises(ValueError, match="valid fields"):
        dataclasses.replace(plus, train=(("lora_ratio", 2.0),)).train_config(runner_mod.TrainConfig())


def test_the_qlora_preparer_trains_lora_on_a_4bit_copy_of_the_base(runner):
    """kind "qlora": LoRA whose frozen block linears are stored in 4 bits; the runner's base stays float32."""
    train, _ = runner.data("rotate", 0)
    model = prepare_model(runner.base, train, Method("qlora", "qlora", 1e-3, LoraConfig(r=2)), 0)
    wq = "blocks.0.attn.wq.weight"
    assert model.model.weight_parts.get(wq) and wq not in model.model.params, sorted(model.model.weight_parts)[:3]
    assert not runner.base.weight_parts and runner.base.params[wq].dtype == np.float32, "the base was quantized"
    assert {n for n in model.trainable if ".lora_" not in n} == set(), sorted(model.trainable)[:5]


def test_a_method_measure_runs_after_that_methods_runs_only(runner, monkeypatch):
    """Method.measures names registered fn(model, test_data); other methods' runs do not take it."""
    monkeypatch.setattr(runner_mod, "MEASURES", dict(runner_mod.MEASURES))
    register_measure("n_test")(lambda model, test_data: len(test_data))
    measured = dataclasses.replace(full_method(lr=1e-3, name="measured"), measures=("n_test",))
    res = run_methods([full_method(lr=1e-3), measured], ["rotate"], [0], runner=runner)
    assert res.select("rotate", "measured")[0].extra == {"n_test": BUDGET.n_test}, res.select("rotate", "measured")
    assert res.select("rotate", "full")[0].extra == {}, "a method measure must not run for other methods"
    with pytest.raises(ValueError, match="no measure registered"):
        runner.run(dataclasses.replace(measured, measures=("drift",)), "rotate", 0)


def test_a_saved_comparison_is_remembered_by_recipe_not_by_name(tiny_base, tmp_path):
    """Runs saved under "lora r=2" serve a method of the same recipe named "lora" without training;
    another recipe trains, and a saved budget other than the runner's is refused."""
    first = Runner(tiny_base, BUDGET, log=None)
    saved = Results.load(run_methods([lora_method(2, lr=1e-2)], ["rotate"], [0, 1], runner=first).save(tmp_path / "s.json"))
    second = Runner(tiny_base, BUDGET, log=None)
    assert second.remember(saved) == 2, "both saved runs should be taken"
    res = run_methods([lora_method(2, lr=1e-2, name="lora"), lora_method(2, lr=2e-2, name="faster")], ["rotate"],
                      [0, 1], runner=second)
    assert [r.accuracy for r in res.select("rotate", "lora")] == [r.accuracy for r in saved.runs]
    assert len(second.runs) == 4 and res.select("rotate", "lora")[0].method == "lora", len(second.runs)
    with pytest.raises(ValueError, match="another budget"):
        Runner(tiny_base, Budget(steps=4), log=None).remember(saved)
