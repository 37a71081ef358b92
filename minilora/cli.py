"""The ``minilora`` command (also ``python -m minilora``).

    minilora demo                      the end-to-end LoRA demo (the main job)
    minilora pretrain                  train the small base model from scratch and save it
    minilora finetune --task shift     LoRA (or --method full) on a shipped task or --text FILE
    minilora merge ADAPTER --out DIR   base + adapter -> one merged model checkpoint
    minilora findings                  the claims about LoRA and the paper's §7 findings, on seeds (report + JSON)
    minilora analyze                   the same report (the §7 analyses are part of it)
    minilora generate --prompt TEXT    text from a model, with an adapter or without (minilora.cli_interop)
    minilora export DIR --format hf-gpt2   the model (and adapter) for transformers / PEFT
    minilora import-hf HF_DIR --out DIR    a Hugging Face GPT-2 as a minilora model
    minilora finetune --hf HF_DIR --text FILE   LoRA on a real GPT-2 with its BPE tokenizer
    minilora family                    LoRA, DoRA, rsLoRA, LoRA+, PiSSA and full on one budget (table + plots)
    minilora baselines                 LoRA against BitFit, prefix tuning and adapters (table, Figure 2, JSON)
    minilora exercises make|grade      classroom exercises from the library's own code
"""
from __future__ import annotations

import argparse
import sys

from minilora import cli_interop


def _add_pretrain(sub):
    p = sub.add_parser("pretrain", help="train the base model from scratch and save it")
    p.add_argument("--out", default="runs/base", help="folder for model.safetensors + config.json")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--seed", type=int, default=0, help="weights, data and batch order")
    _add_checkpoint_options(p)
    p.set_defaults(func=_pretrain)


def _add_checkpoint_options(p):
    p.add_argument("--save-every", type=int, default=None,
                   help="save a resumable checkpoint every N steps (into --checkpoint-dir)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT-checkpoint)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the killed run whose checkpoint is DIR (its options come from DIR)")


def _checkpoints(args, out_files) -> dict:
    """Check --out before any work, and the checkpoint arguments of ``train`` for these options."""
    from minilora import io

    if args.out is not None:
        io.check_save_target(args.out, out_files)
    directory = args.resume or args.checkpoint_dir
    if directory is None and args.save_every is not None:
        if args.out is None:
            raise ValueError("--save-every needs a place for the checkpoints: give --checkpoint-dir (or --out)")
        directory = f"{str(args.out).rstrip('/')}-checkpoint"
    run = {k: v for k, v in vars(args).items() if k not in ("func", "resume")}
    return {"checkpoint_dir": directory, "resume_from": args.resume, "run_info": {"command": run}}


def _pretrain(args):
    import dataclasses

    from minilora.experiments.pretrain import PretrainConfig, pretrain
    from minilora.nn import checkpoint

    cfg = PretrainConfig(seed=args.seed)
    given = {"steps": args.steps, "save_every": args.save_every}
    train = dataclasses.replace(cfg.train, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    cfg = dataclasses.replace(cfg, train=train)
    model, history, accuracy = pretrain(cfg, out_dir=args.out, **_checkpoints(args, checkpoint.FILES))
    print(f"pretrained in {history.seconds:.0f} s ({history.ms_per_step:.1f} ms/step); saved to {args.out}")
    for task, acc in accuracy.items():
        print(f"  {task:<8} exact match {100 * acc:6.2f}%")


def _add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune the base on a task with LoRA or fully")
    p.add_argument("--task", default="shift", help="shift | rotate | palindrome (ignored with --text)")
    p.add_argument("--text", default=None, help="fine-tune on this plain-text file instead")
    p.add_argument("--method", default="lora", choices=["lora", "qlora", "dora", "qdora", "full"],
                   help="qlora: LoRA on the base stored in 4 bits (NF4, double quantization); qdora: DoRA on it")
    p.add_argument("--base", default=None, help="base model folder (default: the shipped base)")
    p.add_argument("--r", type=int, default=None, help="LoRA rank (default: the library's, see below)")
    p.add_argument("--alpha", type=float, default=None,
                   help="lora_alpha (default: the library's; kept fixed when only --r changes, as Hu et al. 2021 §4.1)")
    p.add_argument("--targets", default=None, help="comma-separated target modules: wq,wk,wv,wo,fc,proj")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the library's recipe)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the library's recipe)")
    p.add_argument("--n-train", type=int, default=4000, help="generated training examples")
    p.add_argument("--n-test", type=int, default=500, help="held-out examples for the accuracy")
    p.add_argument("--seed", type=int, default=0, help="data, new head, LoRA initialisation and batch order")
    p.add_argument("--out", default=None, help="save the adapter (LoRA) or model (full) here")
    _add_checkpoint_options(p)
    hf = p.add_argument_group("a Hugging Face GPT-2 (with --hf; LoRA on --text)")
    hf.add_argument("--hf", default=None, help="local Hugging Face GPT-2 folder with tokenizer files")
    hf.add_argument("--block-size", type=int, default=128, help="tokens per training window")
    hf.add_argument("--batch-size", type=int, default=None, help="windows per step (default 4)")
    hf.add_argument("--export-peft", default=None, help="also write the adapter for PEFT on GPT2LMHeadModel here")
    hf.add_argument("--sample", default=None, help="print a sample continuing this prompt after training")
    p.set_defaults(func=_finetune)


