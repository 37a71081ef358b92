"""The matrix measurements behind the paper's §7 findings, one value per seed (Hu et al. 2021, §7.2, §7.3).

Reads the trained models a findings ``Runner`` kept on the §7 task and returns plain numbers, per
seed, so that every finding is judged on its seed-to-seed spread (minilora.experiments.findings_report):

    phi11        Figure 3: phi(A_{r=8}, A_{r=64}, 1, 1) per adapted module: does the top direction of
                 the r = 8 adapter lie in the r = 64 adapter's? (random: 1 / d)
    shared_k     Figure 4: k phi(k, k) between the r = 64 adapters of two seeds, per module: how many
                 of their top-k directions they share (random: k^2 / d)
    amplification  Table 7: ||U^T W V||_F for dW, W and random directions, and ||dW|| / ||U^T W V||,
                 for Wq of the middle block, at a small r and at r = 64
    spectra      the 90% energy rank of the full fine-tuning update of every matrix

Shape letters: r rank, d = d_in input features, k the number of top directions compared.
"""
from __future__ import annotations

import itertools

import numpy as np

from minilora.experiments import analysis
from minilora.experiments.sweeps import compare_adapters
from minilora.nn.backend import to_numpy
from minilora.nn.model import BLOCK_LINEARS, SHORT_NAMES


def section7_small_r(cfg) -> int:
    """The small rank of Table 7's comparison: r = 4 as in the paper if the grid has it."""
    return 4 if 4 in cfg.ranks else min(cfg.ranks)


def _modules(base, targets=("wq", "wv")) -> list[str]:
    return [f"blocks.{i}.{SHORT_NAMES[t]}" for i in range(base.config.n_layer) for t in targets]


def subspace_numbers(models8: dict, models_large: dict, base, k: int = 8) -> dict:
    """phi11 per seed and module (r = 8 vs r_large, same seed); shared_k per pair of seeds and module."""
    modules = _modules(base)
    phi11 = {str(s): {mod: float(g[0, 0]) for mod, g in compare_adapters(models8[s], models_large[s], modules).items()}
             for s in models8}
    shared = {f"{a}-{b}": {mod: float(k * g[k - 1, k - 1])
                           for mod, g in compare_adapters(models_large[a], models_large[b], modules).items()}
              for a, b in itertools.combinations(sorted(models_large), 2)}
    d = int(base.params[modules[0] + ".weight"].shape[1])
    gen = np.random.default_rng(12345)
    rand = [analysis.subspace_similarity_grid(gen.standard_normal((8, d)), gen.standard_normal((8, d)))
            for _ in range(16)]
    return {"d_in": d, "k": k, "modules": modules, "phi11": phi11, "shared_k": shared,
            "baseline_phi11": 1.0 / d, "baseline_shared_k": k * k / d,
            "random_phi11": [float(g[0, 0]) for g in rand], "random_shared_k": [float(k * g[k - 1, k - 1]) for g in rand]}


def amplification_numbers(models_by_r: dict, full_models: dict, base) -> dict:
    """Table 7 for Wq of the middle block: {r: {seed: amplification dict}} for the LoRA update, and
    the full fine-tuning update projected on its own top-r directions under "full r"."""
    module = f"blocks.{base.config.n_layer // 2}.attn.wq"
    W = to_numpy(base.params[module + ".weight"]).astype(np.float64)
    out = {"module": module}
    for r, models in models_by_r.items():
        out[f"lora r={r}"] = {str(s): analysis.amplification(analysis.lora_delta(lm, module), W, r)
                              for s, lm in models.items()}
        out[f"full r={r}"] = {str(s): analysis.amplification(
            to_numpy(fm.params[module + ".weight"]).astype(np.float64) - W, W, r) for s, fm in full_models.items()}
    return out


def spectra_numbers(full_models: dict, base, fraction: float = 0.9) -> dict:
    """{seed: [{"module", "shape", "energy_rank", "effective_rank"}]} of dW = W_ft - W0, every linear layer."""
    out = {}
    for s, model in full_models.items():
        rows = []
        for i in range(base.config.n_layer):
            for kind in BLOCK_LINEARS:
                name = f"blocks.{i}.{kind}.weight"
                dW = to_numpy(model.params[name]).astype(np.float64) - to_numpy(base.params[name]).astype(np.float64)
                sv = analysis.spectrum(dW)
                rows.append({"module": name[:-7], "shape": list(dW.shape), "energy_rank": analysis.energy_rank(sv, fraction),
                             "effective_rank": analysis.effective_rank(sv)})
        out[str(s)] = rows
    gen = np.random.default_rng(0)
    shapes = sorted({tuple(r["shape"]) for rows in out.values() for r in rows})
    random_ranks = {f"{a}x{b}": analysis.energy_rank(analysis.spectrum(gen.standard_normal((a, b))), fraction)
                    for a, b in shapes}
    return {"fraction": fraction, "by_seed": out, "random_energy_rank": random_ranks}


def section7_measurements(runner, cfg, m: dict) -> dict:
    """Every §7 matrix measurement from the models the runner kept on ``cfg.section7_task``."""
    task, seeds, base = cfg.section7_task, cfg.seeds, runner.base
    get = lambda name: {s: runner.model(m[name], task, s) for s in seeds}
    small, large = section7_small_r(cfg), cfg.r_large
    full = get("full")
    models = {8: get("lora r=8"), large: get(f"lora r={large}"), small: get(f"lora r={small}")}
    return {"task": task, "r_small": small, "r_large": large,
            "subspace": subspace_numbers(models[8], models[large], base, k=min(8, large)),
            "amplification": amplification_numbers({small: models[small], large: models[large]}, full, base),
            "spectra": spectra_numbers(full, base)}
