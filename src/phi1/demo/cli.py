"""`phi1 sweep`, `phi1 demo`, `phi1 ablate`, `phi1 report`."""

from __future__ import annotations

from pathlib import Path

from phi1.utils.cliio import declare_io

SCALES = {"tiny": "demo-tiny.yaml", "small": "demo-small.yaml"}


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole phi-1 recipe on embedded defaults (resumable)")
    p.add_argument("--out", default="phi1-demo", help="run directory (default ./phi1-demo); rerun to resume")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--scale", choices=sorted(SCALES), default="tiny",
                   help="tiny: CPU, ~15 min; small: phi-1-small on one GPU with real token budgets")
    p.add_argument("--recipe", default=None, help="a demo recipe YAML instead of --scale (e.g. recipes/phi-1.yaml)")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible LLM endpoint: the annotation judge (unless the recipe sets data.annotate.endpoint "
                   "or annotator: rules) and synthetic data")
    p.add_argument("--model", default=None, help="model name at --endpoint")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the endpoint's API key")
    declare_io(p, inputs=("recipe",), out_dirs=("out",))
    p.set_defaults(func=_demo)

    p = sub.add_parser("ablate", help="train on unfiltered vs filtered data at equal tokens and compare; "
                       "or, with --prune-thresholds, the paper's pruning study")
    p.add_argument("--config", default=None, help="ablation YAML (default recipes/ablation-tiny.yaml; with "
                   "--prune-thresholds recipes/demo-tiny.yaml, whose prune section sets the study)")
    p.add_argument("--out", default="phi1-ablation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prune-thresholds", default=None, metavar="T1,T2,...",
                   help="the pruning study (paper §5): remove exercises similar to HumanEval at each threshold, "
                        "finetune one arm per threshold from one base, compare pass@1 on similar vs non-similar "
                        "problems, e.g. 0.95,0.9,0.85,0.8")
    p.add_argument("--prune-metric", choices=("ast", "embedding"), default=None,
                   help="similarity for the pruning study (default: the recipe's prune.metric, ast)")
    declare_io(p, inputs=("config",), out_dirs=("out",))
    p.set_defaults(func=_ablate)

    p = sub.add_parser("report", help="(re)write report.md and report.html for a run directory")
    p.add_argument("run_dir")
    declare_io(p, inputs=("run_dir",), updates=("run_dir",), derived=lambda args: _report_files(args.run_dir))
    p.set_defaults(func=_report)

    p = sub.add_parser(
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
    p.add_argument("--judge-model", help="the judge's model name (default: \"default\", what a one-model server answers to)")
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the judge's key")
    declare_io(p, inputs=("recipe", "stories"), out_dirs=("out",))

    def sweep(args) -> int:
        from phi1.demo.sweep import format_table, load_sweep_config, run_sweep

        cfg = load_sweep_config(args.recipe)
        if args.stories:
            cfg.stories = list(args.stories)
        from phi1.llm.client import ANY_MODEL

        judge = ({"endpoint": args.judge_endpoint, "model": args.judge_model or ANY_MODEL, "api_key_env": args.api_key_env}
                 if args.judge_endpoint else None)
        result = run_sweep(cfg, args.out, scale=args.scale, device=args.device, judge=judge)
        print(format_table(result), end="")
        print(f"figure: {Path(args.out) / 'sweep.png'}")
        return 0

    p.set_defaults(func=sweep)


def _demo(args) -> int:
    from phi1.demo.config import load_demo_config
    from phi1.demo.pipeline import run_demo

    cfg = load_demo_config(args.recipe or SCALES[args.scale])
    root = run_demo(cfg, Path(args.out), device=args.device, endpoint=args.endpoint, model=args.model,
                    api_key_env=args.api_key_env)
    print()
    print(f"report: {root / 'report.md'}  (and {root / 'report.html'})")
    print(f"model:  {root / 'model'}")
    print(f"try it: phi1 generate --model {root / 'model'} --prompt 'def is_prime(n):'")
    print(f"serve:  phi1 serve --model {root / 'model'}")
    return 0


def _ablate(args) -> int:
    from phi1.demo.config import load_demo_config

    if args.prune_thresholds is not None or args.prune_metric is not None:
        from phi1.demo.prune import parse_thresholds, run_prune_study

        cfg = load_demo_config(args.config or "demo-tiny.yaml")
        if args.prune_metric:
            cfg.prune.metric = args.prune_metric
        taus = parse_thresholds(args.prune_thresholds) if args.prune_thresholds is not None else None
        out = run_prune_study(cfg, Path(args.out), taus, device=args.device)
        print(f"pruning study: {out} (and {out.with_suffix('.html')}, {out.parent / 'prune.json'})")
        return 0
    from phi1.demo.ablate import run_ablation

    out = run_ablation(load_demo_config(args.config or "ablation-tiny.yaml"), Path(args.out), device=args.device)
    print(f"comparison: {out} (and {out.with_suffix('.html')}, {out.parent / 'ablation.json'})")
    return 0


def _report_files(run_dir):
    from phi1.demo.report import report_files

    return report_files(run_dir)


def _report(args) -> int:
    from phi1.demo.report import build_report

    path = build_report(args.run_dir)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0
