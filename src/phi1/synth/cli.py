"""`phi1 synth ...`: generate textbooks, exercises and stories from an LLM endpoint; validate them."""

from __future__ import annotations

import argparse
import json
import sys

from phi1.synth.spec import KINDS
from phi1.utils.cliio import declare_io, needs_subcommand


def _add_client_args(p: argparse.ArgumentParser) -> None:
    from phi1.llm.client import ClientSettings
    from phi1.utils.config import add_config_flags

    p.add_argument("--endpoint", required=True,
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (comma-separated for several)")
    p.add_argument("--model", required=True, help="model name the server serves")
    add_config_flags(p, ClientSettings, aliases={"price_in_per_1m": ["--price-in"],
                                                 "price_out_per_1m": ["--price-out"]})


def _job(kind: str, args) -> int:
    from phi1.synth.job import JobConfig, report_dict, run_job
    from phi1.utils.config import fields_from_args

    cfg = JobConfig(kind=kind, sampling={"temperature": args.temperature, "top_p": args.top_p,
                                         "max_tokens": args.max_tokens}, **fields_from_args(JobConfig, args))
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

    from phi1.utils.config import fields_from_args

    rep = build_topic_tree(TopicsConfig(**fields_from_args(TopicsConfig, args)))
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


def _validate_writes(args) -> dict:
    from phi1.synth.validate import ValidateConfig

    return ValidateConfig(kind=args.kind, input=args.input, out=args.out, report=args.report).derived()


def _validate(args) -> int:
    from phi1.synth.validate import ValidateConfig, validate_file

    from phi1.utils.config import fields_from_args

    given = fields_from_args(ValidateConfig, args)  # kind, input, out, report, topics_file and the flags given
    if args.benchmark is not None or args.benchmark_file:
        given["benchmarks"] = args.benchmark or []  # a benchmark file alone means no built-in benchmark
    rep = validate_file(ValidateConfig(execute=not args.no_execute, decontaminate=not args.no_decontam,
                                       benchmark_files=args.benchmark_file, **given))  # given: keep_truncated too
    print(json.dumps(rep["counts"]))
    return 0


def register(subparsers) -> None:
    from phi1.synth.job import JobConfig
    from phi1.synth.topics import TopicsConfig
    from phi1.synth.validate import ValidateConfig
    from phi1.utils.config import add_config_flags

    parser = subparsers.add_parser("synth", help="synthetic data: textbooks, exercises, stories from an LLM; validate",
                                   description="Generate synthetic training data through an OpenAI-compatible endpoint.")
    sub = parser.add_subparsers(dest="synth_command", metavar="COMMAND")
    for kind in KINDS:
        p = sub.add_parser(kind, help=f"generate {kind} (resumable: rerun the same command to continue)")
        _add_client_args(p)
        p.add_argument("--count", type=int, required=True, help="number of records the output should hold")
        p.add_argument("--out", required=True, help="output JSONL (its ledger; .job.json and .failures.jsonl beside it)")
        p.add_argument("--spec", default=None, help=f"spec YAML (default: recipes/synth/{kind}.yaml)")
        p.add_argument("--temperature", type=float, default=None, help="override the spec's temperature")
        p.add_argument("--top-p", type=float, default=None, help="override the spec's top_p")
        p.add_argument("--max-tokens", type=int, default=None, help="override the spec's max_tokens")
        p.add_argument("--api", choices=("chat", "completions"), default=None, help="override the spec's API")
        add_config_flags(p, JobConfig, only=("seed", "max_consecutive_failures", "batch", "batch_size",
                                             "poll_interval"))
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
    add_config_flags(t, TopicsConfig, only=("branching", "depth", "temperature", "max_tokens"))
    declare_io(t, inputs=("seeds",), outputs=("out",), derived={"out": (".job.json", ".ledger.jsonl")})
    t.set_defaults(func=_topics)
    v = sub.add_parser("validate", help="check, deduplicate and decontaminate generated records; diversity report")
    v.add_argument("--kind", choices=KINDS, required=True)
    v.add_argument("--input", required=True, help="JSONL written by `phi1 synth KIND`")
    v.add_argument("--out", required=True, help="JSONL of the records that pass (rejects go to OUT.rejected.jsonl)")
    v.add_argument("--report", default=None, help="diversity report JSON (default OUT.report.json; PNG beside it)")
    v.add_argument("--no-execute", action="store_true", help="exercises: only parse, do not run the asserts")
    add_config_flags(v, ValidateConfig, only=("timeout", "dedup_threshold", "workers", "min_words", "encoder",
                                              "cluster_sample", "cluster_threshold"),
                     rename={"timeout": "exec_timeout"})
    v.add_argument("--no-decontam", action="store_true", help="skip the decontamination (13-gram, sequence ratio, AST)")
    v.add_argument("--benchmark", action="append", default=None,
                   help="built-in benchmark to protect (humaneval, the default); repeatable")
    v.add_argument("--benchmark-file", action="append", default=[],
                   help="benchmark JSONL to protect too (HumanEval or MBPP format, e.g. mbpp.jsonl); repeatable")
    v.add_argument("--keep-truncated", action="store_true", help="keep records cut off by max_tokens")
    v.add_argument("--topics-file", default=None,
                   help="topic tree whose leaf coverage is reported (default: the records' spec's topics_file)")
    declare_io(v, inputs=("input", "benchmark_file", "topics_file"), outputs=("out", "report"), derived=_validate_writes)
    v.set_defaults(func=_validate)
    parser.set_defaults(func=needs_subcommand(parser))
