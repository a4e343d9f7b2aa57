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

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi1.errors import ConfigError, Phi1Error
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import atomic_write_json
from phi1.utils.safety import OutputLock, clean_stale_temps, user_entries

_TOP = {"workdir", "stages", "workers", "tasks", "skip_bad_lines", "write_rejected", "executor", "description",
        "slurm", "ray"}
# What the runner may remove from a stage directory it wrote (its stage.json proves that).
_OWNED = ("data", "rejected", "work", "logs", "manifest.json", "stage.json", "cutoff.json", "classifier.joblib",
          "classifier.joblib.json")  # not judge-cache.jsonl: keyed by prompt, model and text, it stays valid


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
    from phi1.data.steps import KINDS, stage_config

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
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not a stage; allowed: {sorted(KINDS)}")
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
        stage_config(kind, st, f"{path}: stage {name!r} ({kind})")  # "@stage" values are checked when resolved
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
    """Run every stage not already finished with the same fingerprint; one status dict per stage."""
    from phi1.utils.stagegraph import StageGraph

    cfg = load_pipeline(path, workdir)
    ec = exec_config(cfg, executor=executor, tasks=tasks, workers=workers, dry_run=dry_run, ray_address=ray_address,
                     slurm_partition=slurm_partition, quiet=quiet)
    names = [s.name for s in cfg.stages]
    if until is not None and until not in names:
        raise ConfigError(f"--until {until}: no stage of that name in {path}; stages: {', '.join(names)}")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    graph = StageGraph(pipeline_stages(cfg, ec), log=lambda msg: print(msg, file=sys.stderr))
    with OutputLock(cfg.workdir, is_dir=True, what="pipeline workdir"):
        results = [{**r, "output": str(stage_dir(cfg, r["stage"]))}
                   for r in graph.run(until=until, force=force, quiet=quiet)]
    atomic_write_json(cfg.workdir / "pipeline.report.json",
                      {"pipeline": str(path), "executor": ec.executor, "tasks": ec.tasks, "workers": ec.workers,
                       "stages": results})
    return results


