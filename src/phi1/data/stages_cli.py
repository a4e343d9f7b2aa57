"""CLI for the data stages: `phi1 data collect|dedup|annotate|classify|filter|decontaminate|mine-exercises|run`.

Each subcommand parses flags and calls one `run_*` library function. The single-stage commands run
the same datatrove blocks as `phi1 data run` (`phi1.data.pipeline.run_stage_file`), `--workers`
tasks on this machine; a flag left out takes the stage config's default (`phi1.data.steps`).
"""

from __future__ import annotations

import json
import sys

from phi1.utils.cliio import declare_io, needs_subcommand


def _common(p, out_required: bool = True) -> None:
    p.add_argument("input", help="input JSONL file (records with id, text, meta)")
    if out_required:
        p.add_argument("--out", required=True, help="output JSONL file (its report goes to OUT.report.json)")
    p.add_argument("--rejected", help="also write the dropped records (with the reason in meta) to this file")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed JSONL lines (counted) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    outputs = ("out", "rejected") if out_required else ("rejected",)
    declare_io(p, inputs=("input", "benchmark_files", "classifier", "tokenizer"),
               outputs=outputs, derived={"out": (".report.json",)} if out_required else None, overwrite=True)


def _io(args) -> dict:
    return {"rejected": args.rejected, "skip_bad_lines": args.skip_bad_lines, "quiet": args.quiet,
            "overwrite": getattr(args, "overwrite", False)}


def _collect(args) -> int:
    from phi1.data.collect import run_collect

    run_collect(args.sources, args.out, python_stdlib=args.python_stdlib, site_packages=args.site_packages,
                include=args.include, exclude=args.exclude, max_bytes=args.max_bytes, workers=args.workers,
                text_column=args.text_column, meta_columns=args.meta_column,
                limit_bytes=int(args.limit_mb * 1e6), **_io(args))
    return 0


# ---- the command table: command -> its config class, the flags' spelling, and the run function ----
#
# A command's config flags are generated from its config dataclass (`phi1.utils.config.add_config_flags`:
# one `--field-name` per field, help from the field's doc, default from the dataclass); `render_flags`
# writes them back for a config, so `phi1 data COMMAND IN --out OUT <render_flags(cfg)>` reproduces it.

def _config_class(name: str):
    from phi1.data.steps import KINDS

    return KINDS[name][0]


STAGE_COMMANDS: dict[str, dict] = {
    # name: {"kind": the stage kind in phi1.data.steps.KINDS, "aliases": old flag names kept working}
    "dedup": {"kind": "dedup", "aliases": {}},
    "decontaminate": {"kind": "decontaminate",
                      "aliases": {"benchmarks": ["--benchmark"], "benchmark_files": ["--benchmark-file"]}},
    "mine-exercises": {"kind": "mine-exercises",
                       "aliases": {"benchmarks": ["--benchmark"], "benchmark_files": ["--benchmark-file"]}},
}


def command_config_class(command: str):
    """The config dataclass of a `phi1 data` command of `STAGE_COMMANDS`."""
    return _config_class(STAGE_COMMANDS[command]["kind"])


def add_stage_flags(p, command: str) -> None:
    from phi1.utils.config import add_config_flags

    add_config_flags(p, command_config_class(command), aliases=STAGE_COMMANDS[command]["aliases"])


def stage_config_from_args(command: str, args):
    """The command's typed config from its flags (a benchmark file alone means no built-in benchmark)."""
    from phi1.utils.config import config_from_args

    if hasattr(args, "benchmark_files") and args.benchmarks is None and args.benchmark_files:
        args.benchmarks = []
    return config_from_args(command_config_class(command), args, where=command)


def _dedup(args) -> int:
    from phi1.data.dedup import run_dedup
    from phi1.utils.config import changed_fields

    cfg = stage_config_from_args("dedup", args)
    run_dedup(args.input, args.out, workers=args.workers, **changed_fields(cfg), **_io(args))
    return 0


def _annotate(args) -> int:
    from phi1.data.annotate import run_annotate

    run_annotate(args.input, args.out, endpoint=args.endpoint, model=args.model, api_key_env=args.api_key_env,
                 annotator=args.annotator, sample=args.sample, seed=args.seed, scale=args.scale,
                 temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                 response_format=args.response_format, price_in_per_1m=args.price_in, price_out_per_1m=args.price_out,
                 concurrency=args.concurrency, timeout=args.timeout, max_attempts=args.max_attempts, cache=args.cache,
                 only_sampled=args.only_sampled, workers=args.workers, **_io(args))
    return 0


