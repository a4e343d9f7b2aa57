"""`phi1 synth ...`: generate textbooks, exercises and stories from an LLM endpoint; validate them."""

from __future__ import annotations

import argparse
import json
import sys

from phi1.data.minhash import DEDUP_THRESHOLD
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
        batch=args.batch, batch_size=args.batch_size, poll_interval=args.poll_interval,
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


def _topics(args) -> int:
    from phi1.synth.topics import TopicsConfig, build_topic_tree, report_dict

    rep = build_topic_tree(TopicsConfig(
        endpoint=args.endpoint, model=args.model, seeds=args.seeds, target=args.target, out=args.out,
        branching=args.branching, depth=args.depth, temperature=args.temperature, max_tokens=args.max_tokens,
        concurrency=args.concurrency, api_key_env=args.api_key_env, timeout=args.timeout,
        max_attempts=args.max_attempts, base_delay=args.base_delay, routing=args.routing,
        price_per_1k_prompt=args.price_per_1k_prompt, price_per_1k_completion=args.price_per_1k_completion))
    print(json.dumps(report_dict(rep)))
    if rep.error:
        print(f"phi1: {rep.error}; the expansions so far are kept in {args.out}.ledger.jsonl: rerun the same "
              "command to continue", file=sys.stderr)
        return 1
    if not rep.reached_target:
        print(f"phi1: the tree has {rep.leaves} leaves, short of --target {rep.target}: every node down to --depth "
              f"{args.depth} is expanded; raise --depth or --branching (with another --out)", file=sys.stderr)
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
                                       benchmark_files=args.benchmark_file, encoder=args.encoder,
                                       cluster_sample=args.cluster_sample, cluster_threshold=args.cluster_threshold,
                                       topics_file=args.topics_file))
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
        p.add_argument("--batch", action="store_true",
                       help="use the OpenAI Batch API (half price, answers within 24 h): upload, submit, poll, collect; "
                            "rerun the same command after any interruption to resume the same batches")
        p.add_argument("--batch-size", type=int, default=50_000,
                       help="--batch: most requests per batch file (default and API limit 50000; files stay under 200 MB)")
        p.add_argument("--poll-interval", type=float, default=30.0, help="--batch: seconds between polls (default 30)")
        declare_io(p, inputs=("spec",), outputs=("out",), derived={"out": (".job.json", ".failures.jsonl")})
        p.set_defaults(func=lambda args, kind=kind: _job(kind, args))
    t = sub.add_parser("topics", help="grow a topic tree of N leaves from seed subjects through the LLM (resumable)",
                       description="Build a topic tree once (subject -> subtopics -> leaves, breadth first) for "
                                   "textbook specs' topics_file.")
    _add_client_args(t)
    t.add_argument("--seeds", required=True,
                   help="seed subjects: a .txt (one a line), .json or .yaml list file, or a comma list 'Python,SQL'")
    t.add_argument("--target", type=int, required=True, help="number of leaves the tree should have (e.g. 20000)")
    t.add_argument("--out", required=True, help="tree JSON (OUT.ledger.jsonl and OUT.job.json beside it)")
    t.add_argument("--branching", type=int, default=10, help="subtopics asked for per node, and most kept (default 10)")
    t.add_argument("--depth", type=int, default=4, help="most levels below the seed subjects (default 4)")
    t.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the expansions")
    t.add_argument("--max-tokens", type=int, default=600, help="longest answer per expansion")
    declare_io(t, inputs=("seeds",), outputs=("out",), derived={"out": (".job.json", ".ledger.jsonl")})
    t.set_defaults(func=_topics)
    v = sub.add_parser("validate", help="check, deduplicate and decontaminate generated records; diversity report")
    v.add_argument("--kind", choices=KINDS, required=True)
    v.add_argument("--input", required=True, help="JSONL written by `phi1 synth KIND`")
    v.add_argument("--out", required=True, help="JSONL of the records that pass (rejects go to OUT.rejected.jsonl)")
    v.add_argument("--report", default=None, help="diversity report JSON (default OUT.report.json; PNG beside it)")
    v.add_argument("--no-execute", action="store_true", help="exercises: only parse, do not run the asserts")
    v.add_argument("--exec-timeout", type=float, default=5.0, help="seconds per exercise execution")
    v.add_argument("--dedup-threshold", type=float, default=DEDUP_THRESHOLD, help="MinHash Jaccard above which texts are near-duplicates")
    v.add_argument("--workers", type=int, default=2, help="sandbox processes for executing exercises")
    v.add_argument("--no-decontam", action="store_true", help="skip the decontamination (13-gram, sequence ratio, AST)")
    v.add_argument("--benchmark", action="append", default=None,
                   help="built-in benchmark to protect (humaneval, the default); repeatable")
    v.add_argument("--benchmark-file", action="append", default=[],
                   help="benchmark JSONL to protect too (HumanEval or MBPP format, e.g. mbpp.jsonl); repeatable")
    v.add_argument("--keep-truncated", action="store_true", help="keep records cut off by max_tokens")
    v.add_argument("--min-words", type=int, default=40, help="shortest story / textbook prose kept, in words")
    v.add_argument("--encoder", default="hashing",
                   help="embeddings for the report's cluster count: hashing (default, no model) | minilm | st:DIR | hf:NAME")
    v.add_argument("--cluster-sample", type=int, default=2000,
                   help="kept texts (a seeded sample) clustered for the report; 0 = skip (default 2000)")
    v.add_argument("--cluster-threshold", type=float, default=0.7,
                   help="cosine distance under which texts join one cluster (average linkage; default 0.7)")
    v.add_argument("--topics-file", default=None,
                   help="topic tree whose leaf coverage is reported (default: the records' spec's topics_file)")
    declare_io(v, inputs=("input", "benchmark_file", "topics_file"), outputs=("out", "report"), derived={"out": (".rejected.jsonl", ".report.json")})
    v.set_defaults(func=_validate)
    parser.set_defaults(func=needs_subcommand(parser))
