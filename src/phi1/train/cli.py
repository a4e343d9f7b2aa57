"""`phi1 train CONFIG.yaml [--set key=value ...] [--resume]` (also under torchrun), and `phi1 sweep`."""

from __future__ import annotations

import os

from phi1.utils.cliio import declare_io


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="pretrain or finetune a phi model from a YAML recipe",
        description="Train from a YAML recipe. Rerunning into an existing run directory resumes from its latest "
                    "checkpoint (a changed config is refused, naming the fields; --new-run starts a new run). "
                    "One process at a time per run directory. "
                    "Launch with `torchrun --nproc_per_node N -m phi1 train ...` for DDP/FSDP2.")
    p.add_argument("config", help="YAML recipe (see src/phi1/recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run: when the run directory already holds a run, train in the first "
                        "free sibling NAME-2, NAME-3, ... (a rerun without it resumes, and refuses a changed config)")
    declare_io(p, inputs=("config",))

    def run(args) -> int:
        from phi1.train.config import load_config
        from phi1.train.trainer import train

        cfg = load_config(args.config, args.overrides)
        result = train(cfg, resume=args.resume, new_run=args.new_run)
        if int(os.environ.get("RANK", "0")) == 0:
            last = result["last"]
            loss = f"{last['loss']:.4f}" if "loss" in last else "n/a"
            print(f"trained to step {result['step']} (loss {loss}); checkpoint {result['checkpoint']}")
        return 0

    p.set_defaults(func=run)

    p = subparsers.add_parser(
        "sweep", help="train and judge a grid of model widths x depths (the TinyStories study)",
        description="Stories -> tokenizer -> shards -> one model per (width, depth) of the recipe's scale -> loss, "
                    "ending loss on held-out stories and (with --judge-endpoint) the judge's grammar, creativity and "
                    "consistency; sweep.json, sweep.md and sweep.png (scores and loss against parameters). "
                    "Rerun to resume.")
    p.add_argument("--recipe", default="tinystories.yaml", help="sweep recipe (default recipes/tinystories.yaml)")
    p.add_argument("--stories", nargs="+", default=None,
                   help="story files or dirs: `phi1 synth stories` JSONL, TinyStories Parquet or JSON (a `text` field); "
                        "default: the recipe's `stories`")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier sweep's)")
    p.add_argument("--scale", default="toy", help="the recipe's scale: toy (CPU) or paper (GPU, 1M-33M parameters)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--judge-endpoint", default=None, help="OpenAI-compatible URL of the judge (none: no grades)")
    p.add_argument("--judge-model", default="default", help="the judge's model name")
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the judge's key")
    declare_io(p, inputs=("recipe", "stories"), out_dirs=("out",))

    def sweep(args) -> int:
        from phi1.train.sweep import format_table, load_sweep_config, run_sweep

        cfg = load_sweep_config(args.recipe)
        if args.stories:
            cfg.stories = list(args.stories)
        judge = ({"endpoint": args.judge_endpoint, "model": args.judge_model, "api_key_env": args.api_key_env}
                 if args.judge_endpoint else None)
        result = run_sweep(cfg, args.out, scale=args.scale, device=args.device, judge=judge)
        print(format_table(result), end="")
        print(f"figure: {os.path.join(args.out, 'sweep.png')}")
        return 0

    p.set_defaults(func=sweep)
