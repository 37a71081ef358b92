"""Generation speed: minilora with and without its KV cache, and transformers' generate on the same model.

    python benchmarks/bench_generate.py                     # lengths 32 128 512, 3 rounds, with transformers
    python benchmarks/bench_generate.py --lengths 64 256 --rounds 5
    python benchmarks/bench_generate.py --no-torch          # minilora only

One model, random weights (speed does not depend on them): V = 1024, C = 256, L = 6, NH = 8,
block_size 1024, float32, batch 1, a 16-token prompt, greedy decoding of exactly N new tokens.
minilora runs ``minilora.nn.generate.generate`` with the fast kernels (as training does); the
same weights are written with ``minilora.interop.hf_gpt2.write_hf_gpt2`` and loaded by
``transformers.GPT2LMHeadModel`` (eager attention), whose ``generate`` runs with ``use_cache`` True
and False. Both run on ``--threads`` threads (default 1: decoding one sequence is a chain of
matrix-vector products too small to share, and on a busy 2-core machine a second BLAS or OpenMP
thread only waits for the other; NumPy's BLAS is limited with threadpoolctl, PyTorch with
``torch.set_num_threads``).

Every round times each variant once (order rotated per round, ``bench_latency.interleaved_times``),
all in this one process, so a slow spell of a shared machine falls on all of them; per length the
table gives the median tokens/s and, per round, minilora's time over transformers' (``x hf``).
Both libraries' greedy tokens are compared too (``same``). Results: benchmarks/results/generate.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import common  # noqa: E402
from bench_latency import interleaved_times  # noqa: E402
from minilora.fast import memory, use_kernels  # noqa: E402
from minilora.interop.hf_gpt2 import write_hf_gpt2  # noqa: E402
from minilora.nn.generate import generate  # noqa: E402
from minilora.nn.model import GPT, GPTConfig  # noqa: E402

CONFIG = GPTConfig(vocab_size=1024, block_size=1024, n_layer=6, n_head=8, n_embd=256)
PROMPT = 16


def minilora_variants(model, prompt, n) -> dict:
    return {"minilora cache": lambda: generate(model, prompt, n, temperature=0),
            "minilora no cache": lambda: generate(model, prompt, n, temperature=0, use_cache=False)}


def hf_variants(folder, prompt, n, threads) -> tuple[dict, object]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.from_numpy(prompt[None])

    def run(use_cache):
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                               attention_mask=torch.ones_like(ids), pad_token_id=0)[0].numpy()

    return {"transformers cache": lambda: run(True), "transformers no cache": lambda: run(False)}, run


def measure(lengths, rounds, with_torch, threads, seed=0) -> list[dict]:
    memory.keep_freed_memory()
    model = GPT(CONFIG, seed=seed)
    model.freeze()
    prompt = np.random.default_rng(seed).integers(0, CONFIG.vocab_size, PROMPT)
    rows = []
    with tempfile.TemporaryDirectory() as folder, use_kernels(model):
        write_hf_gpt2(CONFIG, model.params, folder)
        for n in lengths:
            fns = minilora_variants(model, prompt, n)
            same = None
            if with_torch:
                more, run = hf_variants(folder, prompt, n, threads)
                fns.update(more)
                same = bool(np.array_equal(run(True), generate(model, prompt, n, temperature=0)))
            print(f"N = {n}: {len(fns)} variants x {rounds} rounds", flush=True)
            times = interleaved_times(fns, repeats=rounds, warmup=1)
            for name, t in times.items():
                row = {"new_tokens": n, "impl": name, "median_s": float(np.median(t)), "times_s": t,
                       "tokens_per_s": n / float(np.median(t)), "same_tokens_as_transformers": same}
                ref = times.get(name.replace("minilora", "transformers"))
                if name.startswith("minilora") and ref:
                    row["x_hf"] = float(np.median(np.asarray(t) / np.asarray(ref)))   # < 1: minilora faster
                rows.append(row)
            base = {r["impl"]: r for r in rows if r["new_tokens"] == n}
            speedup = base["minilora no cache"]["median_s"] / base["minilora cache"]["median_s"]
            rows[-len(fns)]["cache_speedup"] = speedup
    return rows


COLUMNS = [("new_tokens", "N", "d"), ("impl", "implementation", "s"), ("median_s", "s", ".3f"),
           ("tokens_per_s", "tokens/s", ",.1f"), ("x_hf", "time / transformers'", ".2f"),
           ("cache_speedup", "cache speed-up", ".1f"), ("same_tokens_as_transformers", "same", "")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / PyTorch threads of both libraries")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    if max(args.lengths) + PROMPT > CONFIG.block_size:
        ap.error(f"lengths must stay within block_size - prompt = {CONFIG.block_size - PROMPT}")
    with_torch = not args.no_torch and importlib.util.find_spec("transformers") is not None
    load_before = os.getloadavg()
    with threadpool_limits(args.threads):
        rows = measure(args.lengths, args.rounds, with_torch, args.threads)
    env = {**common.environment(), "load_average_before": load_before}
    print()
    print(common.format_table(rows, COLUMNS))
    print(f"model: {CONFIG}, float32, batch 1, prompt {PROMPT} tokens, greedy, {args.threads} thread(s); "
          f"median of {args.rounds} interleaved rounds; 'time / transformers'' is the median over rounds of the "
          f"per-round ratio")
    common.print_conditions(env, load_before)
    common.save_json(args.out / "generate.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                  "model": vars(CONFIG), "environment": env, "results": rows})
    print(f"saved {args.out / 'generate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
