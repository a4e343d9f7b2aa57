"""What every data stage kind shares: the kind's record, where a stage reads and writes, the commit
block that finishes it, the options check, and the file-in/file-out run of one stage.

A kind module (`phi1.data.stages.<kind>`) imports this module and its own logic; this module imports
no kind and not the registry (`phi1.data.stages`), so no import circle can form through it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from datatrove.pipeline.base import PipelineStep

from phi1.data.engine import (FIRST_PASS, OUTPUT_WRITER, Block, RecordReader, RecordWriter, block_counts, renamed,
                              shard_records)
from phi1.errors import ConfigError, Phi1Error


# ---- the record a kind module exports ------------------------------------------------------------

@dataclass(frozen=True)
class DemoPlace:
    """Where a kind sits in `phi1 demo`'s data half: the stage it reads, what it does (the demo's
    stage table), the options the demo gives it when the recipe has no section for it (`defaults`),
    and those it fills in whenever the recipe's section does not give them (`always`)."""

    input: str | None
    title: str
    defaults: dict = field(default_factory=dict)
    always: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StageKind:
    """One data stage kind. `name` is its only name: the pipeline YAML's `kind`, the command
    `phi1 data NAME`, the demo recipe's `data.NAME` section and the demo's stage directory.

    The registry (`phi1.data.stages`) generates from these records the `phi1 data` commands and their
    flags (help from the config's field docs), the demo's data section and stage table, and the
    pipeline YAML schema (`phi1 data schema`)."""

    name: str
    config: type  # the kind's only config dataclass (the only place its defaults live)
    build: Callable  # build(ctx: StageContext, cfg) -> list[Block]: the datatrove blocks of one stage
    run: Callable  # run(input, output, *, cfg=None, workers=0, skip_bad_lines=False, rejected=None, quiet=False,
    #                    overwrite=False, **options): one stage, file in, file out (`phi1 data NAME`)
    help: str  # one line for `phi1 data --help`
    positional: str = "input"  # the command's positional argument: the input records, or a config field
    output: str = "out"  # the command's output flag (--out: a JSONL file; classify: --classifier FILE)
    output_help: str = "output JSONL file (its report goes to OUT.report.json)"
    derived: tuple[str, ...] = (".report.json",)  # files the command writes beside its output
    inputs: tuple[str, ...] = ()  # config fields that name files the stage reads (checked against outputs)
    outputs: tuple[str, ...] = ()  # config fields that name files the stage writes
    rejected: bool = True  # the command takes --rejected (the stage drops records)
    aliases: dict = field(default_factory=dict)  # config field -> more option strings (old flag names)
    workers_help: str = "tasks (0 = one per CPU)"
    files: tuple[str, ...] = ()  # files the stage writes in its directory besides data/, rejected/, work/, logs/
    ref: str | None = None  # what "@STAGE" resolves to: this file in the stage directory (None: the directory)
    demo: DemoPlace | None = None  # its place in `phi1 demo` (None: not part of the demo)
    report: Callable | None = None  # report(result, args): what the command prints after a run
    commands: Callable | None = None  # commands(subparsers): more `phi1 data` commands the kind brings

    def ref_path(self, stage_dir: Path) -> Path:
        return Path(stage_dir) / self.ref if self.ref else Path(stage_dir)


# ---- stage context --------------------------------------------------------------------------------

@dataclass
class StageContext:
    """Where a stage reads and writes, and how many tasks its parallel blocks use."""

    name: str
    dir: Path
    input: Path | None
    tasks: int
    skip_bad_lines: bool = False
    write_rejected: bool = True
    fingerprint: str = ""
    kind: str = ""

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    def reader(self, source: Path | None = None) -> RecordReader:
        return RecordReader(source or self.input, skip_bad_lines=self.skip_bad_lines, bad_lines_dir=self.bad_lines)

    @property
    def bad_lines(self) -> Path:
        """Where the readers of the stage's input list the lines they skipped (see `Commit`)."""
        return self.work / "bad_lines"

    def writer(self, folder: Path | None = None) -> RecordWriter:
        w = RecordWriter(folder or self.data)
        if folder is None:
            renamed(w, OUTPUT_WRITER)  # its stats (records, doc_len) are the stage's output in the manifest
        return w

    def rejected_writer(self, tag: str = "") -> RecordWriter | None:
        """Dropped records, `rejected/[TAG-]RANK.jsonl.gz` (a tag per block when several blocks drop)."""
        if not self.write_rejected:
            return None
        return renamed(RecordWriter(self.dir / "rejected", prefix=tag), "phi1 rejected writer")


class Commit(PipelineStep):
    """The last block of every stage (one task): counts the shards and writes `manifest.json`."""

    name = "commit"

    def __init__(self, ctx: StageContext, files: tuple[str, ...] = ()):
        super().__init__()
        self.ctx, self.files = ctx, tuple(files)

    def run(self, data, rank: int = 0, world_size: int = 1):
        write_manifest(self.ctx, self.files)


