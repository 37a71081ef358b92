"""LoRA vs QLoRA vs full fine-tuning on the downstream tasks, over seeds: accuracy, base bytes, step time.

    python benchmarks/compare_qlora.py                                  # shift and rotate, seeds 0 1 2
    python benchmarks/compare_qlora.py --methods qdora --append         # add methods (or seeds) to the saved rows

Writes benchmarks/results/qlora_compare.json (rows, summary, settings), which notebook 08 reads.
Each run is ``minilora.experiments.finetune``'s recipe (400 steps); about 2.5 minutes per run on 2
cores shared with other work. Step times are those of the training loop (worker threads, fast
kernels) on that shared machine: compare them within one file only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from minilora.experiments import qlora_compare  # noqa: E402

OUT = common.RESULTS_DIR / "qlora_compare.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["shift", "rotate"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(qlora_compare.METHODS))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: finetune's recipe)")
    ap.add_argument("--append", action="store_true", help="keep the saved rows of other (task, method, seed) runs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = qlora_compare.run_comparison(args.tasks, args.seeds, args.methods, steps=args.steps)
    settings = {"tasks": args.tasks, "seeds": args.seeds, "steps": args.steps or "finetune recipe",
                "environment": common.environment()}
    if args.append and args.out.exists():
        saved = qlora_compare.load(args.out)
        done = {(r["task"], r["method"], r["seed"]) for r in rows}
        rows = [r for r in saved["rows"] if (r["task"], r["method"], r["seed"]) not in done] + rows
        settings["seeds"] = sorted({r["seed"] for r in rows})
        settings["tasks"] = list(dict.fromkeys(r["task"] for r in rows))
    qlora_compare.save(args.out, rows, settings)
    for row in qlora_compare.summarize(rows):
        print(f"{row['task']:>8} {row['method']:>6}: {100 * row['mean']:.1f} +- {100 * row['sd']:.1f} % "
              f"({row['seeds']} seeds) {row.get('verdict', '')}")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