def _finetune(args):
    """Defaults come from minilora.experiments.finetune (default_lora_config, default_train_config)."""
    import dataclasses

    from minilora.adapters import files
    from minilora.data.tasks import get_task
    from minilora.experiments.finetune import default_lora_config, default_train_config, finetune
    from minilora.experiments.pretrain import load_base
    from minilora.nn import checkpoint

    if args.hf is not None:                       # LoRA on a Hugging Face GPT-2 (minilora.cli_interop)
        from minilora.cli_interop import finetune_hf_command
        return finetune_hf_command(args)
    kind = "generation" if args.text else get_task(args.task).kind
    checkpoints = _checkpoints(args, checkpoint.FILES if args.method == "full" else files.FILES)   # adapters
    base = load_base(args.base)[0]
    if args.text:
        _report_text(args.text, base.config.block_size)
    given = {"r": args.r, "lora_alpha": args.alpha, "seed": args.seed,
             "target_modules": tuple(args.targets.split(",")) if args.targets is not None else None}
    lora = dataclasses.replace(default_lora_config(kind), **{k: v for k, v in given.items() if v is not None},
                               use_dora=args.method in ("dora", "qdora"))
    given = {"steps": args.steps, "lr": args.lr, "seed": args.seed, "save_every": args.save_every}
    defaults = default_train_config(args.method, None if args.text else args.task)   # the swept rate of the task
    tc = dataclasses.replace(defaults, **{k: v for k, v in given.items() if v is not None})
    res = finetune(args.task, args.method, base=base, lora_config=lora, train_config=tc, seed=args.seed,
                   text_file=args.text, n_train=args.n_train, n_test=args.n_test, **checkpoints)
    print(f"{res.method} on {res.task}: accuracy {100 * res.accuracy:.2f}%, loss {res.loss:.4f}, "
          f"{res.trainable_params:,} trainable params, {res.ms_per_step:.1f} ms/step")
    if args.out:
        if args.method != "full":            # a QLoRA adapter loads onto quantize_base(the same base)
            res.model.save_adapter(args.out)
        else:
            checkpoint.save_model(res.model, args.out, extra={"task": res.task})
        print(f"saved to {args.out}")


def _report_text(path, block_size):
    """Say how much of a text file the tokenizer replaces (and refuse a file that is mostly unknown)."""
    from minilora.data.datasets import TextData

    data = TextData.from_file(path, block_size=block_size)
    if data.n_replaced:
        print(f"{path}: {data.n_replaced} of {len(data)} characters are outside the vocabulary and became "
              f"spaces: {''.join(data.replaced_chars[:20])!r}")


def _add_merge(sub):
    p = sub.add_parser("merge", help="merge an adapter into its base: W = W0 + (alpha/r) B A")
    p.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--base", default=None, help="base model folder (default: the shipped base)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.set_defaults(func=_merge)


def _merge(args):
    from minilora import io
    from minilora.adapters import files
    from minilora.adapters.adapted import AdaptedModel
    from minilora.experiments.pretrain import load_base
    from minilora.nn import checkpoint

    io.check_save_target(args.out, checkpoint.FILES)
    base, tok = load_base(args.base)
    _, config, tensors = files.read_adapter(args.adapter, verify=False)   # load_adapter checks it all below
    if "head" in config.modules_to_save:
        base.add_classification_head(tensors["head.bias"].shape[0])
    host = AdaptedModel(base)
    name = host.load_adapter(args.adapter)
    merged = host.merge_and_unload()        # refuses an adapter whose merged weights would hold NaN or inf
    checkpoint.save_model(merged, args.out, extra={"tokenizer": tok.to_dict(), "merged_adapter": name})
    print(f"merged adapter {name!r} into the base; saved to {args.out}")


