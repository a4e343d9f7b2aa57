"""`phi1 data run PIPELINE.yaml`: the data stages as datatrove pipelines, on this machine or a cluster.

Every stage writes a stage directory `<workdir>/<name>/` (shards + `manifest.json`, see
`phi1.data.engine`). A rerun skips a stage whose manifest carries the same fingerprint (its kind,
options, task count and everything upstream); changing a stage's options reruns it and everything
after it. Inside a stage datatrove's completion markers skip finished tasks, so a rerun after a kill
loses and duplicates nothing.

Executors: `local` (default; `workers` processes on this machine), `ray` (an existing Ray cluster,
`--ray-address`), `slurm` (sbatch job arrays chained by dependencies; `--dry-run` writes the job
scripts without submitting). `datatrove` is accepted as another name for `local`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi1.errors import ConfigError, Phi1Error
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import atomic_write_json
from phi1.utils.safety import OutputLock, claim_output_dir


@dataclass
class StageSpec:
    name: str
    kind: str
    input: str | None
    options: dict[str, Any]


@dataclass
class PipelineConfig:
    workdir: Path
    stages: list[StageSpec]
    workers: int = 0
    tasks: int = 0
    skip_bad_lines: bool = False
    write_rejected: bool = True
    executor: str = "local"
    slurm: dict = field(default_factory=dict)
    ray: dict = field(default_factory=dict)


def _is(value: Any, typ: type) -> bool:
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def load_pipeline(path: str | os.PathLike, workdir: str | None = None) -> PipelineConfig:
    """Parse and validate a pipeline YAML file; names the field and what is allowed on error."""
    path = Path(path)
    return parse_pipeline(read_yaml_mapping(path, "pipeline"), path, workdir)


def parse_pipeline(raw: dict, path: str | os.PathLike, workdir: str | None = None) -> PipelineConfig:
    """A pipeline from its mapping (what the YAML file holds); `path` names it in errors."""
    from phi1.data import stages as registry
    from phi1.data.stages.base import check_options

    path = Path(path)
    unknown = set(raw) - _TOP
    if unknown:
        raise ConfigError(f"{path}: unknown top-level field(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    executor = raw.get("executor", "local")
    if executor == "datatrove":
        executor = "local"
    if executor not in ("local", "ray", "slurm"):
        raise ConfigError(f"{path}: executor {executor!r} must be local, ray or slurm (datatrove = local)")
    for key, typ, default in (("workers", int, 0), ("tasks", int, 0), ("skip_bad_lines", bool, False),
                              ("write_rejected", bool, True), ("workdir", str, ""), ("slurm", dict, {}),
                              ("ray", dict, {})):
        value = raw.get(key, default)
        if not _is(value, typ) or (typ is int and value < 0):
            raise ConfigError(f"{path}: {key}: expected {typ.__name__}{' >= 0' if typ is int else ''}, "
                              f"got {type(value).__name__} {value!r}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list")
    stages: list[StageSpec] = []
    names: set[str] = set()
    for i, st in enumerate(stages_raw):
        where = f"{path}: stages[{i}]"
        if not isinstance(st, dict) or "name" not in st:
            raise ConfigError(f"{where}: each stage is a mapping with at least 'name'")
        st = dict(st)
        name = str(st.pop("name"))
        kind = str(st.pop("kind", name))
        kind_rec = registry.get(kind, f"{where}.kind")
        if name in names or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}.name: {name!r} must be unique and use only letters, digits, - and _")
        inp = st.pop("input", stages[-1].name if stages else None)
        if inp is not None and not isinstance(inp, str):
            raise ConfigError(f"{where}.input: expected a path or a stage name (str), got {type(inp).__name__} {inp!r}")
        if kind != "collect" and inp is None:
            raise ConfigError(f"{where}.input: the first stage must be 'collect' or name an input")
        for k, v in st.items():
            if isinstance(v, str) and v.startswith("@") and v[1:] not in names:
                raise ConfigError(f"{where}.{k}: {v!r} names no earlier stage; earlier stages: {sorted(names)}")
        check_options(kind_rec.config, kind, st, f"{path}: stage {name!r} ({kind})")  # "@stage" values: when resolved
        names.add(name)
        stages.append(StageSpec(name, kind, inp, st))
    wd = Path(workdir or raw.get("workdir") or f"runs/{path.stem}")
    return PipelineConfig(wd, stages, raw.get("workers", 0), raw.get("tasks", 0), raw.get("skip_bad_lines", False),
                          raw.get("write_rejected", True), executor, dict(raw.get("slurm", {})), dict(raw.get("ray", {})))


def exec_config(cfg: PipelineConfig, *, executor: str | None = None, tasks: int | None = None,
                workers: int | None = None, dry_run: bool = False, ray_address: str | None = None,
                slurm_partition: str | None = None, quiet: bool = False):
    from phi1.data.engine import ExecConfig

    n_cpu = os.cpu_count() or 1
    w = workers if workers is not None else (cfg.workers or n_cpu)
    t = tasks if tasks is not None else (cfg.tasks or w)
    s = cfg.slurm
    ec = ExecConfig(executor=("local" if executor == "datatrove" else executor) or cfg.executor, tasks=t, workers=w,
                    ray_address=ray_address or cfg.ray.get("address"), cpus_per_task=int(s.get("cpus_per_task", 1)),
                    slurm_partition=slurm_partition or s.get("partition"), slurm_time=str(s.get("time", "12:00:00")),
                    slurm_mem_per_cpu_gb=int(s.get("mem_per_cpu_gb", 2)), slurm_env_command=s.get("env_command"),
                    slurm_sbatch_args=dict(s.get("sbatch_args", {})), dry_run=dry_run, quiet=quiet)
    ec.validate()
    return ec


def stage_dir(cfg: PipelineConfig, name: str) -> Path:
    return cfg.workdir / name


def run_pipeline(path: str | os.PathLike, *, workdir: str | None = None, force: bool = False,
                 until: str | None = None, quiet: bool = False, executor: str | None = None,
                 tasks: int | None = None, workers: int | None = None, dry_run: bool = False,
                 ray_address: str | None = None, slurm_partition: str | None = None) -> list[dict]:
    """Run every stage not already finished with the same fingerprint; one status dict per stage.
    `dry_run`: print the plan (`plan_pipeline`) and run nothing; slurm also writes its job scripts."""
    from phi1.utils.stagegraph import StageGraph

    cfg = load_pipeline(path, workdir)
    ec = exec_config(cfg, executor=executor, tasks=tasks, workers=workers, dry_run=dry_run, ray_address=ray_address,
                     slurm_partition=slurm_partition, quiet=quiet)
    names = [s.name for s in cfg.stages]
    if until is not None and until not in names:
        raise ConfigError(f"--until {until}: no stage of that name in {path}; stages: {', '.join(names)}")
    if dry_run:
        plan = plan_pipeline(cfg, ec, until=until, force=force)
        print(format_plan(path, cfg, ec, plan))
        if ec.executor != "slurm":
            return plan
    _claim_workdir(cfg)
    graph = StageGraph(pipeline_stages(cfg, ec), log=lambda msg: print(msg, file=sys.stderr))
    with OutputLock(cfg.workdir, is_dir=True, what="pipeline workdir"):
        results = [{**r, "output": str(stage_dir(cfg, r["stage"]))}
                   for r in graph.run(until=until, force=force, quiet=quiet)]
    atomic_write_json(cfg.workdir / "pipeline.report.json",
                      {"pipeline": str(path), "executor": ec.executor, "tasks": ec.tasks, "workers": ec.workers,
                       "stages": results})
    return results


def plan_pipeline(cfg: PipelineConfig, ec, *, until: str | None = None, force: bool = False) -> list[dict]:
    """What `run_pipeline` would do, writing and running nothing: per stage its kind, whether it is
    finished (`done`) or would run, what it reads, where it writes, and its blocks with their tasks."""
    import tempfile

    from phi1.data import stages as registry
    from phi1.data.stages.base import StageContext
    from phi1.utils.stagegraph import StageGraph

    stages = pipeline_stages(cfg, ec)
    plan = StageGraph(stages).plan(until=until, force=force)
    for entry, st, spec in zip(plan, stages, cfg.stages):
        sdir = stage_dir(cfg, spec.name)
        with tempfile.TemporaryDirectory(prefix="phi1-plan-") as scratch:  # what building the blocks writes
            ctx = StageContext(spec.name, Path(scratch), Path(st.config["input"]) if spec.input else None, ec.tasks,
                               cfg.skip_bad_lines, cfg.write_rejected, entry["fingerprint"], spec.kind)
            blocks = registry.get(spec.kind).build(ctx, st.config["options"])
        entry.update(kind=spec.kind, input=st.config["input"] if spec.input else None, output=str(sdir),
                     reads=[f"@{a}" for a in st.after if a != spec.input],
                     blocks=[{"name": b.name, "tasks": b.tasks} for b in blocks])
    return plan


def format_plan(path, cfg: PipelineConfig, ec, plan: list[dict]) -> str:
    """The plan as the dry run prints it."""
    what = "writes the slurm job scripts, submits nothing" if ec.executor == "slurm" else "nothing runs"
    lines = [f"plan of {path} (dry run: {what})",
             f"executor {ec.executor}; {ec.tasks} task(s) per parallel block, {ec.workers} at once; "
             f"workdir {cfg.workdir}"]
    for i, e in enumerate(plan, 1):
        lines.append(f"[{i}/{len(plan)}] {e['stage']} ({e['kind']}): {e['status']}")
        lines.append(f"    input:  {e['input'] or '(its own sources)'}"
                     + (f"; also reads {', '.join(e['reads'])}" if e["reads"] else ""))
        lines.append(f"    output: {e['output']}")
        lines.append("    blocks: " + ", ".join(f"{b['name']} x{b['tasks']}" for b in e["blocks"]))
    return "\n".join(lines)


def _claim_workdir(cfg: PipelineConfig) -> None:
    """The workdir is new, empty, or a pipeline's (its marker names `data run`); one that holds only
    this pipeline's stage folders (each with its own claim, checked per stage) is adopted."""
    from phi1.utils.safety import read_marker, user_entries

    wd = Path(cfg.workdir)
    ours = {s.name for s in cfg.stages} | {"pipeline.report.json"}
    adopt = wd.is_dir() and read_marker(wd) is None and set(user_entries(wd)) <= ours
    claim_output_dir(wd, "data run", flag="workdir", overwrite=adopt)


