"""The ``minilora`` command (also ``python -m minilora``).

    minilora demo                      the end-to-end LoRA demo (the main job)
    minilora pretrain                  train the small base model from scratch and save it
    minilora finetune --task shift     LoRA (or --method full) on a shipped task or --text FILE
    minilora merge ADAPTER --out DIR   base + adapter -> one merged model checkpoint
    minilora analyze                   the rank analyses of Hu et al. 2021, §7 (report + plots)
    minilora exercises make|grade      classroom exercises from the library's own code
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_pretrain(sub):
    p = sub.add_parser("pretrain", help="train the base model from scratch and save it")
    p.add_argument("--out", default="runs/base", help="folder for model.safetensors + config.json")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_pretrain)


def _pretrain(args):
    from minilora.experiments.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(seed=args.seed)
    if args.steps:
        cfg.train.steps = args.steps
    model, history, accuracy = pretrain(cfg, out_dir=args.out)
    print(f"pretrained in {history.seconds:.0f} s ({history.ms_per_step:.1f} ms/step); saved to {args.out}")
    for task, acc in accuracy.items():
        print(f"  {task:<8} exact match {100 * acc:6.2f}%")


def _add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune the base on a task with LoRA or fully")
    p.add_argument("--task", default="shift", help="shift | rotate | palindrome (ignored with --text)")
    p.add_argument("--text", default=None, help="fine-tune on this plain-text file instead")
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--base", default=None, help="base model folder (default: the shipped base)")
    p.add_argument("--r", type=int, default=None, help="LoRA rank (default: the library's, see below)")
    p.add_argument("--alpha", type=float, default=None,
                   help="lora_alpha (default: the library's; kept fixed when only --r changes, as Hu et al. 2021 §4.1)")
    p.add_argument("--targets", default=None, help="comma-separated target modules: wq,wk,wv,wo,fc,proj")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the library's recipe)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the library's recipe)")
    p.add_argument("--n-train", type=int, default=4000, help="generated training examples")
    p.add_argument("--n-test", type=int, default=500, help="held-out examples for the accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save the adapter (LoRA) or model (full) here")
    p.set_defaults(func=_finetune)


def _finetune(args):
    """Defaults come from minilora.experiments.finetune (default_lora_config, default_train_config)."""
    import dataclasses

    from minilora.data.tasks import get_task
    from minilora.experiments.finetune import default_lora_config, default_train_config, finetune
    from minilora.experiments.pretrain import load_base
    from minilora.nn.checkpoint import save_model

    base = load_base(args.base)[0]
    kind = "generation" if args.text else get_task(args.task).kind
    given = {"r": args.r, "lora_alpha": args.alpha,
             "target_modules": tuple(args.targets.split(",")) if args.targets is not None else None}
    lora = dataclasses.replace(default_lora_config(kind), **{k: v for k, v in given.items() if v is not None})
    given = {"steps": args.steps, "lr": args.lr, "seed": args.seed}
    tc = dataclasses.replace(default_train_config(args.method), **{k: v for k, v in given.items() if v is not None})
    res = finetune(args.task, args.method, base=base, lora_config=lora, train_config=tc, seed=args.seed,
                   text_file=args.text, n_train=args.n_train, n_test=args.n_test)
    print(f"{res.method} on {res.task}: accuracy {100 * res.accuracy:.2f}%, loss {res.loss:.4f}, "
          f"{res.trainable_params:,} trainable params, {res.ms_per_step:.1f} ms/step")
    if args.out:
        if args.method == "lora":
            res.model.save_adapter(args.out)
        else:
            save_model(res.model, args.out, extra={"task": res.task})
        print(f"saved to {args.out}")


def _add_merge(sub):
    p = sub.add_parser("merge", help="merge an adapter into its base: W = W0 + (alpha/r) B A")
    p.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--base", default=None, help="base model folder (default: the shipped base)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.set_defaults(func=_merge)


def _merge(args):
    from minilora import io
    from minilora.adapters.lora_model import LoraModel
    from minilora.nn.checkpoint import save_model
    from minilora.experiments.pretrain import load_base

    base, tok = load_base(args.base)
    meta = io.read_json(Path(args.adapter) / "adapter_config.json")
    if "head" in meta.get("modules_to_save", []):
        n_classes = io.load_tensors(Path(args.adapter) / "adapter_model.safetensors")[0]["head.bias"].shape[0]
        base.add_classification_head(n_classes)
    lm = LoraModel(base)
    name = lm.load_adapter(args.adapter)
    merged = lm.merge_and_unload()
    save_model(merged, args.out, extra={"tokenizer": tok.to_dict(), "merged_adapter": name})
    print(f"merged adapter {name!r} into the base; saved to {args.out}")


def _add_demo(sub):
    p = sub.add_parser("demo", help="the end-to-end LoRA demo: tune, compare, merge, switch, report")
    p.add_argument("--out", default="reports/demo", help="report folder (markdown + PNG)")
    p.add_argument("--steps", type=int, default=None, help="steps per fine-tuning run (default: per task)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args):
    from minilora.experiments.demo import run_demo

    run_demo(args.out, steps=args.steps, progress=not args.quiet)


def _add_analyze(sub):
    p = sub.add_parser("analyze", help="rank analyses (Hu et al. 2021, §7): sweeps, subspaces, spectra")
    p.add_argument("--out", default="reports/analysis", help="report folder (markdown + PNG)")
    p.add_argument("--task", default="shift")
    p.add_argument("--quick", action="store_true", help="fewer steps and cells (for a fast look)")
    p.set_defaults(func=_analyze)


def _analyze(args):
    try:
        from minilora.experiments.report import run_analysis
    except ImportError:
        sys.exit("minilora analyze is not available in this version")
    run_analysis(args.out, task=args.task, quick=args.quick)


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
    for add in (_add_demo, _add_pretrain, _add_finetune, _add_merge, _add_analyze, _add_exercises):
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
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        # errors that minilora raises on purpose carry the problem and the fix; print them plainly
        print(f"minilora {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
