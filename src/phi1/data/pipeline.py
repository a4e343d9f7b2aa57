"""`phi1 data run PIPELINE.yaml`: chain data stages, resumable stage by stage.

Each stage writes `<workdir>/<name>.jsonl` (a classifier stage writes
`<name>.joblib`), its report, and last a marker `<name>.done.json` holding a
fingerprint of its options and of everything upstream. A rerun skips a stage
whose marker matches; changing a stage's options reruns it and everything
after it. Outputs are written under temp names and renamed when complete, so an
interrupted stage leaves nothing a rerun could mistake for finished work.

Within a stage, parallelism is worker processes on one machine (`workers`).
Past one machine, each stage maps onto one step of an existing engine
(datatrove's executors; see docs/data.md); this runner is not a scheduler.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from phi1.utils.config import read_yaml_mapping
from phi1.errors import ConfigError, Phi1Error
from phi1.utils.io import atomic_write_json
from phi1.utils.safety import OutputLock


def _kinds() -> dict[str, Callable]:
    from phi1.data.annotate import run_annotate
    from phi1.data.classify import run_classify_score, run_classify_train
    from phi1.data.collect import run_collect
    from phi1.data.decontam import run_decontaminate
    from phi1.data.dedup import run_dedup
    from phi1.data.filter import run_filter
    from phi1.data.mine import run_mine

    return {
        "collect": run_collect, "dedup": run_dedup, "annotate": run_annotate,
        "classify-train": run_classify_train, "classify-score": run_classify_score, "filter": run_filter,
        "decontaminate": run_decontaminate, "mine-exercises": run_mine,
    }


# Options every stage accepts from the pipeline level, if its function takes them.
_SHARED = ("workers", "skip_bad_lines")
_POSITIONAL = ("input_path", "output_path", "output", "model_path")
_RUNNER_OWNED = ("quiet", "rejected", "overwrite")


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
    skip_bad_lines: bool = False
    write_rejected: bool = True
    executor: str = "local"


def load_pipeline(path: str | os.PathLike, workdir: str | None = None) -> PipelineConfig:
    """Parse and validate a pipeline YAML file; names the field and what is allowed on error."""
    path = Path(path)
    raw = read_yaml_mapping(path, "pipeline")
    allowed = {"workdir", "stages", "workers", "skip_bad_lines", "write_rejected", "executor", "description"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown top-level field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    executor = raw.get("executor", "local")
    if executor not in ("local", "datatrove"):
        raise ConfigError(f"{path}: executor {executor!r} must be 'local' or 'datatrove'")
    if executor == "datatrove":
        try:
            import datatrove  # noqa: F401
        except ImportError:
            raise ConfigError(f"{path}: executor 'datatrove' needs the datatrove package (pip install datatrove)") from None
        raise ConfigError(f"{path}: executor 'datatrove' is not wired up in this build; run with executor: local, "
                          "or wrap each stage as a datatrove step as docs/data.md describes")
    kinds = _kinds()
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
        if kind not in kinds:
            raise ConfigError(f"{where}.kind: {kind!r} is not a stage; allowed: {sorted(kinds)}")
        if name in names or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}.name: {name!r} must be unique and use only letters, digits, - and _")
        inp = st.pop("input", stages[-1].name if stages else None)
        if inp is not None and not isinstance(inp, str):
            raise ConfigError(f"{where}.input: expected a file path or a stage name (str), got {type(inp).__name__} {inp!r}")
        if kind != "collect" and inp is None:
            raise ConfigError(f"{where}.input: the first stage must be 'collect' or name an input file")
        params = inspect.signature(kinds[kind]).parameters
        for key in st:
            if key not in params or key in _POSITIONAL or key in _RUNNER_OWNED:
                ok = sorted(k for k in params if k not in _POSITIONAL and k not in _RUNNER_OWNED)
                raise ConfigError(f"{where}.{key}: not an option of stage kind {kind!r}; allowed: {ok}")
            _check_option_type(f"{path}: stage {name!r} ({kind})", key, st[key], params[key])
        names.add(name)
        stages.append(StageSpec(name, kind, inp, st))
    for key, typ, default in (("workers", int, 0), ("skip_bad_lines", bool, False), ("write_rejected", bool, True),
                              ("workdir", str, "")):
        value = raw.get(key, default)
        if not _is_type(value, typ):
            raise ConfigError(f"{path}: {key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    wd = Path(workdir or raw.get("workdir") or f"runs/{path.stem}")
    return PipelineConfig(wd, stages, raw.get("workers", 0), raw.get("skip_bad_lines", False),
                          raw.get("write_rejected", True), executor)


def _is_type(value: Any, typ: type) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


_TYPE_NAMES = {"float": float, "int": int, "bool": bool, "str": str, "os.PathLike": str, "Path": str,
               "list": list, "dict": dict}


def _check_option_type(where: str, key: str, value: Any, param: inspect.Parameter) -> None:
    """A ConfigError naming stage, field and expected type when `value` cannot be that option."""
    if isinstance(value, str) and value.startswith("@"):
        return  # another stage's output: a path, checked when resolved
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        if param.default is None or param.default is inspect.Parameter.empty:
            return
        ann = type(param.default).__name__
    if not isinstance(ann, str):
        ann = getattr(ann, "__name__", str(ann))
    allowed: list[type] = []
    nullable = False
    for part in (a.strip() for a in ann.split("|")):
        base = part.split("[", 1)[0]
        if base == "None":
            nullable = True
        elif base in _TYPE_NAMES:
            allowed.append(_TYPE_NAMES[base])
        else:
            return  # a type this check does not know: leave it to the stage
    if value is None and nullable:
        return
    if any(_is_type(value, t) for t in allowed):
        return
    names = " or ".join(dict.fromkeys(t.__name__ for t in allowed)) + (" or null" if nullable else "")
    raise ConfigError(f"{where}: option {key}: expected {names}, got {type(value).__name__} {value!r}")


def _output_of(cfg: PipelineConfig, spec: StageSpec) -> Path:
    return cfg.workdir / (f"{spec.name}.joblib" if spec.kind == "classify-train" else f"{spec.name}.jsonl")


def run_pipeline(path: str | os.PathLike, *, workdir: str | None = None, force: bool = False,
                 until: str | None = None, quiet: bool = False) -> list[dict]:
    """Run every stage not already finished with the same options; return one status dict per stage."""
    cfg = load_pipeline(path, workdir)
    by_name = {s.name: s for s in cfg.stages}
    if until is not None and until not in by_name:
        raise ConfigError(f"--until {until}: no stage of that name in {path}; stages: {', '.join(by_name)}")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with OutputLock(cfg.workdir, is_dir=True, what="pipeline workdir"):
        return _run_stages(path, cfg, by_name, force=force, until=until, quiet=quiet)


def _run_stages(path, cfg: PipelineConfig, by_name: dict, *, force: bool, until: str | None, quiet: bool) -> list[dict]:
    kinds = _kinds()
    fingerprints: dict[str, str] = {}
    results = []
    for spec in cfg.stages:
        out = _output_of(cfg, spec)
        opts = _resolve(spec.options, cfg, by_name)
        upstream = [fingerprints[v] for v in _refs(spec, by_name)]
        input_path = None
        if spec.input is not None:
            input_path = _output_of(cfg, by_name[spec.input]) if spec.input in by_name else Path(spec.input)
            if spec.input not in by_name:
                upstream.append(_file_stamp(input_path))
        fp = hashlib.sha256(json.dumps([spec.kind, opts, upstream, str(input_path)], sort_keys=True, default=str)
                            .encode()).hexdigest()[:16]
        fingerprints[spec.name] = fp
        marker = cfg.workdir / f"{spec.name}.done.json"
        # The runner owns what its markers name: a rerun may replace it (files it never wrote are still refused).
        ours = marker.exists()
        if not force and marker.exists() and out.exists():
            try:
                done = json.loads(marker.read_text())
            except json.JSONDecodeError:
                done = {}
            if done.get("fingerprint") == fp:
                if not quiet:
                    print(f"[{spec.name}] finished earlier, skipping ({out})", file=sys.stderr)
                results.append({"stage": spec.name, "status": "skipped", "output": str(out)})
                if until == spec.name:
                    break
                continue
        if not ours:
            _refuse_foreign(spec, cfg, out)
        marker.unlink(missing_ok=True)  # its output is about to change
        if not quiet:
            print(f"[{spec.name}] running {spec.kind} -> {out}", file=sys.stderr)
        t0 = time.perf_counter()
        summary = _run_stage(kinds[spec.kind], spec, cfg, input_path, out, opts, quiet, overwrite=ours)
        atomic_write_json(marker, {"stage": spec.name, "kind": spec.kind, "fingerprint": fp, "output": str(out),
                                   "seconds": round(time.perf_counter() - t0, 3), "summary": summary})
        results.append({"stage": spec.name, "status": "ran", "output": str(out), "summary": summary})
        if until == spec.name:
            break
    atomic_write_json(cfg.workdir / "pipeline.report.json", {"pipeline": str(path), "stages": results})
    return results


def _refuse_foreign(spec: StageSpec, cfg: PipelineConfig, out: Path) -> None:
    """A file in the workdir under a stage's output name that no phi1 stage wrote is never replaced."""
    from phi1.data.records import _rejected_written_by_stage, _written_by_stage

    rejected = cfg.workdir / f"{spec.name}.rejected.jsonl"
    if spec.kind == "classify-train":
        return  # the classifier file has its own sidecar; train always writes a new one
    for f, ok in ((out, _written_by_stage(out)),
                  (rejected, not cfg.write_rejected or _rejected_written_by_stage(rejected, out))):
        if f.exists() and not ok:
            raise Phi1Error(f"{f}: exists and was not written by stage {spec.name!r} of this pipeline; "
                            "move it away (or use another --workdir), then rerun")