def pipeline_stages(cfg: PipelineConfig, ec) -> list:
    """The pipeline's stages for the stage graph (`phi1.utils.stagegraph`): each one typed config
    (its kind's dataclass, with `@stage` references resolved to paths), the stages it reads, its
    outside input, and the datatrove blocks that carry it out. A stage's `manifest.json` records
    the fingerprint it finished with."""
    from phi1.data import stages as registry
    from phi1.data.engine import read_manifest
    from phi1.data.stages.base import check_options
    from phi1.utils.stagegraph import Stage

    by_name = {s.name: s for s in cfg.stages}
    stages = []
    for spec in cfg.stages:
        sdir = stage_dir(cfg, spec.name)
        opts = {}
        for k, v in spec.options.items():
            if isinstance(v, str) and v.startswith("@"):
                ref = by_name[v[1:]]
                v = str(registry.get(ref.kind).ref_path(stage_dir(cfg, ref.name)))
            opts[k] = v
        external = spec.input is not None and spec.input not in by_name
        input_path = (Path(spec.input) if external else stage_dir(cfg, spec.input)) if spec.input else None
        stage_cfg = check_options(registry.get(spec.kind).config, spec.kind, opts, f"stage {spec.name!r} ({spec.kind})")
        config = {"kind": spec.kind, "options": stage_cfg, "input": str(input_path), "tasks": ec.tasks,
                  "skip_bad_lines": cfg.skip_bad_lines, "write_rejected": cfg.write_rejected}

        def finished(fp, sdir=sdir):
            m = read_manifest(sdir)
            return m is not None and m.get("fingerprint") == fp

        stages.append(Stage(
            spec.name, spec.kind, config, after=tuple(_refs(spec, by_name)),
            inputs=(input_path,) if external else (),
            run=lambda fp, spec=spec, sdir=sdir, stage_cfg=stage_cfg, input_path=input_path:
                _run_data_stage(cfg, ec, spec, sdir, stage_cfg, input_path, fp),
            finished=None if ec.executor == "slurm" else finished))
    return stages