def _add_demo(sub):
    p = sub.add_parser("demo", help="the end-to-end LoRA demo: tune, compare, merge, switch, report")
    p.add_argument("--out", default="reports/demo", help="report folder (markdown + PNG)")
    p.add_argument("--steps", type=int, default=None, help="steps per fine-tuning run (default: per task)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3; at least 2, for a spread)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args):
    from minilora.experiments.demo import run_demo

    if args.seeds < 2:
        raise ValueError(f"--seeds {args.seeds}: the demo's table shows a spread over seeds, so it needs at least 2")
    run_demo(args.out, steps=args.steps, progress=not args.quiet, seeds=tuple(range(args.seeds)))


def _add_findings(sub):
    for name, text in (("findings", "every claim about LoRA and the paper's §7 findings, measured on seeds"),
                       ("analyze", "the same report as `findings` (the §7 rank analyses are part of it)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", default="reports/findings", help="report folder (report.md, findings.json, PNGs)")
        p.add_argument("--quick", action="store_true", help="tiny settings to check the pipeline in about a minute; "
                       "the numbers mean nothing")
        p.add_argument("--seeds", type=int, default=None, help="seeds per comparison (default 3; at least 2)")
        p.add_argument("--lr-sweep", action="store_true", help="instead, run the learning-rate sweep behind the "
                       "report's two learning rates (lr_sweep.json and .md in --out)")
        p.set_defaults(func=_findings)


def _findings(args):
    from minilora.experiments.findings import FindingsConfig, run_findings

    cfg = FindingsConfig.quick() if args.quick else FindingsConfig()
    if args.seeds is not None:
        if args.seeds < 2:
            raise ValueError(f"--seeds {args.seeds}: a spread needs at least 2 seeds (the findings use 3)")
        cfg.seeds = tuple(range(args.seeds))
    if args.lr_sweep:
        from minilora.experiments.lr_sweep import run_lr_sweep

        run_lr_sweep(args.out, cfg)
    else:
        run_findings(args.out, cfg)


def _add_family(sub):
    p = sub.add_parser("family", help="LoRA, DoRA, rsLoRA, LoRA+, PiSSA and full fine-tuning on one budget")
    p.add_argument("--out", default="reports/family", help="folder for family.json/.md/.png (resumes its runs)")
    p.add_argument("--tasks", nargs="+", default=["double"], help="downstream tasks (rotate double ordered)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell (>= 3 for a spread)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: lora dora rslora loraplus pissa full; dora_exact adds DoRA without the §4.3 detach")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: 400)")
    p.add_argument("--decomposition", action="store_true",
                   help="also DoRA's magnitude/direction analysis (Liu et al. 2024, Fig. 2)")
    p.add_argument("--combination", action="store_true",
                   help="also add two task adapters (cat, linear, svd) and score what each task keeps")
    p.add_argument("--quick", action="store_true", help="a 4-step smoke run: checks the plumbing, numbers mean nothing")
    p.set_defaults(func=_family)


def _family(args):
    import dataclasses

    from minilora.experiments import family

    budget = family.quick_budget() if args.quick else (
        dataclasses.replace(family.BUDGET, steps=args.steps, warmup_steps=args.steps // 10) if args.steps else None)
    names = tuple(args.methods) if args.methods else family.DEFAULT
    family.run_family_report(args.out, tasks=args.tasks, seeds=range(args.seeds), ranks=args.ranks, names=names,
                             budget=budget, decomposition=args.decomposition, combination=args.combination)


def _add_baselines(sub):
    p = sub.add_parser("baselines", help="LoRA against BitFit, prefix tuning and adapters: table, Figure 2, JSON")
    p.add_argument("--out", default="reports/baselines", help="folder for baselines.json, report.md and the plots")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the pipeline; the numbers mean nothing")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: 200)")
    p.set_defaults(func=_baselines)


def _baselines(args):
    import dataclasses

    from minilora.experiments.baselines_report import BaselinesConfig, run_baselines

    cfg = BaselinesConfig.quick() if args.quick else BaselinesConfig()
    run_baselines(args.out, dataclasses.replace(cfg, steps=args.steps) if args.steps else cfg)


def _add_exercises(sub):
    p = sub.add_parser("exercises", help="make or grade classroom exercises (see docs/teachers.md)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_exercises)


def _exercises(args):
    from minilora.classroom.grading import exercises_main

    sys.exit(exercises_main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_pretrain, _add_finetune, _add_merge, _add_findings, _add_family, _add_baselines,
                _add_exercises):
        add(sub)
    for add in (cli_interop.add_generate, cli_interop.add_export, cli_interop.add_import_hf):
        add(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["exercises"]:              # its own parser, so `minilora exercises --help` works
        from minilora.classroom.grading import exercises_main

        return exercises_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        if getattr(args, "resume", None):
            args = _resumed(args, argv)
        args.func(args)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        # mistakes in what the user gave (values, files, folders) are reported in one line, with the
        # fix minilora's message names; anything else (TypeError, IndexError, ...) is a bug and keeps its traceback
        print(f"minilora {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    elif isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e)
    return " ".join(text.split())


def _resumed(args, argv):
    """The options of the run saved in --resume DIR; other options given too are an error (they would be ignored)."""
    import argparse as _argparse

    from minilora.experiments.resume import read_run_info

    others = sorted({a.split("=")[0] for a in argv[1:] if a.startswith("--")} - {"--resume"})
    if others:
        raise ValueError(f"with --resume the run's options come from its checkpoint; leave out {', '.join(others)}")
    stored = read_run_info(args.resume).get("command", {})
    if stored.get("command") != args.command:
        raise ValueError(f"{args.resume} is a checkpoint of `minilora {stored.get('command')}`, not of "
                         f"`minilora {args.command}`")
    return _argparse.Namespace(**{**stored, "resume": args.resume, "checkpoint_dir": args.resume,
                                  "func": args.func})


if __name__ == "__main__":
    sys.exit(main())
