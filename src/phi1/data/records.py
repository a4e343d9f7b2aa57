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

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write, atomic_write_json

MAX_BAD_LINES_LISTED = 20


def content_hash(text: str) -> str:
    """A stable hash of a text (sha256 hex), used for ids and caches."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def make_record(text: str, id: str | None = None, **meta: Any) -> dict:
    """A record with `id` (content hash prefix when not given), `text` and `meta`."""
    return {"id": id or content_hash(text)[:16], "text": text, "meta": dict(meta)}


@dataclass
class StageReport:
    """What a stage kept, dropped and why; written as `<out>.report.json`."""

    stage: str
    input: str = ""
    output: str = ""
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    bad_lines: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

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
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 3),
            "bad_lines": self.bad_lines,
            "details": self.details,
        }

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"{self.stage}: read {self.read}, kept {self.kept}, dropped {self.n_dropped} ({drops}); "
            f"{self.bytes_in / 1e6:.1f} MB in {self.seconds:.1f}s ({self.mb_per_s:.2f} MB/s)"
        )

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the report beside the output (`<out>.report.json`) and return its path."""
        target = Path(path) if path else report_path(self.output)
        atomic_write_json(target, self.to_dict())
        return target


def report_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".report.json")


def iter_records(
    path: str | os.PathLike,
    report: StageReport | None = None,
    *,
    skip_bad_lines: bool = False,
    require_text: bool = True,
) -> Iterator[dict]:
    """Yield records from a JSONL file, validating each line.

    A malformed line is fatal (a Phi1Error naming file:line) unless
    `skip_bad_lines`, in which case it is counted as `bad_json` with its line
    number in the report. Records whose `text` is missing or not a string are
    counted as `no_text` and skipped. Missing `id`/`meta` are filled in.
    """
    path = Path(path)
    if not path.is_file():
        raise Phi1Error(f"{path}: input file not found; run the previous stage first or check the path")
    rep = report or StageReport("read")
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rep.bytes_in += len(line)
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            except (json.JSONDecodeError, ValueError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                if not skip_bad_lines:
                    raise Phi1Error(
                        f"{path}:{lineno}: malformed JSONL line ({msg}); fix it or pass --skip-bad-lines"
                    ) from None
                rep.read += 1
                rep.drop("bad_json")
                if len(rep.bad_lines) < MAX_BAD_LINES_LISTED:
                    rep.bad_lines.append({"line": lineno, "error": msg})
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


class RecordSink:
    """Writes kept records to `output` and rejected ones to `rejected`, atomically.

    Files appear under their final names only when the stage finishes without
    error (`close(ok=True)`), so an interrupted stage never leaves a partial
    output that a resumed pipeline would mistake for a finished one.
    """

    def __init__(self, output: str | os.PathLike, report: StageReport, rejected: str | os.PathLike | None = None):
        self.report = report
        report.output = str(output)
        self._out_cm = atomic_write(output, "w")
        self._out = self._out_cm.__enter__()
        self._rej_cm = atomic_write(rejected, "w") if rejected else None
        self._rej = self._rej_cm.__enter__() if self._rej_cm else None

    def keep(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        self._out.write(line)
        self.report.kept += 1
        self.report.bytes_out += len(line)

    def reject(self, rec: dict, reason: str, **why: Any) -> None:
        self.report.drop(reason)
        if self._rej is not None:
            rec = dict(rec)
            rec["meta"] = {**rec.get("meta", {}), "rejected_by": self.report.stage, "reject_reason": reason, **why}
            self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def close(self, ok: bool = True) -> None:
        exc = (None, None, None) if ok else (RuntimeError, RuntimeError("stage failed"), None)
        for cm in (self._rej_cm, self._out_cm):
            if cm is not None:
                try:
                    cm.__exit__(*exc)
                except RuntimeError:
                    pass

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
    if not quiet:
        print(report.summary(), file=sys.stderr)
    return report