def _run_data_stage(cfg: PipelineConfig, ec, spec: StageSpec, sdir: Path, stage_cfg, input_path, fp: str) -> dict:
    from phi1.data import stages as registry
    from phi1.data.engine import read_manifest, run_blocks
    from phi1.data.stages.base import StageContext, claim_stage_dir

    kind = registry.get(spec.kind)
    claim_stage_dir(sdir, spec.name, spec.kind, fp, ec.tasks, kind.files)  # a finished stage's manifest is cleared
    ctx = StageContext(spec.name, sdir, input_path, ec.tasks, cfg.skip_bad_lines, cfg.write_rejected, fp, spec.kind)
    blocks = kind.build(ctx, stage_cfg)
    if not ec.quiet:
        print(f"[{spec.name}] {spec.kind}: {len(blocks)} block(s), {ec.tasks} task(s) on {ec.executor} -> {sdir}",
              file=sys.stderr)
    t0 = time.perf_counter()
    run_blocks(blocks, sdir / "logs", ec, spec.name)
    if ec.executor == "slurm":
        return {"submitted": True}
    m = read_manifest(sdir)
    if m is None or m.get("fingerprint") != fp:
        raise Phi1Error(f"[{spec.name}] finished without its manifest; see {sdir / 'logs'}")
    from phi1.data.records import all_failed_error, could_not_process
    from phi1.data.stages.base import manifest_failures

    fails, tried = manifest_failures(m)
    if not ec.quiet:
        print(f"[{spec.name}] kept {m['kept']}, dropped {m['dropped'] or 'none'}{could_not_process(fails)} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    error = all_failed_error(f"[{spec.name}] ", fails, tried, f"manifest: {sdir / 'manifest.json'}")
    if error is not None:
        raise error
    return {k: m[k] for k in ("kept", "rejected", "dropped")}


def _refs(spec: StageSpec, by_name: dict) -> list[str]:
    refs = [spec.input] if spec.input in by_name else []
    refs += [v[1:] for v in spec.options.values() if isinstance(v, str) and v.startswith("@")]
    return refs


# ---- the pipeline YAML's JSON Schema, generated from the registry ----------------------------------

_TOP_SCHEMA = {
    "workdir": ({"type": "string"}, "where the stage directories go (default runs/<file name>)"),
    "description": ({"type": "string"}, "what the pipeline does"),
    "executor": ({"enum": ["local", "ray", "slurm", "datatrove"]}, "where tasks run (datatrove = local)"),
    "workers": ({"type": "integer", "minimum": 0}, "tasks running at once (0 = one per CPU)"),
    "tasks": ({"type": "integer", "minimum": 0}, "tasks per parallel block (0 = workers)"),
    "skip_bad_lines": ({"type": "boolean"}, "count and skip malformed JSONL lines instead of failing"),
    "write_rejected": ({"type": "boolean"}, "write <stage>/rejected/ beside each stage's data"),
    "slurm": ({"type": "object"}, "partition, time, cpus_per_task, mem_per_cpu_gb, env_command, sbatch_args"),
    "ray": ({"type": "object"}, "address of a running Ray cluster"),
}
_TOP = {*_TOP_SCHEMA, "stages"}


def _type_schema(tp) -> dict:
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, type(int | None)):
        options = [_type_schema(a) for a in args]
        return {"anyOf": options}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0]) if args else {}}
    if origin is typing.Literal:
        return {"enum": list(args)}
    return {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"}, str: {"type": "string"},
            dict: {"type": "object"}, type(None): {"type": "null"}}.get(origin or tp, {})


