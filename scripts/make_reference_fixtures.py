"""Build the small reference artefacts that minilora's interop tests read (tests/fixtures/).

Everything here is made by the reference libraries themselves (transformers saves the GPT-2 folder,
PEFT saves the adapter folders, PyTorch computes the expected outputs), so the tests in
tests/test_hf_gpt2.py and tests/test_peft_format.py check minilora against them, not against
itself. The libraries are never minilora dependencies; CI only reads the committed outputs.

To rerun (from the repository root; torch's CPU wheel is enough):

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers peft safetensors numpy
    .venv-ref/bin/python scripts/make_reference_fixtures.py

All seeds are fixed, and the script reruns itself with PYTHONHASHSEED=0 (PEFT stores target_modules as a
set, whose order follows string hashing), so a rerun with the same library versions writes the same bytes.

What it writes (about 600 KB in all):
  VERSIONS.json                  python, torch, transformers, peft, safetensors, numpy versions
  hf_gpt2_tiny/                  GPT2LMHeadModel.save_pretrained: config.json, generation_config.json,
                                 model.safetensors; plus expected.safetensors: tokens (B, T) int64 and
                                 logits (B, T, V) float32
  hf_gpt2_tiny_original/         the same weights in the original GPT-2 checkpoint layout (no
                                 ``transformer.`` prefix, ``h.{i}.attn.bias`` mask buffers and
                                 ``h.{i}.attn.masked_bias``), with the same config.json
  peft_adapters/<case>/          PeftModel.save_pretrained: adapter_config.json, adapter_model.safetensors
                                 (README.md dropped); plus expected.safetensors (tokens, logits, and
                                 ``last`` for the classification case) and resolved.json, the rank,
                                 alpha and scale PEFT chose for every adapted module
  hf_gpt2_bpe_tiny/              a tiny GPT2LMHeadModel with a byte-level BPE of 320 tokens trained by
                                 ``tokenizers`` on CORPUS: config.json, model.safetensors, tokenizer.json
                                 and tokenizer_config.json (GPT2TokenizerFast.save_pretrained), vocab.json
                                 and merges.txt (the original GPT-2 files' layout); expected.safetensors:
                                 ``text_ids`` (SAMPLE encoded by GPT2TokenizerFast), ``prompt`` and
                                 ``greedy`` (GPT2LMHeadModel.generate, do_sample=False, 24 new tokens)

The adapters of every case but ``hf_c_attn`` sit on a PyTorch GPT with minilora's module names
(benchmarks/torch_gpt.py) holding the tiny GPT-2's weights; ``hf_c_attn`` sits on the
GPT2LMHeadModel itself (fused c_attn, Conv1D, fan_in_fan_out=True). Every LoRA B, DoRA magnitude,
trained bias and saved module is set to random non-zero values before saving (B = 0 would make every
adapter equal the base model and hide a wrong translation). Expected outputs are computed in float64
from the float32 weights and stored rounded to float32.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_gpt  # noqa: E402  (minilora's module names in PyTorch)

OUT = ROOT / "tests" / "fixtures"
V, N_POS, C, L, NH = 64, 32, 32, 2, 2          # vocab, positions, channels, layers, heads
B, T = 2, 12                                   # the token batch every expected output uses


# --------------------------------------------------------------------------- the tiny GPT-2
def make_hf_model() -> transformers.GPT2LMHeadModel:
    """A random GPT2LMHeadModel whose biases and LayerNorm parameters are non-trivial too."""
    config = transformers.GPT2Config(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L, n_head=NH,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Zero biases and unit gains (GPT-2's init) would hide a bias split in the wrong order.
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tokens() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))


def logits64(model, *args) -> np.ndarray:
    """The model's output computed in float64 (on a copy), returned as float32."""
    twin = _copy(model).double()
    with torch.no_grad():
        out = twin(*args)
    out = out.logits if hasattr(out, "logits") else out
    return out.float().numpy()


def _copy(model):
    return copy.deepcopy(model)