def write_manifest(ctx: StageContext, files: tuple[str, ...] = ()) -> None:
    from phi1.utils.io import atomic_write_json

    shards = []
    for sub in ("data", "rejected"):
        for f in sorted((ctx.dir / sub).glob("*.jsonl*")):
            shards.append({"path": f"{sub}/{f.name}", "records": shard_records(f), "bytes": f.stat().st_size})
    counts: dict[str, int] = {}
    for block_dir in sorted((ctx.dir / "logs").glob("*")):
        for k, v in block_counts(block_dir).items():
            counts[f"{block_dir.name}/{k}"] = v
    data_shards = [s for s in shards if s["path"].startswith("data/")]
    reasons: dict[str, int] = {}
    for key, n in counts.items():
        tail = key.rsplit("/", 1)[-1]
        if tail.startswith("dropped_"):
            reasons[tail[len("dropped_"):]] = reasons.get(tail[len("dropped_"):], 0) + n
        elif tail in ("bad_utf8", "bad_json", "no_text") and not key.split("/")[-2].endswith(FIRST_PASS):
            reasons[tail] = reasons.get(tail, 0) + n
    text_chars = sum(n for key, n in counts.items() if key.endswith(f"{OUTPUT_WRITER}/doc_len"))
    bad_lines: list = []
    for f in sorted(ctx.bad_lines.glob("*.jsonl")):
        bad_lines += [json.loads(line) for line in f.read_text().splitlines()]
    extra = {}
    for name in files:
        p = ctx.dir / name
        if p.exists():
            extra[name] = json.loads(p.read_text()) if p.suffix == ".json" else str(p)
    atomic_write_json(ctx.dir / "manifest.json", {
        "stage": ctx.name, "kind": ctx.kind, "fingerprint": ctx.fingerprint, "tasks": ctx.tasks,
        "kept": sum(s["records"] for s in data_shards), "text_chars": text_chars,
        "rejected": sum(s["records"] for s in shards if s["path"].startswith("rejected/")),
        "dropped": dict(sorted(reasons.items())), "shards": data_shards,
        "rejected_shards": [s for s in shards if s["path"].startswith("rejected/")],
        "bad_lines": sorted(bad_lines, key=lambda b: (b["file"], b["line"]))[:RecordReader.BAD_LINES_LISTED],
        "counts": counts, **extra})


def manifest_failures(m: dict) -> tuple[dict[str, int], int]:
    """(records a finished stage could not process, by reason; records it tried) from its manifest: the
    input lines it could not read, and the records an LLM judge could not label (`label_error`, split
    into `judge_unparsable` / `judge_failed`). Records dropped by a stage's decision are not failures."""
    from phi1.data.records import FAILURE_REASONS

    fails = {r: n for r, n in (m.get("dropped") or {}).items() if r in FAILURE_REASONS and n}
    tails: dict[str, int] = {}
    for key, n in (m.get("counts") or {}).items():
        tail = key.rsplit("/", 1)[-1]
        tails[tail] = tails.get(tail, 0) + n
    labels = sum(n for t, n in tails.items() if t.startswith("label_"))
    for reason in ("judge_unparsable", "judge_failed"):
        if tails.get(reason):
            fails[reason] = tails[reason]
    tried = labels if labels else m.get("kept", 0) + sum((m.get("dropped") or {}).values())
    return fails, tried


def commit_block(ctx: StageContext, files: tuple[str, ...] = ()) -> Block:
    """The commit block; `files` are JSON files of the stage directory copied into the manifest."""
    return Block("commit", [Commit(ctx, files)], tasks=1)


def one_block(ctx: StageContext, steps: list, name: str = "main") -> list[Block]:
    """A stage of one parallel block: read the input, `steps`, write; then commit."""
    return [Block(name, [ctx.reader(), *steps, ctx.writer()], tasks=ctx.tasks), commit_block(ctx)]


# ---- options ----------------------------------------------------------------------------------------

def check_options(cls: type, kind: str, options: dict, where: str, *, validate: bool = True):
    """The kind's config dataclass from pipeline options, naming the field and type on error
    (`validate=False`: names and types only, for a config that is completed later)."""
    known = {f.name: f for f in fields(cls)}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: not an option of stage kind {kind!r}; allowed: {sorted(known)}")
        _check_type(where, key, value, known[key])
    cfg = cls(**options)
    if validate:
        cfg.validate()
    return cfg


_CHECKS = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
           "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
           "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
           "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict),
           "None": lambda v: v is None}


def _check_type(where: str, key: str, value, f) -> None:
    if isinstance(value, str) and value.startswith("@"):
        return  # "@stage": resolved to a path by the runner
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    ok = [part.strip().split("[", 1)[0] for part in ann.split("|")]
    if any(_CHECKS.get(b, lambda v: True)(value) for b in ok):
        return
    raise ConfigError(f"{where}: option {key}: expected {' or '.join(ok)}, got {type(value).__name__} {value!r}")