def _refs(spec: StageSpec, by_name: dict) -> list[str]:
    refs = [spec.input] if spec.input in by_name else []
    refs += [v[1:] for v in spec.options.values() if isinstance(v, str) and v.startswith("@")]
    return refs


def _resolve(options: dict, cfg: PipelineConfig, by_name: dict) -> dict:
    """`@stage` option values name another stage's output (e.g. `classifier: "@train"`)."""
    out = {}
    for k, v in options.items():
        if isinstance(v, str) and v.startswith("@"):
            if v[1:] not in by_name:
                raise ConfigError(f"pipeline option {k}: {v!r} names no stage; stages: {sorted(by_name)}")
            v = str(_output_of(cfg, by_name[v[1:]]))
        out[k] = v
    return out


def _file_stamp(path: Path) -> str:
    if not path.exists():
        raise Phi1Error(f"{path}: pipeline input file not found")
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _run_stage(fn: Callable, spec: StageSpec, cfg: PipelineConfig, input_path, out: Path, opts: dict, quiet: bool,
               overwrite: bool = False):
    params = inspect.signature(fn).parameters
    kw = dict(opts)
    if "overwrite" in params:
        kw["overwrite"] = overwrite
    for key in _SHARED:
        if key in params and key not in kw:
            kw[key] = getattr(cfg, key)
    if "rejected" in params and cfg.write_rejected:
        kw["rejected"] = str(cfg.workdir / f"{spec.name}.rejected.jsonl")
    if "quiet" in params:
        kw["quiet"] = quiet
    if spec.kind == "collect":
        res = fn(kw.pop("sources", []), out, **kw)
    elif spec.kind == "classify-score" and "classifier" not in kw:
        raise ConfigError(f"stage {spec.name}.classifier: required; name the training stage, e.g. classifier: \"@train\"")
    else:
        res = fn(input_path, out, **kw)
    return res.to_dict() if hasattr(res, "to_dict") else res
