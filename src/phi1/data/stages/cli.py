"""`phi1 data <kind>` for every stage kind of the registry, generated from its record: the input
argument, the output flag, one flag per config field (help from the field's doc, default from the
dataclass: `phi1.utils.config.add_config_flags`), --workers, --rejected, --skip-bad-lines, --quiet,
--overwrite; and `phi1 data run` (a pipeline YAML) and `phi1 data schema` (its JSON Schema)."""

from __future__ import annotations

import json
from functools import partial

from phi1.data import stages as registry
from phi1.utils.cliio import declare_io

INPUT_HELP = "input JSONL file or stage directory (records with id, text, meta)"


def add_kind_command(sub, kind) -> None:
    """The command `phi1 data KIND.name`, its flags generated from `KIND.config`."""
    from phi1.utils.config import add_config_flags, field_docs

    p = sub.add_parser(kind.name, help=kind.help, description=f"{kind.help}. "
                       f"Flags left out keep the defaults of {kind.config.__name__}; "
                       f"in a pipeline YAML the same fields are a stage's options (kind: {kind.name}).")
    skip: tuple[str, ...] = ()
    if kind.positional == "input":
        p.add_argument("input", help=INPUT_HELP)
    else:
        skip = (kind.positional,)
        p.add_argument(kind.positional, nargs="*", help=field_docs(kind.config).get(kind.positional, ""))
    p.add_argument("--" + kind.output.replace("_", "-"), dest=kind.output, required=True, help=kind.output_help)
    if kind.rejected:
        p.add_argument("--rejected", help="also write the dropped records (with the reason in meta) to this file")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed JSONL lines (counted) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    p.add_argument("--workers", type=int, help=kind.workers_help)
    add_config_flags(p, kind.config, skip=skip, aliases=kind.aliases)
    outputs = (kind.output, *(("rejected",) if kind.rejected else ()), *kind.outputs)
    declare_io(p, inputs=(kind.positional, *kind.inputs), outputs=outputs, derived={kind.output: kind.derived},
               overwrite=True)
    p.set_defaults(func=partial(run_kind_command, kind.name))


def run_kind_command(name: str, args) -> int:
    """Run one stage kind from its parsed flags: the typed config, then the kind's run function."""
    from phi1.utils.config import config_from_args

    kind = registry.get(name)
    if getattr(args, "benchmark_files", None) and getattr(args, "benchmarks", "") is None:
        args.benchmarks = []  # a benchmark file alone means no built-in benchmark
    cfg = config_from_args(kind.config, args, where=name)
    kw = dict(cfg=cfg, skip_bad_lines=args.skip_bad_lines, quiet=args.quiet, overwrite=args.overwrite)
    if args.workers is not None:
        kw["workers"] = args.workers
    if kind.rejected:
        kw["rejected"] = args.rejected
    result = kind.run(getattr(args, kind.positional), getattr(args, kind.output), **kw)
    if kind.report:
        kind.report(result, args)
    return 0


def _run(args) -> int:
    from phi1.data.pipeline import run_pipeline

    res = run_pipeline(args.pipeline, workdir=args.workdir, force=args.force, until=args.until, quiet=args.quiet,
                       executor=args.executor, tasks=args.tasks, workers=args.workers, dry_run=args.dry_run,
                       ray_address=args.ray_address, slurm_partition=args.slurm_partition)
    if args.dry_run and all("blocks" in r for r in res):  # the plan is printed already
        return 0
    for r in res:
        print(f"{r['stage']}: {r['status']} -> {r['output']}")
    return 0


def _schema(args) -> int:
    from phi1.data.pipeline import pipeline_schema
    from phi1.utils.io import atomic_write_text

    text = json.dumps(pipeline_schema(), indent=2) + "\n"
    if args.out:  # checked by the command's WritePlan (phi1.utils.writes) before this runs
        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    return 0


def register_data(sub, only: str | None = None) -> None:
    """The `phi1 data` commands; with `only` (the command being run), that one alone, so that `phi1
    data run` or `phi1 data dedup` imports no other stage kind."""
    if only is None or only not in ("run", "schema"):
        named = only is not None and only in registry.builtin_names()
        for kind in [registry.get(only)] if named else registry.kinds().values():
            add_kind_command(sub, kind)
            if kind.commands:
                kind.commands(sub)
        if named:
            return

    p = sub.add_parser("run", help="run a data pipeline YAML, resuming finished stages")
    p.add_argument("pipeline", help="pipeline YAML (see recipes/data-demo.yaml; its schema: phi1 data schema)")
    p.add_argument("--workdir", help="override the pipeline's workdir")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--until", help="stop after this stage")
    p.add_argument("--executor", choices=("local", "ray", "slurm", "datatrove"),
                   help="where tasks run (default: the pipeline's executor, else local; datatrove = local)")
    p.add_argument("--tasks", type=int, help="tasks per parallel block (default: the pipeline's, else --workers)")
    p.add_argument("--workers", type=int, help="tasks running at once (default: the pipeline's, else one per CPU)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: the pipeline's ray.address, else auto)")
    p.add_argument("--slurm-partition", help="the partition sbatch jobs go to (or the pipeline's slurm.partition)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, blocks, tasks, inputs, outputs) "
                   "and run nothing; slurm also writes the job scripts, submitting nothing")
    p.add_argument("--quiet", action="store_true")
    declare_io(p, inputs=("pipeline",), out_dirs=("workdir",))
    p.set_defaults(func=_run)

    p = sub.add_parser("schema", help="the JSON Schema of a pipeline YAML (every stage kind and its options)")
    p.add_argument("--out", help="write it to this file (default: stdout); editors validate YAML with it")
    declare_io(p, outputs=("out",), overwrite=True)
    p.set_defaults(func=_schema)
