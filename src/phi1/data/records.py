"""JSONL records between data stages, and the report every stage writes.

A record is `{"id": str, "text": str, "meta": dict}`. Each stage reads records,
keeps some (possibly with more `meta`), drops others with a named reason, and
writes `<out>.report.json` plus, when asked, the rejected records aside.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from phi1.utils.io import atomic_write, atomic_write_json, json_loads
from phi1.errors import Phi1Error
from phi1.utils.safety import OutputLock, clean_stale_temps, describe_oserror

MAX_BAD_LINES_LISTED = 20


def content_hash(text: str) -> str:
    """A stable hash of a text (sha256 hex), used for ids and caches."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def given(**options) -> dict:
    """The options that were given: a stage function's keyword left as None keeps the stage config's
    default (the config dataclass is the only place defaults live)."""
    return {k: v for k, v in options.items() if v is not None}


FAILURE_REASONS = frozenset({"bad_json", "bad_utf8", "no_text"})  # input lines a stage could not read
FAILURE_HINTS = {
    "bad_json": "no line of the input is a JSON object; is this the right file?",
    "bad_utf8": "no line of the input is UTF-8 text; convert the file to UTF-8",
    "no_text": "no record has a string 'text' field; name the text field or fix the records",
    "judge_unparsable": "no answer of the judge held a score; check the judge model and its prompt "
                        "(the answers are in the judge cache)",
    "judge_failed": "every request to the judge failed; check the endpoint and rerun",
}


def could_not_process(fails: dict[str, int]) -> str:
    """The summary line's `, could not process N (reason=n, ...)` part ("" when nothing failed)."""
    if not fails:
        return ""
    return f", could not process {sum(fails.values())} (" + ", ".join(f"{k}={v}" for k, v in sorted(fails.items())) + ")"


def all_failed_error(prefix: str, fails: dict[str, int], tried: int, where: str) -> Phi1Error | None:
    """The error of a stage whose every record (`tried` > 0 of them) failed for one reason, starting
    with `prefix` (the stage's name as its summary line writes it); else None."""
    if tried <= 0 or len(fails) != 1 or sum(fails.values()) < tried:
        return None
    reason = next(iter(fails))
    return Phi1Error(f"{prefix}all {tried} records failed ({reason}); {FAILURE_HINTS.get(reason, 'see the report')} "
                     f"({where})")


@dataclass
class StageReport:
    """What a stage kept, dropped and why; written as `<out>.report.json`."""

    stage: str
    input: str = ""
    output: str = ""
    rejected: str = ""
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    bad_lines: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    failed: Counter = field(default_factory=Counter)  # records the stage tried and could not process, by reason
    attempted: int | None = None  # records the stage tried to process (None: every record read)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def failures(self) -> Counter:
        """Records that could not be processed, by reason: unreadable input lines and the stage's own
        failures (an unparsable judge answer), as opposed to records a stage dropped by decision."""
        out = Counter({k: v for k, v in self.dropped.items() if k in FAILURE_REASONS and v})
        out.update({k: v for k, v in self.failed.items() if v})
        return out

    def all_failed(self) -> Phi1Error | None:
        """The error to raise when every record the stage tried failed for one reason; else None."""
        tried = self.read if self.attempted is None else self.attempted
        where = f"report: {report_path(self.output) if self.output else 'none'}"
        return all_failed_error(f"{self.stage}: ", self.failures(), tried, where)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def finish(self) -> "StageReport":
        self.seconds = time.perf_counter() - self._t0
        return self

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "input": self.input,
            "output": self.output,
            "rejected": self.rejected,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 3),
            "bad_lines": self.bad_lines,
            "failed": dict(sorted(self.failures().items())),
            "details": self.details,
        }

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"{self.stage}: read {self.read}, kept {self.kept}, dropped {self.n_dropped} ({drops})"
            f"{could_not_process(self.failures())}; "
            f"{self.bytes_in / 1e6:.1f} MB in {self.seconds:.1f}s ({self.mb_per_s:.2f} MB/s)"
        )

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the report beside the output (`<out>.report.json`) and return its path."""
        target = Path(path) if path else report_path(self.output)
        atomic_write_json(target, self.to_dict())
        return target


def report_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".report.json")


def check_input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """`path` as a Path when it is a readable file; else a Phi1Error saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise Phi1Error(f"{path}: is a directory; give a JSONL file (or a stage directory where one is accepted)")
    if not path.is_file():
        raise Phi1Error(f"{path}: {what} file not found; run the previous stage first or check the path")
    return path


