"""Did a change make training slower? Time the training step of two commits in interleaved rounds.

    python benchmarks/bench_commits.py --before 49e3cec --after HEAD --rounds 4

Each commit's own ``benchmarks/bench_train.py`` times its own code (so the two sides need not share
an API): the commit is exported with ``git archive`` into a temporary folder and run with that folder
first on PYTHONPATH. The rounds alternate (before, after, after, before, ...), so a machine whose
speed drifts (other work, thermal limits) slows both sides alike, and the figure that counts is the
per-round ratio after / before of each row's median step time, reported as its median and quartiles
over rounds. PyTorch is not timed: its time does not depend on the commit, so "within 5% of
PyTorch's ratio" is the same statement as "after / before within 5%".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402


def export(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` (``git archive``) unpacked under ``into``; returns its folder."""
    folder = into / rev.replace("/", "_")
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                             check=True, capture_output=True).stdout
    tar_path = into / f"{folder.name}.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(folder, filter="data")
    return folder


def time_tree(tree: Path, args, out: Path) -> dict:
    """{(config, impl): ms per step} from one run of the tree's own bench_train.py."""
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_train.py"), "--no-torch", "--rounds", "1",
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--configs", *args.configs, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(cmd, check=True, env=env, cwd=tree, capture_output=True)
    saved = next(out.glob("train_numpy*.json"))
    rows = json.loads(saved.read_text())["results"]
    saved.unlink()
    return {(r["config"], r["impl"]): r["ms_per_step"] for r in rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the commit to compare against (any git revision)")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=4, help="rounds; each times both commits once")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["small", "large"], choices=["small", "large"])
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"before": export(args.before, tmp), "after": export(args.after, tmp)}
        times = {"before": [], "after": []}
        for k in range(args.rounds):
            order = ("before", "after") if k % 2 == 0 else ("after", "before")
            for side in order:
                times[side].append(time_tree(trees[side], args, tmp))
            print(f"round {k + 1}/{args.rounds} done", flush=True)
    rows = []
    for key in times["after"][0]:
        ratios = sorted(a[key] / b[key] for a, b in zip(times["after"], times["before"]))
        q25, q75 = (ratios[0], ratios[-1]) if len(ratios) < 4 else statistics.quantiles(ratios, n=4)[::2]
        rows.append({"config": key[0], "impl": key[1],
                     "before_ms": statistics.median(b[key] for b in times["before"]),
                     "after_ms": statistics.median(a[key] for a in times["after"]),
                     "after_over_before": statistics.median(ratios), "q25": q25, "q75": q75})
    columns = [("config", "config", ""), ("impl", "implementation", ""), ("before_ms", "before ms", ".1f"),
               ("after_ms", "after ms", ".1f"), ("after_over_before", "after / before", ".3f"),
               ("q25", "q25", ".3f"), ("q75", "q75", ".3f")]
    print(f"\n{args.after} against {args.before}: median step time of {args.steps} steps per run, "
          f"{args.rounds} interleaved rounds; ratio = median over rounds of after / before")
    print(common.format_table(rows, columns))
    env = {**common.environment(), "load_average_before": load_before}
    common.print_conditions(env, load_before)
    common.save_json(args.out / "commits.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                 "environment": env, "results": rows})
    print(f"saved {args.out / 'commits.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