def kind_schema(kind) -> dict:
    """The JSON Schema of one stage of `kind`: name, kind, input, and the kind's config fields (a
    string starting with @ names an earlier stage's output)."""
    import dataclasses
    import typing

    from phi1.utils.config import field_default, field_docs

    hints, docs = typing.get_type_hints(kind.config), field_docs(kind.config)
    props: dict = {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "the stage's name"},
                   "kind": {"const": kind.name}, "input": {"type": ["string", "null"],
                                                           "description": "an earlier stage's name or a path"}}
    for f in dataclasses.fields(kind.config):
        sch = _type_schema(hints[f.name])
        sch = {"anyOf": [sch, {"type": "string", "pattern": "^@"}]} if sch.get("type") != "string" else sch
        default = field_default(f)
        if default is not dataclasses.MISSING:
            sch["default"] = default
        if docs.get(f.name):
            sch["description"] = docs[f.name]
        props[f.name] = sch
    return {"type": "object", "description": kind.help, "properties": props, "required": ["name"],
            "additionalProperties": False}


def pipeline_schema() -> dict:
    """The JSON Schema (2020-12) of a pipeline YAML, generated from the stage kinds' records: a stage
    whose `kind` is left out takes its name as its kind."""
    from phi1.data import stages as registry

    kinds = registry.kinds()
    branches = []
    for name in kinds:
        is_kind = {"anyOf": [{"required": ["kind"], "properties": {"kind": {"const": name}}},
                             {"not": {"required": ["kind"]}, "properties": {"name": {"const": name}}}]}
        branches.append({"if": is_kind, "then": {"$ref": f"#/$defs/{name}"}})
    stage = {"type": "object", "required": ["name"],
             "properties": {"kind": {"enum": sorted(kinds)}},
             "anyOf": [{"required": ["kind"]}, {"properties": {"name": {"enum": sorted(kinds)}}}],
             "allOf": branches}
    props = {k: {**sch, "description": doc} for k, (sch, doc) in _TOP_SCHEMA.items()}
    props["stages"] = {"type": "array", "minItems": 1, "items": stage}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "phi1 data pipeline",
            "type": "object", "required": ["stages"], "properties": props, "additionalProperties": False,
            "$defs": {name: kind_schema(k) for name, k in kinds.items()}}
