"""The ``minilora`` subcommands that lead out to the ecosystem and back (``minilora.cli`` registers them).

    minilora generate --task shift --prompt hello        text from a model (KV cache, sampling)
    minilora export DIR --format hf-gpt2 [--adapter AD]   a folder GPT2LMHeadModel (and PEFT) load
    minilora import-hf HF_DIR --out DIR                   a Hugging Face GPT-2 as a minilora checkpoint
    minilora finetune --hf HF_DIR --text FILE             LoRA on a real GPT-2, in NumPy (see cli._finetune)

Every command takes its model from ``--base`` (a minilora checkpoint folder: the shipped base by
default, a merged model, or an import-hf folder) or ``--hf`` (a Hugging Face GPT-2 folder), and an
optional ``--adapter`` (a folder minilora or PEFT saved; PEFT's on GPT2LMHeadModel's fused c_attn too).
"""
from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
LONG_OUTPUT = 64                      # new tokens from which generate shows a progress bar


# --------------------------------------------------------------------------- shared: model, tokenizer, adapter
def add_model_arguments(p, *, adapter: bool = True):
    where = p.add_mutually_exclusive_group()
    where.add_argument("--base", default=None, help="minilora model folder (default: the shipped base; also a "
                                                    "merged model or an import-hf folder)")
    where.add_argument("--hf", default=None, help="a local Hugging Face GPT-2 folder (config.json, "
                                                  "model.safetensors, tokenizer files)")
    if adapter:
        p.add_argument("--adapter", default=None, help="adapter folder (minilora's or PEFT's) to apply")


def load_model_and_tokenizer(base=None, hf=None):
    """(frozen GPT, tokenizer) from --base or --hf; the tokenizer is the folder's BPE or minilora's characters."""
    from minilora.experiments.hf_finetune import load_hf
    from minilora.experiments.pretrain import load_base
    from minilora.interop.tokenizer import has_tokenizer

    if hf is not None or (base is not None and has_tokenizer(base)):
        try:
            model, tok = load_hf(hf or base)
        except ImportError as e:                     # the optional tokenizers library: say how to install it
            raise RuntimeError(str(e)) from None
        if tok is None:
            raise FileNotFoundError(f"{hf} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
                                    f"copy the model's tokenizer there")
        return model, tok
    return load_base(base)


def with_adapter(model, adapter):
    """``model`` with the adapter in folder ``adapter`` active (a LoraModel), or ``model`` itself when None."""
    if adapter is None:
        return model
    from minilora.adapters.files import head_classes
    from minilora.adapters.lora_model import LoraModel
    from minilora.interop import fused_qkv

    if fused_qkv.is_hf_gpt2_adapter(adapter):                  # PEFT on GPT2LMHeadModel's Conv1D layers
        lm = LoraModel(model)
        fused_qkv.load_hf_gpt2_adapter(lm, adapter)
        return lm
    n_classes = head_classes(adapter)
    if n_classes is not None and "head.weight" not in model.params:
        model.add_classification_head(n_classes)                # its trained copy comes from the file
    lm = LoraModel(model)
    lm.load_adapter(adapter)
    return lm


# --------------------------------------------------------------------------- generate
def add_generate(sub):
    p = sub.add_parser("generate", help="generate text from a model (optionally with an adapter)")
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the text to continue; with --task, the task's input word")
    p.add_argument("--task", default=None, help="a shipped generation task (shift, rotate, copy, ...): the prompt "
                                                "becomes its 'tag:word=', decoding is greedy and stops at '.'")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: to the end of the context for "
                                                                    "a task, 100 for text")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0 for a task, 0.8 for text)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default 40 for "
                                                           "text; none for a task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute every position each step (slower, same tokens)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=generate_command)


def generate_command(args):
    from minilora.data.tasks import get_task
    from minilora.nn.generate import generate

    model, tok = load_model_and_tokenizer(args.base, args.hf)
    model = with_adapter(model, args.adapter)
    block = model.config.block_size
    prompt, stop, temperature, top_k = args.prompt, None, args.temperature, args.top_k
    if args.task is not None:
        task = get_task(args.task)
        if task.kind != "generation":
            raise ValueError(f"{task.name} is a classification task: it answers with a class, not text; "
                             f"use `minilora finetune --task {task.name}` to measure it")
        prompt, stop = task.prompt(args.prompt), tok.encode(".")[0]
        temperature = 0.0 if temperature is None else temperature
    else:
        temperature, top_k = (0.8 if temperature is None else temperature), (40 if top_k is None else top_k)
    ids = tok.encode(prompt)
    n = args.max_new_tokens if args.max_new_tokens is not None else max(block - len(ids), 1) if args.task else 100
    out = generate(model, ids, n, temperature=temperature, top_k=min(top_k, model.config.vocab_size) if top_k else None,
                   seed=args.seed, use_cache=not args.no_cache, stop_id=stop,
                   progress=not args.quiet and n >= LONG_OUTPUT)
    print(prompt + tok.decode(out[len(ids):]))


# --------------------------------------------------------------------------- export / import
def add_export(sub):
    p = sub.add_parser("export", help="write a model (and adapter) in another library's format")
    p.add_argument("out", help="folder to write")
    p.add_argument("--format", required=True, choices=["hf-gpt2"],
                   help="hf-gpt2: config.json + model.safetensors for transformers.GPT2LMHeadModel")
    add_model_arguments(p)
    p.add_argument("--merge", action="store_true", help="merge the adapter into the weights (one plain model) "
                                                        "instead of writing it to OUT/adapter for PEFT")
    p.add_argument("--eos-id", type=int, default=None, help="bos/eos token id for config.json (default: GPT-2's "
                                                            "50256 for its vocabulary, none otherwise)")
    p.set_defaults(func=export_command)


