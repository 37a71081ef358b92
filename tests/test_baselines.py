"""Specification of minilora.experiments.baselines and baselines_report: the paper's baselines as methods of
the shared runner, their measures, and the comparison's record.

The runs use the sweep specs' random tiny GPT (tests/helpers.py) and a few steps: they test the plumbing
(preparers, counts, measures, the record and its reading), not what the methods learn.
"""
import numpy as np
import pytest

from minilora.adapters.bitfit import BitFitModel
from minilora.adapters.bottleneck import AdapterModel
from minilora.adapters.prefix import PrefixModel
from minilora.data.tasks import default_tokenizer
from minilora.experiments import baselines
from minilora.experiments.baselines_report import (FAMILIES, BaselinesConfig, family_method, figure2_series,
                                                   load_record, run_baselines, table_markdown, versus_lora)
from minilora.experiments.results import Results, RunResult
from minilora.experiments.runner import Budget, Runner, prepare_model

BUDGET = Budget(steps=3, batch_size=8, warmup_steps=1, n_train=32, n_test=16)


@pytest.fixture
def runner(tiny_base):
    return Runner(tiny_base, BUDGET, measures=baselines.MEASURES, log=None)


@pytest.mark.parametrize("family,host", [("BitFit", BitFitModel), ("PreEmbed", PrefixModel), ("PreLayer", PrefixModel),
                                         ("AdapterH", AdapterModel), ("LoRA+PE", PrefixModel), ("LoRA+PL", PrefixModel)])
def test_every_family_prepares_its_adapter_with_a_trained_head_on_classification(family, host, runner):
    """The preparer wraps a copy of the base in the family's host; a classification task trains its new head."""
    method = family_method(family, 1e-3, BaselinesConfig())
    train, _ = runner.data("ordered", 0)
    model = prepare_model(runner.base, train, method, seed=0)
    assert isinstance(model, host), f"{family}: expected a {host.__name__}, got {type(model).__name__}"
    assert {"head.weight.default", "head.bias.default"} <= model.trainable, sorted(model.trainable)[:5]
    assert "head.weight" not in runner.base.params, "the base must never change"


def test_prefix_methods_put_the_infix_before_the_prompts_last_token():
    """The method's config carries the ids of '=' and '?' (the tokens that end minilora's prompts)."""
    cfg = family_method("PreLayer", 1e-3, BaselinesConfig()).config
    assert default_tokenizer().decode(list(cfg.infix_before)) == "=?", cfg.infix_before


def test_measures_count_optimizer_bytes_and_special_positions(runner):
    """AdamW keeps two float32 moments per trainable parameter; PreEmbed (1, 1) adds 2 positions, BitFit none."""
    for family, positions in (("PreEmbed", 2), ("BitFit", 0)):
        r = runner.run(family_method(family, 1e-3, BaselinesConfig(prefix=(1, 1))), "double", 0)
        assert r.extra["optimizer_bytes"] == 2 * 4 * r.trainable, (family, r.extra, r.trainable)
        assert r.extra["extra_positions"] == positions, (family, r.extra)
        assert r.extra["inference_ratio"] > 0, r.extra


def test_full_finetuning_has_the_base_architecture_so_its_inference_ratio_is_one(runner):
    """A plain GPT is the base's architecture exactly: ratio 1 by construction, not by a noisy timing."""
    from minilora.experiments.runner import full_method
    assert runner.run(full_method(lr=1e-3), "double", 0).extra["inference_ratio"] == 1.0


def test_unknown_family_is_refused_naming_the_known_ones():
    """A typo in a family name lists the families."""
    with pytest.raises(ValueError, match="PreEmbed"):
        family_method("Prefix", 1e-3, BaselinesConfig())


@pytest.mark.slow
def test_the_comparison_writes_a_record_its_readers_understand(tiny_base, tmp_path):
    """run_baselines writes baselines.json, report.md and both plots; the table and Figure 2 read the record:
    every method's trainable count is the same on every seed, and Figure 2's sizes grow."""
    cfg = BaselinesConfig.quick()
    run_baselines(tmp_path, cfg, runner=Runner(tiny_base, cfg.budget(), measures=baselines.MEASURES, log=None),
                  log=lambda *a, **k: None)
    for name in ("baselines.json", "report.md", "table.png", "figure2.png"):
        assert (tmp_path / name).is_file(), f"{name} was not written"
    results, record = load_record(tmp_path / "baselines.json")
    assert set(record["lrs"]) == set(FAMILIES) and len(record["table_methods"]) == 2 + len(FAMILIES)
    for t in cfg.tasks:
        for m in record["table_methods"]:
            counts = {r.trainable for r in results.select(t, m)}
            assert len(counts) == 1 and len(results.select(t, m)) == len(cfg.seeds), (t, m, counts)
    for fam, points in figure2_series(results, record).items():
        sizes = [n for n, _ in points]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), (fam, sizes)
    assert "| BitFit |" in table_markdown(results, record)
    assert np.isfinite([r.accuracy for r in results.runs]).all()


def _runs(task, method, accuracies):
    return [RunResult(task=task, method=method, seed=s, accuracy=a, loss=0.0, trainable=1, ms_per_step=1.0,
                      seconds=1.0, steps=1, n_train=1) for s, a in enumerate(accuracies)]


@pytest.mark.parametrize("lora_acc, other_acc, expected", [
    ((0.90, 0.92, 0.91), (0.0, 0.0, 0.01), "held"),            # a method stuck at chance is measured failing
    ((0.90, 0.92, 0.91), (0.90, 0.91, 0.92), "within noise"),
    ((0.40, 0.50, 0.45), (0.99, 0.99, 0.99), "did not hold"),
    ((0.0, 0.01, 0.0), (0.0, 0.0, 0.0), "not judged"),          # LoRA itself did not learn: no verdict
])
def test_the_table_judges_every_method_against_lora_only_where_lora_learned(lora_acc, other_acc, expected):
    """The verdict column uses the findings' rule: LoRA beats X held / did not hold / within noise, and
    'not judged' when LoRA stayed at chance (exact match on a generation task: chance is 0)."""
    results = Results(runs=_runs("rotate", "lora r=8", lora_acc) + _runs("rotate", "X", other_acc))
    got = versus_lora(results, "rotate", "X", "lora r=8")
    assert got.startswith(expected), f"expected a verdict starting {expected!r}, got {got!r}"
