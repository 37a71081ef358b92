"""LoRA vs QLoRA vs QDoRA (and DoRA, full fine-tuning) on the downstream tasks, over seeds, on the one runner.

    python benchmarks/compare_qlora.py                                   # double and ordered, seeds 0-4
    python benchmarks/compare_qlora.py --reuse reports/family/family.json  # take the family's runs of the same recipes
    python benchmarks/compare_qlora.py --methods qdora --append          # add methods (or seeds) to the saved results

Writes benchmarks/results/qlora_compare.json (a ``minilora.experiments.results.Results``), which
notebook 08 reads, and prints the table (``qlora_compare.table``, ``drift_table``). Each run is the
findings' budget (400 steps of 32); 10-20 s per run on 2 cores when no other job runs. Step
times are those of the training loop on that shared machine: compare them within one file only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from minilora.experiments import qlora_compare  # noqa: E402
from minilora.experiments.pretrain import load_base  # noqa: E402
from minilora.experiments.results import Results  # noqa: E402
from minilora.experiments.runner import Runner  # noqa: E402

OUT = common.RESULTS_DIR / "qlora_compare.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["double", "ordered"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=list(qlora_compare.METHODS))
    ap.add_argument("--reuse", type=Path, nargs="*", default=[],
                    help="saved Results (same budget) whose runs of the same recipe are not trained again")
    ap.add_argument("--append", action="store_true", help="keep the saved runs of other (task, method, seed)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    base = load_base()[0]
    runner = Runner(base, qlora_compare.BUDGET)
    for path in args.reuse:
        print(f"reusing {runner.remember(Results.load(path))} runs of {path}")
    results = qlora_compare.run_comparison(args.tasks, args.seeds, args.methods, runner=runner)
    if args.append and args.out.exists():                   # a run made now wins over the saved one
        saved, made = Results.load(args.out), {(r.task, r.method, r.seed) for r in results.runs}
        kept = [r for r in saved.runs if (r.task, r.method, r.seed) not in made]
        results = Results(kept + results.runs, {**saved.methods, **results.methods}, results.budget)
    results.save(args.out)
    nbytes = qlora_compare.storage(base, qlora_compare.qlora_methods(results.method_names))
    print(qlora_compare.table(results, nbytes) + "\n\n" + qlora_compare.drift_table(results))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