def pipeline_stages(cfg: PipelineConfig, ec) -> list:
    """The pipeline's stages for the stage graph (`phi1.utils.stagegraph`): each one typed config
    (its kind's dataclass, with `@stage` references resolved to paths), the stages it reads, its
    outside input, and the datatrove blocks that carry it out. A stage's `manifest.json` records
    the fingerprint it finished with."""
    from phi1.data.engine import read_manifest
    from phi1.data.steps import classifier_path, stage_config
    from phi1.utils.stagegraph import Stage

    by_name = {s.name: s for s in cfg.stages}
    stages = []
    for spec in cfg.stages:
        sdir = stage_dir(cfg, spec.name)
        opts = {}
        for k, v in spec.options.items():
            if isinstance(v, str) and v.startswith("@"):
                ref = by_name[v[1:]]
                v = str(classifier_path(stage_dir(cfg, ref.name)) if ref.kind == "classify-train"
                        else stage_dir(cfg, ref.name))
            opts[k] = v
        external = spec.input is not None and spec.input not in by_name
        input_path = (Path(spec.input) if external else stage_dir(cfg, spec.input)) if spec.input else None
        stage_cfg = stage_config(spec.kind, opts, f"stage {spec.name!r} ({spec.kind})")
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
    from phi1.data.engine import read_manifest, run_blocks
    from phi1.data.steps import KINDS, StageContext

    _claim_stage_dir(sdir, spec, fp, ec.tasks)  # a finished stage's manifest is cleared there
    ctx = StageContext(spec.name, sdir, input_path, ec.tasks, cfg.skip_bad_lines, cfg.write_rejected, fp, spec.kind)
    blocks = KINDS[spec.kind][1](ctx, stage_cfg)
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
    if not ec.quiet:
        print(f"[{spec.name}] kept {m['kept']}, dropped {m['dropped'] or 'none'} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    return {k: m[k] for k in ("kept", "rejected", "dropped")}


def _claim_stage_dir(sdir: Path, spec: StageSpec, fp: str, tasks: int) -> None:
    """Make `sdir` this stage's: resume when it holds the same unfinished stage, clear what the runner
    wrote when options changed, refuse a directory the runner did not write."""
    marker = sdir / "stage.json"
    if sdir.exists():
        # A runner killed between creating the directory and renaming its marker into place leaves
        # only its own pid-named temporary file: that is ours to remove, not a foreign directory.
        clean_stale_temps(sdir)
        try:
            prev = json.loads(marker.read_text())
        except FileNotFoundError:
            if user_entries(sdir):
                raise Phi1Error(f"{sdir}: exists and was not written by stage {spec.name!r} of this pipeline; "
                                "move it away (or use another --workdir), then rerun") from None
            prev = None
        except json.JSONDecodeError:
            prev = {}
        if prev is not None and (prev.get("fingerprint") != fp or (sdir / "manifest.json").exists()):
            for name in _OWNED:
                p = sdir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    sdir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        atomic_write_json(marker, {"stage": spec.name, "kind": spec.kind, "fingerprint": fp, "tasks": tasks,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _refs(spec: StageSpec, by_name: dict) -> list[str]:
    refs = [spec.input] if spec.input in by_name else []
    refs += [v[1:] for v in spec.options.values() if isinstance(v, str) and v.startswith("@")]
    return refs


# ---- one stage, file in, file out: the single-stage commands --------------------------------------

def run_stage_file(kind: str, options: dict, input_path, output_path, *, rejected=None,
                   skip_bad_lines: bool = False, quiet: bool = False, overwrite: bool = False, workers: int = 0,
                   inputs=None, input_label: str | None = None, on_keep=None, on_reject=None):
    """Run one stage kind on this machine through the same blocks as `phi1 data run`, with `workers`
    tasks, and write its kept records to the JSONL file `output_path` (input order for a one-file
    input), the dropped ones to `rejected`, and `OUTPUT.report.json`. Returns (report, manifest).

    The stage works in `.OUTPUT.stage/` beside the output, which holds its shards until they are
    copied: killed, the same command resumes there (finished tasks are kept); changed options or
    input start it afresh. `on_keep(rec)` / `on_reject(rec)` see each record as it is copied."""
    from phi1.data.engine import ExecConfig, read_manifest, run_blocks
    from phi1.data.records import RecordSink, StageReport, check_input_file
    from phi1.data.shardfiles import expand_record_inputs
    from phi1.data.steps import KINDS, StageContext, stage_config
    from phi1.utils.procs import resolve_workers
    from phi1.utils.stagegraph import fingerprint

    cfg = stage_config(kind, dict(options), kind)
    inp = Path(input_path) if input_path is not None else None
    if inp is not None:
        files = expand_record_inputs([inp]) if inp.is_dir() else [check_input_file(inp)]
        bytes_in = sum(f.stat().st_size for f in files)
    else:
        bytes_in = 0
    n = resolve_workers(workers)
    report = StageReport(kind, input=input_label or str(input_path))
    out = Path(output_path)
    with RecordSink(out, report, rejected, inputs=inputs, overwrite=overwrite) as sink:
        sdir = out.parent / f".{out.name}.stage"
        fp = fingerprint(kind, {"options": cfg, "tasks": n, "skip_bad_lines": skip_bad_lines},
                         inputs=(inp,) if inp is not None else ())
        m = read_manifest(sdir)
        done = m is not None and m.get("fingerprint") == fp
        if not done:
            _claim_stage_dir(sdir, StageSpec(kind, kind, None, {}), fp, n)
        ctx = StageContext(kind, sdir, inp, n, skip_bad_lines, True, fp, kind)
        try:
            blocks = KINDS[kind][1](ctx, cfg)
            if not done:
                run_blocks(blocks, sdir / "logs", ExecConfig("local", tasks=n, workers=n, quiet=quiet), kind)
        except Phi1Error:  # bad input or options: nothing worth resuming
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        m = read_manifest(sdir)
        if m is None or m.get("fingerprint") != fp:
            raise Phi1Error(f"{kind}: finished without its manifest; see {sdir / 'logs'}")
        _copy_shards(sdir, m, sink, kind, on_keep, on_reject)
        report.dropped.update(m["dropped"])
        report.bad_lines = list(m.get("bad_lines", []))
        report.read = _records_read(m, blocks[0].name)
        report.bytes_in = bytes_in
    shutil.rmtree(sdir, ignore_errors=True)
    return report, m


def _copy_shards(sdir: Path, m: dict, sink, kind: str, on_keep, on_reject) -> None:
    from phi1.data.shardfiles import open_record_lines

    for key, keep in (("shards", True), ("rejected_shards", False)):
        for shard in m[key]:
            for line in open_record_lines(sdir / shard["path"]):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if keep:
                    if on_keep:
                        on_keep(rec)
                    sink.keep(rec)
                else:
                    rec["meta"] = {**rec.get("meta", {}), "rejected_by": kind}
                    if on_reject:
                        on_reject(rec)
                    sink.write_rejected(rec)


def _records_read(m: dict, first_block: str) -> int:
    """Records (and lines skipped) the stage read from its input: the counts of its first block's readers."""
    return sum(v for k, v in m.get("counts", {}).items()
               if k.startswith(first_block + "/") and k.endswith(("/read", "/bad_utf8", "/bad_json", "/no_text")))