def _encoder_run(args) -> dict:
    return {k: getattr(args, k, None) for k in ("device", "dtype", "batch_size")}


def _train(args) -> int:
    from phi1.data.classify import run_classify_train

    meta = run_classify_train(args.input, args.classifier, encoder=args.encoder, head=args.head, task=args.task,
                              threshold=args.threshold, label_field=args.label_field,
                              test_fraction=args.test_fraction, n_estimators=args.n_estimators,
                              max_depth=args.max_depth, alpha=args.alpha, seed=args.seed, pooling=args.pooling,
                              max_tokens=args.max_tokens, embed_cache=args.embed_cache, **_encoder_run(args),
                              workers=args.workers, skip_bad_lines=args.skip_bad_lines, quiet=args.quiet)
    print(json.dumps(meta["held_out"]))
    return 0


def _eval(args) -> int:
    from phi1.data.classify import run_classify_eval
    from phi1.data.features import EncoderRun

    run = EncoderRun(**{k: v for k, v in _encoder_run(args).items() if v is not None})
    run.validate()
    print(json.dumps(run_classify_eval(args.input, args.classifier, encoder=args.encoder, run=run,
                                       embed_cache=args.embed_cache, skip_bad_lines=args.skip_bad_lines,
                                       quiet=args.quiet)))
    return 0


def _score(args) -> int:
    from phi1.data.classify import run_classify_score

    run_classify_score(args.input, args.out, classifier=args.classifier, encoder=args.encoder, **_encoder_run(args),
                       workers=args.workers, **_io(args))
    return 0


def _tokens(text: str) -> int:
    """A token count as an integer or in float notation (6e9), for --keep-tokens."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (e.g. 6000000000 or 6e9)") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of tokens >= 1")
    return int(value)


def _filter(args) -> int:
    from phi1.data.filter import run_filter

    run_filter(args.input, args.out, min_score=args.min_score, top_fraction=args.top_fraction,
               keep_tokens=args.keep_tokens, tokenizer=args.tokenizer, bytes_per_token=args.bytes_per_token,
               field=args.field, workers=args.workers, **_io(args))
    return 0


def _decontaminate(args) -> int:
    from phi1.data.decontam import run_decontaminate

    from phi1.utils.config import changed_fields

    cfg = stage_config_from_args("decontaminate", args)
    rep = run_decontaminate(args.input, args.out, workers=args.workers, **changed_fields(cfg), **_io(args))
    if not args.quiet:
        for h in rep.details["hits"][:20]:
            best = h["hits"][0]
            print(f"  {h['id']}: {best['task_id']} ({best['method']}, score {best['score']})", file=sys.stderr)
    return 0


def _mine(args) -> int:
    from phi1.data.mine import run_mine

    from phi1.utils.config import changed_fields

    cfg = stage_config_from_args("mine-exercises", args)
    run_mine(args.input, args.out, workers=args.workers, **changed_fields(cfg), **_io(args))
    return 0


def _run(args) -> int:
    from phi1.data.pipeline import run_pipeline

    res = run_pipeline(args.pipeline, workdir=args.workdir, force=args.force, until=args.until, quiet=args.quiet,
                       executor=args.executor, tasks=args.tasks, workers=args.workers, dry_run=args.dry_run,
                       ray_address=args.ray_address, slurm_partition=args.slurm_partition)
    for r in res:
        print(f"{r['stage']}: {r['status']} -> {r['output']}")
    return 0


def _encoder_flags(p, train: bool) -> None:
    """The neural encoders' flags (hf:, st:, minilm); left out, each keeps its `EncoderOptions` default."""
    p.add_argument("--device", help="auto (default: cuda when available) | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", help="auto (default: bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16")
    p.add_argument("--batch-size", type=int, help="documents per forward pass (default 32)")
    if train:
        p.add_argument("--pooling", choices=["mean", "last"], help="mean over tokens (default) | last token")
        p.add_argument("--max-tokens", type=int, help="tokens per document, cut beyond (default 2048, at most the "
                       "model's positions; the report counts the cuts)")
        p.add_argument("--embed-cache", help="embedding cache folder (default $PHI1_CACHE_DIR/embeddings or "
                       "~/.cache/phi1/embeddings); off = no cache")