def export_command(args):
    from minilora import io
    from minilora.interop import fused_qkv, hf_gpt2

    if args.merge and args.adapter is None:
        raise ValueError("--merge needs an --adapter to merge")
    with_peft = args.adapter is not None and not args.merge
    tokenizer = tokenizer_files(args.hf or args.base)
    names = hf_gpt2.FILES + tuple(f.name for f in tokenizer) + (("adapter",) if with_peft else ())
    io.check_save_target(args.out, names)                   # before any work: a save replaces the folder
    model, _ = load_model_and_tokenizer(args.base, args.hf)
    adapted = with_adapter(model, args.adapter)
    plain = adapted.merge_and_unload() if args.merge else model     # unmerged: the base's own params stay W0
    out = Path(args.out)
    with io.atomic_folder(out, names) as tmp:               # model, tokenizer and adapter: one save
        hf_gpt2.write_hf_gpt2_files(plain.config, {k: plain.params[k] for k in plain.own_param_names()}, tmp,
                                    eos_token_id=args.eos_id)
        for f in tokenizer:
            shutil.copyfile(f, tmp / f.name)
        if with_peft:
            (tmp / "adapter").mkdir()
            fused_qkv.write_lora_model_adapter_files(adapted, tmp / "adapter")
    print(f"wrote {out} for transformers.GPT2LMHeadModel.from_pretrained"
          + (" with its tokenizer" if tokenizer else ""))
    if with_peft:
        print(f"and {out / 'adapter'} for peft.PeftModel.from_pretrained(model, '{out / 'adapter'}')")


def tokenizer_files(source) -> list[Path]:
    """The Hugging Face tokenizer files in folder ``source`` (none for None), to travel with its weights."""
    return [Path(source) / f for f in TOKENIZER_FILES if source and (Path(source) / f).is_file()]


def add_import_hf(sub):
    p = sub.add_parser("import-hf", help="a Hugging Face GPT-2 folder -> a minilora model folder")
    p.add_argument("hf", help="local folder with config.json and model.safetensors (and tokenizer files)")
    p.add_argument("--out", required=True, help="folder for minilora's model.safetensors + config.json")
    p.set_defaults(func=import_hf_command)


def import_hf_command(args):
    from minilora import io
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    from minilora.nn import checkpoint
    from minilora.nn.model import GPT

    tokenizer = tokenizer_files(args.hf)
    names = checkpoint.FILES + tuple(f.name for f in tokenizer)
    io.check_save_target(args.out, names)
    config, params = read_hf_gpt2(args.hf)
    with io.atomic_folder(args.out, names) as tmp:          # the model and its tokenizer: one save
        checkpoint.write_model(GPT(config, params), tmp, extra={"imported_from": str(args.hf)})
        for f in tokenizer:
            shutil.copyfile(f, tmp / f.name)
    print(f"imported {args.hf} ({config.n_layer} layers, C = {config.n_embd}, V = {config.vocab_size}) to {args.out}"
          + ("" if tokenizer else "; no tokenizer files were found, so generate needs --hf with them"))


# --------------------------------------------------------------------------- finetune --hf
def finetune_hf_command(args):
    """``minilora finetune --hf DIR --text FILE``: LoRA on the GPT-2 in DIR; saves and exports the adapter."""
    import dataclasses

    from minilora import io
    from minilora.adapters import files
    from minilora.experiments.hf_finetune import default_hf_lora_config, default_hf_train_config, finetune_hf
    from minilora.interop import fused_qkv
    from minilora.nn.generate import generate

    if args.text is None:
        raise ValueError("--hf fine-tunes on a text file: give --text FILE")
    unused = [f"--{k.replace('_', '-')}" for k in ("save_every", "checkpoint_dir", "resume") if getattr(args, k, None)]
    unused += [f"--method {args.method}"] if args.method != "lora" else []
    if unused:
        raise ValueError(f"--hf trains LoRA without checkpoints, so {unused} would be ignored; leave it out")
    for target in (args.out, args.export_peft):
        if target:
            io.check_save_target(target, files.FILES)      # before training, not after it
    given = {"r": args.r, "lora_alpha": args.alpha, "seed": args.seed,
             "target_modules": tuple(args.targets.split(",")) if args.targets is not None else None}
    lora = dataclasses.replace(default_hf_lora_config(), **{k: v for k, v in given.items() if v is not None})
    given = {"steps": args.steps, "lr": args.lr, "seed": args.seed, "batch_size": args.batch_size}
    tc = dataclasses.replace(default_hf_train_config(), **{k: v for k, v in given.items() if v is not None})
    run = finetune_hf(args.hf, args.text, lora_config=lora, train_config=tc, block_size=args.block_size)
    print(f"LoRA on {args.hf}: validation loss {run.val_loss_before:.4f} -> {run.val_loss:.4f}, "
          f"{run.history.trainable_params:,} trainable params, {run.history.ms_per_step:.0f} ms/step")
    if args.sample:
        ids = run.tokenizer.encode(args.sample)
        out = generate(run.model, ids, 40, temperature=0.8, top_k=40, seed=args.seed)
        print(args.sample + run.tokenizer.decode(out[len(ids):]))
    if args.out:
        run.model.save_adapter(args.out)
        print(f"saved the adapter (PEFT's format, minilora's module names) to {args.out}")
    if args.export_peft:
        fused_qkv.write_lora_model_adapter(run.model, args.export_peft)
        print(f"exported it for PEFT on GPT2LMHeadModel to {args.export_peft}")