def decode_line(raw: bytes, where: str = "column") -> tuple[str | None, str | None]:
    """(text, None) for a UTF-8 line, or (None, what is wrong) naming the first bad byte."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        pos = exc.start + 1 if where == "column" else exc.start
        return None, f"not valid UTF-8 (byte 0x{bad} at {where} {pos})"


try:
    import orjson as _orjson
except ImportError:  # the core install (no data extra): the stdlib parser alone
    _orjson = None


def _has_float(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, dict):
        return any(_has_float(v) for v in x.values())
    if isinstance(x, list):
        return any(_has_float(v) for v in x)
    return False


def parse_object_line(raw: bytes) -> tuple[dict | None, str, str | None]:
    """(object, "", None) for a UTF-8 line holding a JSON object; else (None, count name, what is
    wrong) with the count name `bad_utf8` or `bad_json`.

    orjson (about 3x faster) reads the line first; what it refuses (invalid UTF-8, a lone surrogate
    escape, NaN, deep nesting) goes to the stdlib parser, which decides and names the fault exactly
    as before. orjson reads an integer past 64 bits as a float, so a record holding any float
    outside its text is read again by the stdlib parser too: the result is the same either way."""
    if _orjson is not None:
        try:
            obj = _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            try:
                floats = any(_has_float(v) for k, v in obj.items() if k != "text")
            except RecursionError:  # nested deeper than Python's stack: the stdlib path names it
                floats = True
            if not floats:
                return obj, "", None
    line, why = decode_line(raw)
    if line is None:
        return None, "bad_utf8", why
    try:
        obj = json_loads(line)
    except json.JSONDecodeError as exc:
        return None, "bad_json", f"malformed JSONL line ({exc.msg})"
    if not isinstance(obj, dict):
        return None, "bad_json", f"malformed JSONL line (expected a JSON object, got {type(obj).__name__})"
    return obj, "", None


SKIP_HINT = "pass --skip-bad-lines (skip_bad_lines: true in a pipeline) to skip and count such lines"


def iter_records(
    path: str | os.PathLike,
    report: StageReport | None = None,
    *,
    skip_bad_lines: bool = False,
    require_text: bool = True,
) -> Iterator[dict]:
    """Yield records from a JSONL file, validating each line.

    Lines are read as bytes and decoded strictly: a line that is not UTF-8 or not a JSON
    object is fatal (a Phi1Error naming file:line) unless `skip_bad_lines`, in which case it
    is counted (`bad_utf8` / `bad_json`) with its line number in the report; no byte is ever
    replaced silently. Records whose `text` is missing or not a string are counted as
    `no_text` and skipped. Missing `id`/`meta` are filled in.
    """
    from phi1.data.shardfiles import expand_record_inputs

    rep = report or StageReport("read")
    p = Path(path)
    files = expand_record_inputs(p) if p.is_dir() else [check_input_file(p)]
    for f in files:
        yield from _iter_file_records(f, rep, skip_bad_lines, require_text)


def _iter_file_records(path: Path, rep: "StageReport", skip_bad_lines: bool, require_text: bool) -> Iterator[dict]:
    from phi1.data.shardfiles import open_record_lines

    for lineno, raw in enumerate(open_record_lines(path), 1):
        if not raw.strip():
            continue
        rep.bytes_in += len(raw)
        rec, reason, why = parse_object_line(raw)
        if why is not None:
            if not skip_bad_lines:
                raise Phi1Error(f"{path}:{lineno}: {why}; fix the line or {SKIP_HINT}") from None
            rep.read += 1
            rep.drop(reason)
            if len(rep.bad_lines) < MAX_BAD_LINES_LISTED:
                rep.bad_lines.append({"line": lineno, "error": why})
            continue
        rep.read += 1
        text = rec.get("text")
        if require_text and not isinstance(text, str):
            rep.drop("no_text")
            if len(rep.bad_lines) < MAX_BAD_LINES_LISTED:
                rep.bad_lines.append({"line": lineno, "error": "record has no string 'text'"})
            continue
        if not isinstance(rec.get("meta"), dict):
            rec["meta"] = {}
        if "id" not in rec:
            rec["id"] = f"{path.stem}:{lineno}"
        yield rec


def stage_plan(stage: str, inputs: object, output: str | os.PathLike, rejected: str | os.PathLike | None = None,
               *, overwrite: bool = False):
    """The files a data stage writes (`OUT`, `--rejected`, `OUT.report.json`) as a `WritePlan` owned by
    `phi1 data STAGE`: entering it refuses outputs that are inputs, and existing files that this stage
    cannot prove it wrote (unless `overwrite`, which never covers a foreign report)."""
    from phi1.utils.writes import Write, WritePlan

    writes = [Write("--out", Path(output))] + ([Write("--rejected", Path(rejected))] if rejected else [])
    writes.append(Write("--out's report", report_path(output), named=False))
    return WritePlan(f"data {stage}", writes, inputs={"input": inputs}, overwrite=overwrite)


class RecordSink:
    """Writes kept records to `output` and rejected ones to `rejected`, atomically.

    Files appear under their final names only when the stage finishes without
    error (`close(ok=True)`), so an interrupted stage never leaves a partial
    output that a resumed pipeline would mistake for a finished one.

    Before writing, the sink refuses an output or rejected file that resolves to one of the
    `inputs` (default: the report's input), and an existing output that this stage did not
    write unless `overwrite`; it holds an `OutputLock` on the output while it writes (a
    second writer fails at once, naming the pid) and claims the output by writing its report
    first, so a stage killed at any point leaves an output it can later prove is its own.
    """

    def __init__(self, output: str | os.PathLike, report: StageReport, rejected: str | os.PathLike | None = None,
                 *, inputs: object = None, overwrite: bool = False):
        self.report = report
        self.output = Path(output)
        self.rejected = Path(rejected) if rejected else None
        report.output = str(output)
        report.rejected = str(rejected) if rejected else ""
        if inputs is None:
            inputs = [report.input] if report.input else []
        self._plan = stage_plan(report.stage, inputs, output, rejected, overwrite=overwrite).__enter__()
        report._plan = self._plan  # left by finish_report, once the report is written too
        self._lock = OutputLock(self.output, is_dir=False).acquire()
        self._out_cm = self._rej_cm = None
        self._out = self._rej = None
        self._claimed = False  # a claim report written for an output that does not exist yet
        try:
            for f in (self.rejected, report_path(self.output)):
                if f is not None:
                    clean_stale_temps(f.parent, stem=f.name)
            # The claim: a report naming the outputs exists before any of them does.
            prior = None
            rp = report_path(self.output)
            if rp.exists():
                try:
                    prior = json.loads(rp.read_text())
                except (OSError, ValueError):
                    prior = None
            if not (isinstance(prior, dict) and prior.get("output") and Path(prior["output"]).name == self.output.name
                    and (prior.get("rejected") or "") == report.rejected):
                atomic_write_json(rp, {"stage": report.stage, "input": report.input, "output": report.output,
                                       "rejected": report.rejected, "status": "running"})
                self._claimed = not self.output.exists()
            self._out_cm = atomic_write(output, "w")
            self._out = self._out_cm.__enter__()
            self._rej_cm = atomic_write(rejected, "w") if rejected else None
            self._rej = self._rej_cm.__enter__() if self._rej_cm else None
        except OSError as exc:
            self.close(ok=False)
            raise Phi1Error(f"{self.output}: cannot write the stage output: {describe_oserror(exc)}") from None
        except BaseException:
            self.close(ok=False)
            raise

    def _failed(self, exc: OSError, path: Path):
        self.close(ok=False)
        return Phi1Error(f"{path}: cannot write: {describe_oserror(exc)}")

    def keep(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        try:
            self._out.write(line)
        except OSError as exc:
            raise self._failed(exc, self.output) from None
        self.report.kept += 1
        self.report.bytes_out += len(line)

    def reject(self, rec: dict, reason: str, **why: Any) -> None:
        self.report.drop(reason)
        if self._rej is not None:
            rec = dict(rec)
            rec["meta"] = {**rec.get("meta", {}), "rejected_by": self.report.stage, "reject_reason": reason, **why}
            try:
                self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")
            except OSError as exc:
                raise self._failed(exc, self.rejected) from None

    def write_rejected(self, rec: dict) -> None:
        """A record a pipeline step already dropped (its meta names the reason; the caller counts it)."""
        if self._rej is not None:
            try:
                self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")
            except OSError as exc:
                raise self._failed(exc, self.rejected) from None

    def close(self, ok: bool = True) -> None:
        """Commit (ok) or discard both files; a failure to commit discards what is left and raises."""
        error: BaseException | None = None
        for cm, path in ((self._out_cm, self.output), (self._rej_cm, self.rejected)):
            if cm is None:
                continue
            if ok and error is None:
                try:
                    cm.__exit__(None, None, None)
                    continue
                except OSError as exc:
                    error = Phi1Error(f"{path}: cannot write: {describe_oserror(exc)}")
                except BaseException as exc:  # noqa: BLE001 (re-raised below)
                    error = exc
                continue
            try:
                cm.__exit__(RuntimeError, RuntimeError("stage failed"), None)
            except Exception:  # noqa: BLE001 (the temp file is gone either way)
                pass
        self._out_cm = self._rej_cm = None
        if (not ok or error is not None) and self._claimed and not self.output.exists():
            report_path(self.output).unlink(missing_ok=True)  # nothing was written: take the claim back
            self._claimed = False
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None
        if (not ok or error is not None) and getattr(self.report, "_plan", None) is not None:
            self.report._plan.__exit__(None, None, None)
            self.report._plan = None
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False


def finish_report(report: StageReport, quiet: bool = False) -> StageReport:
    """Stop the clock, write `<out>.report.json`, print the one-line summary on stderr."""
    report.finish()
    if report.output:
        report.write()
    plan = getattr(report, "_plan", None)
    if plan is not None:  # the stage's files are recorded as its own (phi1.utils.writes)
        plan.__exit__(None, None, None)
        report._plan = None
    if not quiet:
        print(report.summary(), file=sys.stderr)
    error = report.all_failed()
    if error is not None:  # nothing usable came out: a non-zero exit that names the cause, not a quiet success
        raise error
    return report
