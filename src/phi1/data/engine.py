"""The data engine: phi1's stages as datatrove pipelines, run by datatrove's executors.

A stage is a list of *blocks*; a block is one datatrove pipeline (reader, our steps, writer) run as
`tasks` independent tasks. Most stages are one block; global work (MinHash dedup, the annotation
sample, the score cut-off) is several blocks in a row, each waiting for the one before. The last block
of every stage is `Commit`, one task that writes `manifest.json`: a stage is finished exactly when
its manifest exists with the stage's fingerprint.

A stage directory holds:

    data/00000.jsonl.gz ...      kept records, one shard per task ({"id", "text", "meta"} per line)
    rejected/00000.jsonl.gz ...  dropped records with meta.reject_reason (when rejected are kept)
    work/                        intermediate files of global blocks (signatures, buckets, samples)
    logs/<block>/                datatrove's logging dirs: completions/, stats/, logs/
    stage.json                   what is being built here (fingerprint, tasks), written first
    manifest.json                written last: shards, record counts, counts per reason

Resume: datatrove skips every task whose completion marker exists, and a task that did not complete is
rerun from its start and rewrites its own shard files, so a rerun after kill -9 loses and duplicates
nothing. Executors: `local` (a process pool on this machine), `ray` (a running Ray cluster), `slurm`
(sbatch job arrays chained by dependencies; `dry_run` writes the job scripts without submitting).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from phi1.errors import ConfigError, Phi1Error
from phi1.utils.procs import worker_guard

os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
os.environ.setdefault("DATATROVE_COLORIZE_LOG_FILES", "0")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

SHARD_NAME = "${rank}.jsonl.gz"
EXECUTORS = ("local", "ray", "slurm")
# Metadata datatrove's readers and filters add, which is not part of a phi1 record.
_DT_META = ("file_path", "filter_reason")


# ---- records <-> datatrove Documents -------------------------------------------------------------

def document_to_record(doc: Document) -> dict:
    meta = {k: v for k, v in doc.metadata.items() if k not in _DT_META}
    if "filter_reason" in doc.metadata:
        meta["reject_reason"] = doc.metadata["filter_reason"]
    return {"id": doc.id, "text": doc.text, "meta": meta}


def _write_adapter(self, doc: Document) -> dict:
    return document_to_record(doc)


GZIP_LEVEL = 6
"""The gzip level of stage shards: gzip's own default. Python's GzipFile (and so datatrove's stock
writer) uses 9, which is 2.5x slower to write code JSONL for 1% smaller files."""
SHARD_COMPRESSION = "phi1-gzip"


def _gzip_shard(f, mode="rb", **kwargs):
    import gzip

    return gzip.GzipFile(fileobj=f, mode=mode, **({"compresslevel": GZIP_LEVEL} if "w" in mode else {}), **kwargs)


def _register_shard_compression() -> None:
    from fsspec.compression import register_compression

    # no file extension: reading any .gz still infers fsspec's own gzip
    register_compression(SHARD_COMPRESSION, _gzip_shard, [], force=True)


_register_shard_compression()


class RecordWriter(JsonlWriter):
    """Writes phi1 records, one gzip JSONL shard per task: `FOLDER/00003.jsonl.gz` (gzip level
    `GZIP_LEVEL`)."""

    name = "phi1 records writer"

    def __init__(self, folder: str | os.PathLike, compression: str | None = "gzip", prefix: str = ""):
        self.gzip = compression == "gzip"
        super().__init__(str(folder), output_filename=SHARD_NAME if self.gzip else "${rank}.jsonl",
                         compression=SHARD_COMPRESSION if self.gzip else compression, adapter=_write_adapter)
        self.prefix = f"{prefix}-" if prefix else ""

    def _get_output_filename(self, document, rank: int | str = 0, **kwargs) -> str:
        ext = ".jsonl.gz" if self.gzip else ".jsonl"
        r = f"{int(rank):05d}" if str(rank).isdigit() else str(rank)  # datatrove asks with "XXXXX" for its stats
        return f"{self.prefix}{r}{ext}"


class RecordReader(JsonlReader):
    """Reads phi1 records from a stage directory (its `data/` shards), a shard folder, or one file.

    Lines are decoded strictly: a line that is not UTF-8 or not a JSON object fails the task with
    `file:line`, or with `skip_bad_lines` is skipped and counted (`bad_utf8`, `bad_json`, `no_text`);
    the first skipped lines of each task are listed in `BAD_LINES_DIR/RANK.jsonl` when that is set.

    With at least as many files as tasks, file i goes to task i mod tasks (datatrove's sharding).
    With fewer, every uncompressed file is cut into `tasks` byte ranges (a line belongs to the range
    its first byte is in) and piece i goes to task i mod tasks: one big JSONL file is read by every
    task, and the shards of a one-file input, in task order, hold its records in input order.
    """

    name = "phi1 records reader"
    BAD_LINES_LISTED = 20

    def __init__(self, source: str | os.PathLike, skip_bad_lines: bool = False,
                 bad_lines_dir: str | os.PathLike | None = None):
        folder, glob, recursive = _reader_layout(Path(source))
        super().__init__(str(folder), glob_pattern=glob, recursive=recursive, add_file_path=False,
                         compression="infer")
        self.skip_bad_lines = skip_bad_lines
        self.bad_lines_dir = Path(bad_lines_dir) if bad_lines_dir else None
        self._bad: list[dict] = []

    def pieces(self, rank: int, world_size: int) -> list[tuple[str, int, int | None]]:
        """This task's (file, first byte, end byte or None) pieces."""
        files = self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern)
        if len(files) >= world_size:
            return [(f, 0, None) for f in files[rank::world_size]]
        all_pieces: list[tuple[str, int, int | None]] = []
        for f in files:
            if f.endswith((".jsonl", ".json")):
                size = self.data_folder.size(f)
                all_pieces += [(f, size * k // world_size, size * (k + 1) // world_size) for k in range(world_size)]
            else:  # compressed: read whole, by one task
                all_pieces.append((f, 0, None))
        return all_pieces[rank::world_size]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        self._bad = []
        for filepath, lo, hi in self.pieces(rank, world_size):
            self.stat_update("input_files")
            for doc in self._read_piece(filepath, lo, hi):
                self.update_doc_stats(doc)
                yield doc
        if self._bad and self.bad_lines_dir is not None:
            from phi1.utils.io import atomic_write

            self.bad_lines_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.bad_lines_dir / f"{rank:05d}.jsonl", "w") as fh:
                fh.write("".join(json.dumps(b) + "\n" for b in self._bad))

    def read_file(self, filepath: str):
        return self._read_piece(filepath, 0, None)

    def _lines(self, filepath: str, lo: int, hi: int | None):
        """(line number, raw line) of the lines that start in [lo, hi)."""
        if hi is None:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as fh:
                yield from enumerate(fh, 1)
            return
        with self.data_folder.open(filepath, "rb") as fh:
            lineno, pos = 0, 0
            if lo > 0:
                while pos < lo - 1:  # lines before this range, for `file:line` and default ids
                    block = fh.read(min(1 << 23, lo - 1 - pos))
                    lineno += block.count(b"\n")
                    pos += len(block)
                pos += 1
                if fh.read(1) != b"\n":  # inside a line that an earlier range reads: skip its rest
                    pos += len(fh.readline())
                lineno += 1
            while pos < hi:
                raw = fh.readline()
                if not raw:
                    break
                lineno += 1
                pos += len(raw)
                yield lineno, raw

    def _read_piece(self, filepath: str, lo: int, hi: int | None):
        from phi1.data.records import SKIP_HINT, parse_object_line

        for lineno, raw in self._lines(filepath, lo, hi):
            if not raw.strip():
                continue
            rec, kind, why = parse_object_line(raw)
            if rec is not None and not isinstance(rec.get("text"), str):
                kind, why = "no_text", "record has no string 'text'"
            if why is not None:
                if not self.skip_bad_lines:
                    raise Phi1Error(f"{self.data_folder.resolve_paths(filepath)}:{lineno}: {why}; "
                                    f"fix the line or {SKIP_HINT}")
                self.stat_update(kind)
                if len(self._bad) < self.BAD_LINES_LISTED:
                    self._bad.append({"file": self.data_folder.resolve_paths(filepath), "line": lineno, "error": why})
                continue
            meta = rec.get("meta")
            doc = Document(text=rec["text"], id=str(rec.get("id", f"{Path(filepath).name}:{lineno}")),
                           metadata=dict(meta) if isinstance(meta, dict) else {})
            self.stat_update("read")
            yield doc


def _reader_layout(source: Path) -> tuple[Path, str, bool]:
    """(folder, glob, recursive): one file; a stage directory's data/; a folder of shards, written by an
    earlier block when it does not exist yet; or any directory of .jsonl / .jsonl.gz files."""
    if source.is_file():
        return source.parent, source.name, False
    if (source / "stage.json").is_file() or (source / "data").is_dir():
        return source / "data", "*.jsonl*", False
    if not source.exists():
        return source, "*.jsonl*", False
    return source, "**/*.jsonl*", True


def read_manifest(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---- a step every pipeline starts with: workers die with their parent -----------------------------

class DieWithParent(PipelineStep):
    """First step of every local pipeline: a pool worker exits when the process that started it dies."""

    name = "die with parent"

    def __init__(self):
        super().__init__()
        self.main_pid = os.getpid()

    def run(self, data, rank: int = 0, world_size: int = 1):
        if os.getpid() != self.main_pid and os.getppid() == self.main_pid:
            worker_guard(self.main_pid)
        return data  # None for the first step: steps that must start a pipeline (MinHash buckets) still can


# ---- helpers for the steps of a stage ---------------------------------------------------------------

OUTPUT_WRITER = "phi1 stage output"  # the name of a stage's output writer in its stats (the manifest's text_chars)
FIRST_PASS = "(first pass)"


def renamed(step, name: str):
    """`step` under another name in its stats (datatrove names a step's stats when it is built)."""
    from datatrove.utils.stats import Stats

    step.name = name
    step.stats = Stats(str(step))
    return step


def first_pass(reader: RecordReader) -> RecordReader:
    """A reader of a block that reads the stage's input before the block that keeps or drops: the
    lines it skips are counted and listed once, by the later reader, in the manifest."""
    reader.bad_lines_dir = None
    return renamed(reader, f"{reader.name} {FIRST_PASS}")


def one_thread_per_task() -> None:
    """torch on one thread in a task: the parallelism is the tasks, and a forked worker whose parent had
    used torch's OpenMP pool hangs in its first parallel op otherwise."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# ---- blocks and executors -------------------------------------------------------------------------

@dataclass
class Block:
    """One datatrove pipeline run as `tasks` tasks; `name` is its logging folder under the stage's logs/."""

    name: str
    pipeline: list
    tasks: int = 1


@dataclass
class ExecConfig:
    """How blocks run. `workers` caps concurrent tasks (local and ray); slurm options only for slurm."""

    executor: str = "local"
    tasks: int = 1
    workers: int = 1
    ray_address: str | None = None
    cpus_per_task: int = 1
    slurm_partition: str | None = None
    slurm_time: str = "12:00:00"
    slurm_mem_per_cpu_gb: int = 2
    slurm_env_command: str | None = None
    slurm_sbatch_args: dict = field(default_factory=dict)
    dry_run: bool = False
    quiet: bool = False
    slurm_after: str | None = None  # the job id the next submitted block waits for (the previous stage's last)

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor {self.executor}: must be one of {', '.join(EXECUTORS)}")
        for key in ("tasks", "workers", "cpus_per_task"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{key.replace('_', '-')} {v!r}: must be a whole number >= 1")
        if self.executor == "slurm" and not self.slurm_partition and not self.dry_run:
            raise ConfigError("--executor slurm needs --slurm-partition NAME (or --dry-run to only write the job scripts)")
        self.check_available()

    def check_available(self) -> None:
        """The executor's own software is here, checked before any stage folder is made: Ray's package
        for `ray`, Slurm's `sbatch` for `slurm` (not needed for a dry run)."""
        import shutil

        if self.executor == "ray":
            try:
                import ray  # noqa: F401 (the package Ray tasks need; raises the error the CLI turns into one line)
            except ImportError:
                raise ConfigError("--executor ray needs the package ray (not installed; pip install 'phi1[ray]'), "
                                  "or use --executor local") from None
        if self.executor == "slurm" and not self.dry_run and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: sbatch not found on PATH (Slurm is not installed here); run on a "
                              "Slurm login node, pass --dry-run to only write the job scripts, or use --executor local")


def _console_format(record) -> str:
    """One line per message on the console (tracebacks go to the task's log file only)."""
    return "datatrove {level}: {message}\n"


def _console_filter(record) -> bool:
    """Not the executor's report of a failed task: phi1 prints that error once, as its own line."""
    return not (record["name"] or "").startswith("datatrove.executor") or record["level"].no < 40


class _LogFile:
    """A task's log file as a loguru sink that gives up quietly when the disk is full (the task's own
    error, which names the cause, is what reaches the user)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, message: str) -> None:
        try:
            self.fh.write(message)
        except OSError:
            pass

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError:
            pass


def _quiet_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
    """datatrove's per-task logger, but only warnings reach the console; the full log goes to the file."""
    from loguru import logger

    from datatrove.utils.logging import get_timestamp

    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.add(sys.stderr, level="WARNING" if local_rank == 0 else "ERROR", colorize=False,
               format=_console_format, filter=_console_filter)
    logger.add(_LogFile(logfile), colorize=False, level="DEBUG")
    logger.info(f"Launching pipeline for {rank=} at {get_timestamp()}")
    return logfile


def _close_task_logger(logfile) -> None:
    from loguru import logger

    logger.complete()
    logger.remove()
    try:
        logfile.close()
    except OSError:  # a full disk: the task's own error says so
        pass
    logger.add(sys.stderr, level="WARNING", colorize=False, format=_console_format, filter=_console_filter)


def _install_quiet_logging() -> None:
    import datatrove.executor.base as base
    import datatrove.executor.ray as ray_ex

    for mod in (base, ray_ex):
        mod.add_task_logger = _quiet_task_logger
        mod.close_task_logger = _close_task_logger
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", colorize=False, format=_console_format, filter=_console_filter)


_install_quiet_logging()


class _GuardedMultiprocess:
    """`multiprocess` as datatrove's local executor sees it, except that the Manager server it starts
    for each block (a forked process of its own) dies with the runner, as the pool workers do
    (`DieWithParent`): a runner killed with -9 leaves no process behind."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Manager(self):  # noqa: N802 - the name datatrove calls
        from multiprocess.managers import SyncManager

        mg = SyncManager(ctx=self._real.get_context())
        mg.start(worker_guard, (os.getpid(),))
        return mg


def _install_guarded_manager() -> None:
    import datatrove.executor.local as local

    if not isinstance(local.multiprocess, _GuardedMultiprocess):
        local.multiprocess = _GuardedMultiprocess(local.multiprocess)


_install_guarded_manager()


def run_blocks(blocks: list[Block], logs: Path, cfg: ExecConfig, label: str = "") -> None:
    """Run blocks one after the other (each waits for the previous); slurm submits them as a chain."""
    if cfg.executor == "slurm":
        return _submit_slurm(blocks, logs, cfg, label)
    for block in blocks:
        t0 = time.perf_counter()
        ex = _executor(block, logs / block.name, cfg)
        try:
            ex.run()
        except Phi1Error:
            raise
        except Exception as exc:
            raise _task_failure(block, logs / block.name, exc) from exc
        missing = [r for r in range(block.tasks) if not (logs / block.name / "completions" / f"{r:05d}").exists()]
        if missing:
            raise _task_failure(block, logs / block.name, None, missing)
        if not cfg.quiet:
            print(f"[{label}] {block.name}: {block.tasks} task(s) done in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)


def _executor(block: Block, logging_dir: Path, cfg: ExecConfig):
    pipeline = [DieWithParent(), *block.pipeline]
    if cfg.executor == "ray":
        import ray
        from datatrove.executor import RayPipelineExecutor

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or "auto", log_to_driver=False, include_dashboard=False,
                     logging_level="ERROR")
        return RayPipelineExecutor(pipeline, tasks=block.tasks, workers=min(cfg.workers, block.tasks),
                                   logging_dir=str(logging_dir), cpus_per_task=cfg.cpus_per_task,
                                   mem_per_cpu_gb=0.5, skip_completed=True)
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline, tasks=block.tasks, workers=min(cfg.workers, block.tasks),
                                 logging_dir=str(logging_dir), skip_completed=True, start_method="fork")


def _task_failure(block: Block, logging_dir: Path, exc: BaseException | None, missing=None) -> Phi1Error:
    if isinstance(exc, Phi1Error):
        return exc
    cause = f"{type(exc).__name__}: {exc}" if exc is not None else f"tasks {missing} did not complete"
    for inner in _causes(exc):
        if isinstance(inner, Phi1Error):
            return inner
    return Phi1Error(f"data block {block.name!r} failed ({cause}); task logs: {logging_dir / 'logs'}; "
                     "fix the cause and rerun the same command: finished tasks are kept")


def _causes(exc: BaseException | None) -> Iterable[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _submit_slurm(blocks: list[Block], logs: Path, cfg: ExecConfig, label: str) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    prev = None
    executors = []
    for i, block in enumerate(blocks):
        ex = SlurmPipelineExecutor([DieWithParent(), *block.pipeline], tasks=block.tasks, time=cfg.slurm_time,
                                   partition=cfg.slurm_partition or "DRY-RUN", cpus_per_task=cfg.cpus_per_task,
                                   mem_per_cpu_gb=cfg.slurm_mem_per_cpu_gb, job_name=f"phi1-{label}-{block.name}",
                                   logging_dir=str(logs / block.name), env_command=cfg.slurm_env_command,
                                   sbatch_args=dict(cfg.slurm_sbatch_args), depends=prev,
                                   depends_job_id=cfg.slurm_after if i == 0 else None,
                                   slurm_logs_folder=str(logs / block.name / "slurm_logs"), skip_completed=True)
        executors.append(ex)
        prev = ex
    with _dry_run_sbatch(logs) if cfg.dry_run else contextlib.nullcontext():
        # launching the last one launches its dependencies first, in order
        executors[-1].launch_job()
    cfg.slurm_after = executors[-1].job_id
    if not cfg.quiet:
        print(f"[{label}] submitted {len(blocks)} slurm job(s){' (dry run: scripts only)' if cfg.dry_run else ''}; "
              f"scripts in {logs}/*/launch_script.slurm", file=sys.stderr)


@contextlib.contextmanager
def _dry_run_sbatch(logs: Path):
    """Replace sbatch: record each script it would submit and hand out job ids 1, 2, ... ."""
    import datatrove.executor.slurm as slurm_mod

    real = slurm_mod.launch_slurm_job
    counter = {"n": 0}

    def fake(launch_file_contents, job_id_retriever, *args):
        counter["n"] = sum(1 for _ in open(logs.parent.parent / "dry_run_sbatch.jsonl")) if (
            logs.parent.parent / "dry_run_sbatch.jsonl").exists() else 0
        counter["n"] += 1
        with open(logs.parent.parent / "dry_run_sbatch.jsonl", "a") as fh:
            fh.write(json.dumps({"job_id": str(counter["n"]), "sbatch_args": list(args),
                                 "script": launch_file_contents}) + "\n")
        return str(counter["n"])

    slurm_mod.launch_slurm_job = fake
    try:
        yield
    finally:
        slurm_mod.launch_slurm_job = real


# ---- stats ----------------------------------------------------------------------------------------

def block_counts(logging_dir: Path) -> dict[str, int]:
    """Sum of every step's counters over the block's tasks (from datatrove's stats/*.json)."""
    totals: dict[str, int] = {}
    for f in sorted((Path(logging_dir) / "stats").glob("*.json")):
        for step in json.loads(f.read_text()):
            for key, val in (step.get("stats") or {}).items():
                n = val.get("total") if isinstance(val, dict) else val
                if isinstance(n, (int, float)) and not key.endswith(("_time", "time")):
                    totals[f"{step.get('name', '?')}/{key}"] = totals.get(f"{step.get('name', '?')}/{key}", 0) + int(n)
    return totals


def shard_records(path: Path) -> int:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())