def register_data(sub) -> None:
    p = sub.add_parser("collect", help="gather source files / JSONL / Parquet / HF datasets into records")
    p.add_argument("sources", nargs="*", help="directories (recursive), .jsonl(.gz), .parquet, globs of them, "
                   "saved datasets dirs, or hf:NAME[:CONFIG] (streamed from the hub)")
    p.add_argument("--out", required=True)
    p.add_argument("--python-stdlib", action="store_true", help="add the running Python's standard library")
    p.add_argument("--site-packages", action="store_true", help="add the running Python's installed packages")
    p.add_argument("--include", action="append", help="filename glob to include (default *.py); repeatable")
    p.add_argument("--exclude", action="append", help="filename/relative-path glob to exclude; repeatable")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="skip larger files (default 1 MB)")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.add_argument("--text-column", help="column holding the text in table sources (default: content if present, else text)")
    p.add_argument("--meta-column", action="append", help="table column to keep in meta (e.g. max_stars_repo_name); repeatable")
    p.add_argument("--limit-mb", type=float, default=0.0, help="only the first code files (by path) up to this many MB (0 = all)")
    p.add_argument("--rejected")
    p.add_argument("--skip-bad-lines", action="store_true")
    p.add_argument("--quiet", action="store_true")
    declare_io(p, inputs=("sources",), outputs=("out", "rejected"), derived={"out": (".report.json",)}, overwrite=True)
    p.set_defaults(func=_collect)

    p = sub.add_parser("dedup", help="drop exact and near duplicates (MinHash + LSH, as a dedup stage)")
    _common(p)
    add_stage_flags(p, "dedup")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.set_defaults(func=_dedup)

    p = sub.add_parser("annotate", help="educational-value labels 0-5 (LLM judge, or rules offline)")
    _common(p)
    p.add_argument("--endpoint", help="OpenAI-compatible base URL of the LLM judge (comma-separated for several)")
    p.add_argument("--model", help="model name on the endpoint")
    p.add_argument("--api-key-env", help="environment variable holding the API key")
    p.add_argument("--annotator", choices=["llm", "rules"], help="rules: the offline rule-based labels (needed with "
                   "--sample and no --endpoint); default: llm with an endpoint")
    p.add_argument("--sample", type=int, help="annotate a fixed-seed sample of N records (default: all)")
    p.add_argument("--seed", type=int, help="the sample's seed (default 0)")
    p.add_argument("--scale", type=int, choices=[5, 10], help="the judge scores 0-5 (default, the paper's) or 0-10")
    p.add_argument("--temperature", type=float, help="judge sampling temperature (default 0)")
    p.add_argument("--top-p", type=float, help="judge nucleus sampling (default: the server's)")
    p.add_argument("--max-tokens", type=int, help="the judge's answer length (default 512; reasoning models need more)")
    p.add_argument("--response-format", choices=["auto", "json_schema", "none"],
                   help="auto (default): ask for a JSON schema while the server accepts it")
    p.add_argument("--price-in", type=float, help="USD per million prompt tokens (the report gives the cost)")
    p.add_argument("--price-out", type=float, help="USD per million completion tokens")
    p.add_argument("--concurrency", type=int, help="judge requests at once (default 8)")
    p.add_argument("--timeout", type=float, help="seconds per judge request (default 60)")
    p.add_argument("--max-attempts", type=int, help="tries per judge request (default 6)")
    p.add_argument("--cache", help="judge cache file (default OUT.cache.jsonl)")
    declare_io(p, inputs=("input",), outputs=("out", "rejected", "cache"),
               derived={"out": (".report.json", ".cache.jsonl")})
    g = p.add_mutually_exclusive_group()
    g.add_argument("--only-sampled", dest="only_sampled", action="store_const", const=True,
                   help="with --sample, write only the labelled records (the default)")
    g.add_argument("--keep-unsampled", dest="only_sampled", action="store_const", const=False,
                   help="with --sample, write every record, the sampled ones labelled")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.set_defaults(func=_annotate)

    from phi1.data.features import ENCODER_HELP

    p = sub.add_parser("classify", help="quality classifier: train | eval | score")
    csub = p.add_subparsers(dest="classify_command", metavar="ACTION")
    p.set_defaults(func=needs_subcommand(p))
    t = csub.add_parser("train", help="train a random forest on meta.edu_label")
    _common(t, out_required=False)
    t.add_argument("--classifier", required=True, help="where to save the classifier (a .json sidecar goes beside it)")
    declare_io(t, inputs=("input",), outputs=("classifier", "rejected"), derived={"classifier": (".json",)})
    t.add_argument("--encoder", help=ENCODER_HELP + " (default hashing)")
    t.add_argument("--head", choices=["forest", "linear"], help="forest: the paper's random forest (default); "
                   "linear: a FineWeb-Edu-style linear head on the frozen embeddings")
    t.add_argument("--task", choices=["classification", "regression"], help="classification of label >= threshold "
                   "(default) | regression on the label")
    t.add_argument("--threshold", type=float, help="labels >= this count as educational (default 3)")
    t.add_argument("--label-field", help="the meta field holding the label (default edu_label)")
    t.add_argument("--test-fraction", type=float, help="held out for the reported metrics (default 0.2)")
    t.add_argument("--n-estimators", type=int, help="forest: trees (default 200)")
    t.add_argument("--max-depth", type=int, help="forest: tree depth (default: unlimited)")
    t.add_argument("--alpha", type=float, help="linear: L2 penalty (default 1.0)")
    t.add_argument("--seed", type=int, help="split and forest seed (default 0)")
    t.add_argument("--workers", type=int, default=0, help="forest: CPU threads (0 = all)")
    _encoder_flags(t, train=True)
    t.set_defaults(func=_train)
    e = csub.add_parser("eval", help="precision/recall/F1 and the confusion matrix of a saved classifier")
    _common(e, out_required=False)
    e.add_argument("--classifier", required=True)
    e.add_argument("--encoder", help="override (must match the training encoder's fingerprint)")
    _encoder_flags(e, train=False)
    e.add_argument("--embed-cache", help="embedding cache folder (default: the training default); off = none")
    e.set_defaults(func=_eval)
    s = csub.add_parser("score", help="add meta.edu_score to every record")
    _common(s)
    s.add_argument("--classifier", required=True)
    s.add_argument("--encoder", help="override (must match the training encoder's fingerprint)")
    _encoder_flags(s, train=False)
    s.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    s.set_defaults(func=_score)

    p = sub.add_parser("filter", help="keep the records with the best meta.edu_score")
    _common(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--min-score", type=float, help="keep records scored at least this")
    g.add_argument("--top-fraction", type=float, help="keep the best fraction of the records (ties kept)")
    g.add_argument("--keep-tokens", type=_tokens, help="keep the best records up to this many tokens (e.g. 6e9, "
                   "the paper's 6B); the report gives the resulting score cut-off")
    p.add_argument("--tokenizer", help="with --keep-tokens: count tokens with this tokenizer directory (default: "
                   "estimate UTF-8 bytes / --bytes-per-token)")
    p.add_argument("--bytes-per-token", type=float, help="with --keep-tokens and no --tokenizer (default 3.5)")
    p.add_argument("--field", help="the meta field to rank by (default edu_score)")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.set_defaults(func=_filter)

    p = sub.add_parser("decontaminate", help="remove records overlapping benchmark problems (n-gram + AST)")
    _common(p)
    add_stage_flags(p, "decontaminate")
    p.add_argument("--no-ast", action="store_const", const=False, dest="use_ast", help="n-gram check only "
                   "(= --no-use-ast)")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.set_defaults(func=_decontaminate)

    p = sub.add_parser("mine-exercises", help="extract documented self-contained functions as prompt/completion pairs")
    _common(p)
    add_stage_flags(p, "mine-exercises")
    p.add_argument("--workers", type=int, default=0, help="tasks (0 = one per CPU)")
    p.set_defaults(func=_mine)

    p = sub.add_parser("run", help="run a data pipeline YAML, resuming finished stages")
    p.add_argument("pipeline", help="pipeline YAML (see recipes/data-demo.yaml)")
    p.add_argument("--workdir", help="override the pipeline's workdir")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--until", help="stop after this stage")
    p.add_argument("--executor", choices=("local", "ray", "slurm", "datatrove"),
                   help="where tasks run (default: the pipeline's executor, else local; datatrove = local)")
    p.add_argument("--tasks", type=int, help="tasks per parallel block (default: the pipeline's, else --workers)")
    p.add_argument("--workers", type=int, help="tasks running at once (default: the pipeline's, else one per CPU)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: the pipeline's ray.address, else auto)")
    p.add_argument("--slurm-partition", help="the partition sbatch jobs go to (or the pipeline's slurm.partition)")
    p.add_argument("--dry-run", action="store_true", help="slurm: write the job scripts, submit nothing")
    p.add_argument("--quiet", action="store_true")
    declare_io(p, inputs=("pipeline",), out_dirs=("workdir",))
    p.set_defaults(func=_run)
