"""`phi1 synth ...`: generate textbooks, exercises and stories from an LLM endpoint; validate them."""

from __future__ import annotations

import argparse
import json
import sys

from phi1.synth.spec import KINDS
from phi1.utils.cliio import declare_io, needs_subcommand


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", required=True,
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (comma-separated for several)")
    p.add_argument("--model", required=True, help="model name the server serves")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the API key (the key itself is never written anywhere)")
    p.add_argument("--concurrency", type=int, default=8, help="most requests in flight at once, over all endpoints (default 8)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP attempt (default 120)")
    p.add_argument("--max-attempts", type=int, default=6, help="attempts per request before it is recorded as failed")
    p.add_argument("--base-delay", type=float, default=0.5, help="first retry backoff in seconds (doubles each retry)")
    p.add_argument("--routing", choices=("least-busy", "round-robin"), default="least-busy")
    p.add_argument("--price-per-1k-prompt", type=float, default=0.0, help="for the cost estimate")
    p.add_argument("--price-per-1k-completion", type=float, default=0.0, help="for the cost estimate")


def _job(kind: str, args) -> int:
    from phi1.synth.job import JobConfig, report_dict, run_job

    cfg = JobConfig(
        kind=kind, endpoint=args.endpoint, model=args.model, count=args.count, out=args.out, spec=args.spec,
        concurrency=args.concurrency, seed=args.seed, api_key_env=args.api_key_env, timeout=args.timeout,
        max_attempts=args.max_attempts, base_delay=args.base_delay, routing=args.routing,
        sampling={"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens},
        api=args.api, price_per_1k_prompt=args.price_per_1k_prompt,
        price_per_1k_completion=args.price_per_1k_completion,
        max_consecutive_failures=args.max_consecutive_failures,
    )
    rep = run_job(cfg)
    print(json.dumps(report_dict(rep)))
    if not rep.complete:
        why = f"stopped early: {rep.stopped}; " if rep.stopped else ""
        see = f", see {rep.failures_file}" if rep.failures_file else ""
        print(f"phi1: {why}{rep.missing} of {rep.requested} records missing ({rep.failed} failed{see}); "
              "rerun the same command to finish", file=sys.stderr)
        return 1
    return 0


def _validate(args) -> int:
    from phi1.synth.validate import ValidateConfig, validate_file

    rep = validate_file(ValidateConfig(kind=args.kind, input=args.input, out=args.out, report=args.report,
                                       execute=not args.no_execute, timeout=args.exec_timeout, workers=args.workers,
                                       dedup_threshold=args.dedup_threshold, decontaminate=not args.no_decontam,
                                       keep_truncated=args.keep_truncated, min_words=args.min_words,
                                       benchmarks=args.benchmark if args.benchmark is not None else
                                       ([] if args.benchmark_file else ["humaneval"]),
                                       benchmark_files=args.benchmark_file))
    print(json.dumps(rep["counts"]))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="synthetic data: textbooks, exercises, stories from an LLM; validate",
                                   description="Generate synthetic training data through an OpenAI-compatible endpoint.")
    sub = parser.add_subparsers(dest="synth_command", metavar="COMMAND")
    for kind in KINDS:
        p = sub.add_parser(kind, help=f"generate {kind} (resumable: rerun the same command to continue)")
        _add_client_args(p)
        p.add_argument("--count", type=int, required=True, help="number of records the output should hold")
        p.add_argument("--out", required=True, help="output JSONL (its ledger; .job.json and .failures.jsonl beside it)")
        p.add_argument("--spec", default=None, help=f"spec YAML (default: recipes/synth/{kind}.yaml)")
        p.add_argument("--seed", type=int, default=0, help="record i's prompt depends only on (seed, i)")
        p.add_argument("--temperature", type=float, default=None, help="override the spec's temperature")
        p.add_argument("--top-p", type=float, default=None, help="override the spec's top_p")
        p.add_argument("--max-tokens", type=int, default=None, help="override the spec's max_tokens")
        p.add_argument("--api", choices=("chat", "completions"), default=None, help="override the spec's API")
        p.add_argument("--max-consecutive-failures", type=int, default=50,
                       help="stop the run after this many failed requests in a row (0 = never)")
        declare_io(p, inputs=("spec",), outputs=("out",), derived={"out": (".job.json", ".failures.jsonl")})
        p.set_defaults(func=lambda args, kind=kind: _job(kind, args))
    v = sub.add_parser("validate", help="check, deduplicate and decontaminate generated records; diversity report")
    v.add_argument("--kind", choices=KINDS, required=True)
    v.add_argument("--input", required=True, help="JSONL written by `phi1 synth KIND`")
    v.add_argument("--out", required=True, help="JSONL of the records that pass (rejects go to OUT.rejected.jsonl)")
    v.add_argument("--report", default=None, help="diversity report JSON (default OUT.report.json; PNG beside it)")
    v.add_argument("--no-execute", action="store_true", help="exercises: only parse, do not run the asserts")
    v.add_argument("--exec-timeout", type=float, default=5.0, help="seconds per exercise execution")
    v.add_argument("--dedup-threshold", type=float, default=0.85, help="MinHash Jaccard above which texts are near-duplicates")
    v.add_argument("--workers", type=int, default=2, help="sandbox processes for executing exercises")
    v.add_argument("--no-decontam", action="store_true", help="skip the decontamination (13-gram, sequence ratio, AST)")
    v.add_argument("--benchmark", action="append", default=None,
                   help="built-in benchmark to protect (humaneval, the default); repeatable")
    v.add_argument("--benchmark-file", action="append", default=[],
                   help="benchmark JSONL to protect too (HumanEval or MBPP format, e.g. mbpp.jsonl); repeatable")
    v.add_argument("--keep-truncated", action="store_true", help="keep records cut off by max_tokens")
    v.add_argument("--min-words", type=int, default=40, help="shortest story / textbook prose kept, in words")
    declare_io(v, inputs=("input", "benchmark_file"), outputs=("out", "report"), derived={"out": (".rejected.jsonl", ".report.json")})
    v.set_defaults(func=_validate)
    parser.set_defaults(func=needs_subcommand(parser))