def write_hf_gpt2(model) -> None:
    folder = OUT / "hf_gpt2_tiny"
    model.save_pretrained(folder)
    idx = tokens()
    save_file({"tokens": idx, "logits": torch.from_numpy(logits64(model, idx))}, folder / "expected.safetensors")
    # The original OpenAI checkpoint layout: no prefix, causal-mask buffers, the old masked_bias scalar.
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    for i in range(L):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(N_POS, N_POS)).view(1, 1, N_POS, N_POS)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    original = OUT / "hf_gpt2_tiny_original"
    original.mkdir(parents=True, exist_ok=True)
    save_file(state, original / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(folder / "config.json", original / "config.json")


# --------------------------------------------------------------------------- the mirror with minilora's names
def mirror_from_hf(hf_model, head_classes: int | None = None):
    """A TorchGPT (minilora's names) holding the HF model's weights, mapped here independently of minilora.

    Conv1D stores (in, out): transpose to (out, in); c_attn's columns are [q | k | v].
    """
    cfg = MirrorConfig()
    model = TorchGPT(cfg) if head_classes is None else TorchGPTClassifier(cfg, head_classes)
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    own = {"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"],
           "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}
    for i in range(L):
        h, p = f"h.{i}.", f"blocks.{i}."
        for a, b in (("ln_1", "ln1"), ("ln_2", "ln2")):
            own[p + b + ".weight"], own[p + b + ".bias"] = sd[h + a + ".weight"], sd[h + a + ".bias"]
        w, bias = sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]
        for j, m in enumerate(("wq", "wk", "wv")):
            own[p + f"attn.{m}.weight"] = w[:, j * C:(j + 1) * C].T
            own[p + f"attn.{m}.bias"] = bias[j * C:(j + 1) * C]
        for a, b in (("attn.c_proj", "attn.wo"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            own[p + b + ".weight"], own[p + b + ".bias"] = sd[h + a + ".weight"].T, sd[h + a + ".bias"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in own:
                param.copy_(own[name])
    return model.eval()


TorchGPT = torch_gpt.TorchGPT


@dataclass
class MirrorConfig:
    """The tiny GPT-2's shape in minilora's field names (a dataclass: PEFT reads model.config as one)."""
    vocab_size: int = V
    block_size: int = N_POS
    n_layer: int = L
    n_head: int = NH
    n_embd: int = C
    ln_eps: float = 1e-5


class TorchGPTClassifier(TorchGPT):
    """TorchGPT with minilora's classification head: logits (B, K) from the hidden state at ``last``."""

    def __init__(self, cfg, n_classes: int):
        super().__init__(cfg)
        self.head = torch.nn.Linear(cfg.n_embd, n_classes)

    def forward(self, idx, last):
        T_ = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:T_]
        for block in self.blocks:
            x = block(x)
        h = self.ln_f(x)                                                   # (B, T, C)
        return self.head(h[torch.arange(idx.shape[0]), last])              # (B, K)


# --------------------------------------------------------------------------- PEFT adapters
def randomize_trained(peft_model, seed: int) -> None:
    """Random non-zero values for every LoRA B, DoRA magnitude, trained bias and saved module copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.requires_grad and ".lora_A." not in name:             # biases, modules_to_save copies
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def resolved(peft_model) -> dict:
    """Module name -> {r, lora_alpha, scaling} as PEFT resolved them for the 'default' adapter."""
    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "r") and isinstance(getattr(module, "r"), dict) and "default" in module.r:
            out[name] = {"r": int(module.r["default"]), "lora_alpha": float(module.lora_alpha["default"]),
                         "scaling": float(module.scaling["default"])}
    return out


def save_case(name: str, peft_model, make_base, *inputs, extra: dict | None = None) -> None:
    """Save the adapter as PEFT does, with its expected outputs; check PEFT reloads it to the same."""
    folder = OUT / "peft_adapters" / name
    peft_model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    expected = {"tokens": inputs[0], "logits": torch.from_numpy(logits64(peft_model, *inputs))}
    expected.update(extra or {})
    save_file(expected, folder / "expected.safetensors")
    (folder / "resolved.json").write_text(json.dumps(resolved(peft_model), indent=2, sort_keys=True) + "\n")
    fresh = PeftModel.from_pretrained(make_base(), folder).eval()
    with torch.no_grad():
        a, b = fresh(*inputs), peft_model(*inputs)
    a, b = getattr(a, "logits", a), getattr(b, "logits", b)
    assert torch.allclose(a, b, atol=1e-6), f"{name}: PEFT's own reload differs by {(a - b).abs().max():.2e}"


def lora_case(name, hf_model, seed, *, head_classes=None, **lora_kwargs):
    """A PEFT LoRA adapter on the mirror (minilora's names), trained-looking values, saved by PEFT."""
    make_base = lambda: mirror_from_hf(hf_model, head_classes)          # noqa: E731
    model = get_peft_model(make_base(), LoraConfig(**lora_kwargs))
    randomize_trained(model, seed)
    model.eval()
    idx = tokens()
    if head_classes is None:
        save_case(name, model, make_base, idx)
    else:
        last = torch.tensor([T - 1, T - 4])
        save_case(name, model, make_base, idx, last, extra={"last": last})


def hf_c_attn_case(hf_model) -> None:
    """PEFT LoRA on GPT2LMHeadModel's fused c_attn and on c_fc (Conv1D layers: fan_in_fan_out=True)."""
    make_base = lambda: _copy(hf_model)                                 # noqa: E731
    model = get_peft_model(make_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                   fan_in_fan_out=True, task_type="CAUSAL_LM"))
    randomize_trained(model, seed=17)
    save_case("hf_c_attn", model.eval(), make_base, tokens())


# --------------------------------------------------------------------------- a tiny GPT-2 with its own BPE
CORPUS = ("Low-rank adaptation freezes the pretrained weights and trains two small matrices per layer. "
          "The update is the product of the two, scaled by alpha over the rank, and it starts at zero, "
          "so the adapted model begins exactly where the pretrained model stands. ") * 8
SAMPLE = "The adapted model begins where the pretrained one stands: low rank, small matrices.\n"


def write_bpe_gpt2() -> None:
    """A random GPT-2 of vocabulary 320 with the byte-level BPE that tokenizers trains on CORPUS."""
    from tokenizers import ByteLevelBPETokenizer

    folder = OUT / "hf_gpt2_bpe_tiny"
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([CORPUS], vocab_size=320, min_frequency=2, show_progress=False,
                            special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))                                       # vocab.json, merges.txt
    bpe.save(str(folder / "bpe.json"))
    tok = transformers.GPT2TokenizerFast(tokenizer_file=str(folder / "bpe.json"), eos_token="<|endoftext|>",
                                         bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    (folder / "bpe.json").unlink()
    tok.save_pretrained(folder)                                       # tokenizer.json, tokenizer_config.json
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=C, n_layer=L, n_head=NH,
                                     bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    prompt = torch.tensor([tok("The adapted model").input_ids])
    with torch.no_grad():
        greedy = model.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=eos,
                                attention_mask=torch.ones_like(prompt))
    save_file({"text_ids": torch.tensor(tok(SAMPLE).input_ids), "prompt": prompt[0], "greedy": greedy[0]},
              folder / "expected.safetensors")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    hf = make_hf_model()
    write_hf_gpt2(hf)
    mirror_logits = logits64(mirror_from_hf(hf), tokens())
    gap = float(np.abs(mirror_logits - logits64(hf, tokens())).max())
    assert gap < 1e-5, f"the torch mirror disagrees with GPT2LMHeadModel by {gap:.2e}: the name mapping is wrong"

    lora_case("lora_wq_wv", hf, 11, r=4, lora_alpha=8, target_modules=["wq", "wv"], lora_dropout=0.1,
              init_lora_weights="gaussian")
    # Overlapping keys, written in sorted order (PEFT's save sorts them): PEFT takes the first key that
    # matches, so 'attn.wq' beats 'blocks.0.attn.wq' and 'attn.wv' beats 'blocks.1.attn.wv'.
    lora_case("rank_alpha_patterns", hf, 12, r=2, lora_alpha=4, target_modules=["wq", "wv", "fc"],
              rank_pattern={"attn.wq": 3, "blocks.0.attn.wq": 5, r"blocks\.[1-9]\.attn\.wv": 4},
              alpha_pattern={"attn.wv": 6, "blocks.1.attn.wv": 16}, use_rslora=True)
    lora_case("bias_lora_only", hf, 13, r=4, lora_alpha=8, target_modules=["wq", "wv", "wo"], bias="lora_only")
    lora_case("layers_to_transform", hf, 14, r=2, lora_alpha=2, target_modules=["wq", "wv", "fc", "proj"],
              layers_to_transform=[1], layers_pattern="blocks")
    lora_case("modules_to_save_head", hf, 15, head_classes=3, r=4, lora_alpha=8, target_modules=["wq", "wv"],
              modules_to_save=["head", "ln_f"])
    lora_case("dora", hf, 16, r=4, lora_alpha=8, target_modules=["wq", "wv"], use_dora=True)
    hf_c_attn_case(hf)
    # PEFT's bias="all" trains every parameter named "bias", the LayerNorms' included.
    lora_case("bias_all", hf, 18, r=2, lora_alpha=4, target_modules=["wq", "fc"], bias="all")
    write_bpe_gpt2()

    import tokenizers

    versions = {"python": platform.python_version(), "torch": torch.__version__, "tokenizers": tokenizers.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__,
                "safetensors": safetensors.__version__, "numpy": np.__version__}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    print(json.dumps(versions), f"mirror vs GPT2LMHeadModel: {gap:.2e}")


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":                 # same set order, same files, on every rerun
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    main()