# ---- a stage directory: claimed, resumed, cleared ---------------------------------------------------

# What a runner may remove from a stage directory it wrote (its stage.json proves that), besides the
# files each kind declares (`StageKind.files`). Not judge-cache.jsonl: keyed by prompt, model and text,
# it stays valid.
OWNED = ("data", "rejected", "work", "logs", "manifest.json", "stage.json")


def claim_stage_dir(sdir: Path, name: str, kind: str, fp: str, tasks: int, owned: tuple[str, ...] = ()) -> None:
    """Make `sdir` this stage's: resume when it holds the same unfinished stage, clear what the runner
    wrote when options changed, refuse a directory the runner did not write."""
    from phi1.utils.io import atomic_write_json
    from phi1.utils.safety import clean_stale_temps, user_entries

    marker = sdir / "stage.json"
    if sdir.exists():
        # A runner killed between creating the directory and renaming its marker into place leaves
        # only its own pid-named temporary file: that is ours to remove, not a foreign directory.
        clean_stale_temps(sdir)
        try:
            prev = json.loads(marker.read_text())
        except FileNotFoundError:
            if user_entries(sdir):
                raise Phi1Error(f"{sdir}: exists and was not written by stage {name!r} of this pipeline; "
                                "move it away (or use another --workdir), then rerun") from None
            prev = None
        except json.JSONDecodeError:
            prev = {}
        if prev is not None and (prev.get("fingerprint") != fp or (sdir / "manifest.json").exists()):
            for entry in (*OWNED, *owned):
                p = sdir / entry
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    sdir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        atomic_write_json(marker, {"stage": name, "kind": kind, "fingerprint": fp, "tasks": tasks,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")})


# ---- one stage, file in, file out: the single-stage commands --------------------------------------

def run_stage_file(kind: StageKind, cfg, input_path, output_path, *, rejected=None,
                   skip_bad_lines: bool = False, quiet: bool = False, overwrite: bool = False, workers: int = 0,
                   inputs=None, input_label: str | None = None, on_keep=None, on_reject=None):
    """Run one stage of `kind` (its typed, validated config `cfg`) on this machine through the same
    blocks as `phi1 data run`, with `workers` tasks, and write its kept records to the JSONL file
    `output_path` (input order for a one-file input), the dropped ones to `rejected`, and
    `OUTPUT.report.json`. Returns (report, manifest).

    The stage works in `.OUTPUT.stage/` beside the output, which holds its shards until they are
    copied: killed, the same command resumes there (finished tasks are kept); changed options or
    input start it afresh. `on_keep(rec)` / `on_reject(rec)` see each record as it is copied."""
    from phi1.data.engine import ExecConfig, read_manifest, run_blocks
    from phi1.data.records import RecordSink, StageReport, check_input_file
    from phi1.data.shardfiles import expand_record_inputs
    from phi1.utils.procs import resolve_workers
    from phi1.utils.stagegraph import fingerprint

    name = kind.name
    inp = Path(input_path) if input_path is not None else None
    if inp is not None:
        files = expand_record_inputs([inp]) if inp.is_dir() else [check_input_file(inp)]
        bytes_in = sum(f.stat().st_size for f in files)
    else:
        bytes_in = 0
    n = resolve_workers(workers)
    report = StageReport(name, input=input_label or str(input_path))
    out = Path(output_path)
    with RecordSink(out, report, rejected, inputs=inputs, overwrite=overwrite) as sink:
        sdir = out.parent / f".{out.name}.stage"
        fp = fingerprint(name, {"options": cfg, "tasks": n, "skip_bad_lines": skip_bad_lines},
                         inputs=(inp,) if inp is not None else ())
        m = read_manifest(sdir)
        done = m is not None and m.get("fingerprint") == fp
        if not done:
            claim_stage_dir(sdir, name, name, fp, n, kind.files)
        ctx = StageContext(name, sdir, inp, n, skip_bad_lines, True, fp, name)
        try:
            blocks = kind.build(ctx, cfg)
            if not done:
                run_blocks(blocks, sdir / "logs", ExecConfig("local", tasks=n, workers=n, quiet=quiet), name)
        except Phi1Error:  # bad input or options: nothing worth resuming
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        m = read_manifest(sdir)
        if m is None or m.get("fingerprint") != fp:
            raise Phi1Error(f"{name}: finished without its manifest; see {sdir / 'logs'}")
        _copy_shards(sdir, m, sink, name, on_keep, on_reject)
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


def _plain(value):
    """Paths as strings, tuples as lists: the library's callers pass them, the configs hold str and list."""
    import os

    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def config_of(kind: StageKind, cfg=None, options: dict | None = None):
    """The typed, validated config of a run function: `cfg` as given, else the kind's dataclass from
    `options` (None values keep the defaults)."""
    if cfg is None:
        given = {k: _plain(v) for k, v in (options or {}).items() if v is not None}
        cfg = check_options(kind.config, kind.name, given, kind.name, validate=False)
    cfg.validate()
    return cfg

