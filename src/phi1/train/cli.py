"""`phi1 train CONFIG.yaml [--set key=value ...] [--resume]` (also under torchrun)."""

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
