"""One runner for every multi-stage command: `phi1 data run`, `phi1 demo`, `phi1 ablate`.

A `Stage` is a typed config plus the library function that carries it out. The runner

1. validates every stage before the first one runs (a bad field in the last stage fails at once);
2. gives each stage a fingerprint: its kind, its config, the fingerprints of the stages it reads
   and a stamp (size, mtime) of each outside input. A stage reruns exactly when its fingerprint
   changed, so editing one setting reruns that stage and everything downstream, nothing upstream;
3. records each finished stage in `MARKS/NAME.json` (fingerprint, command, seconds). A stage that
   was started with the same fingerprint and killed resumes its own partial work; one whose
   fingerprint changed first has the outputs it wrote cleared (`clear`), then runs afresh.

Stages with their own completion record (a data stage's `manifest.json`) say so with `finished`.
Nothing here knows what a stage does: that keeps this module below every package that uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write_json


@dataclass
class Stage:
    name: str
    kind: str
    config: Any                                   # a dataclass or a JSON-able mapping: fingerprinted
    run: Callable[[str], dict | None]             # run(fingerprint) -> summary (or None)
    after: tuple[str, ...] = ()                   # the stages whose outputs it reads
    inputs: tuple = ()                            # outside inputs (files, dirs): stamped into the fingerprint
    title: str = ""
    command: Callable[[], str] | str = ""         # how to run it by hand (rendered from the config)
    validate: Callable[[], None] | None = None    # checks beyond config.validate(), before anything runs
    finished: Callable[[str], bool] | None = None  # its own record says it finished with this fingerprint
    clear: Callable[[], None] | None = None       # remove what an earlier run of this stage wrote
    skip: Callable[[], str | None] | None = None  # a reason not to run it at all (decided when its turn comes)

    def render(self) -> str:
        return self.command() if callable(self.command) else self.command


def config_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {str(k): config_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def stamp(path: str | Path) -> str:
    """What identifies an outside input's content cheaply: sizes and mtimes of its files."""
    p = Path(path)
    if not p.exists():
        raise Phi1Error(f"{p}: input not found")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return f"{p}:" + hashlib.sha256("".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                                for f in files).encode()).hexdigest()[:16]
    st = p.stat()
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def fingerprint(kind: str, config: Any, upstream=(), inputs=()) -> str:
    """What decides whether work is still valid: its kind, its config, what it reads (the upstream
    fingerprints) and a stamp of each outside input."""
    payload = [kind, config_dict(config), list(upstream), [stamp(p) for p in inputs]]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageGraph:
    """Stages in run order; `after` may name only earlier stages."""

    def __init__(self, stages: list[Stage], marks: Path | None = None, log: Callable[[str], None] | None = None):
        self.stages = list(stages)
        self.marks = Path(marks) if marks is not None else None
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        seen: set[str] = set()
        for st in self.stages:
            if st.name in seen:
                raise Phi1Error(f"stage {st.name!r} is defined twice")
            missing = [a for a in st.after if a not in seen]
            if missing:
                raise Phi1Error(f"stage {st.name!r} reads {missing}, which do not run before it")
            seen.add(st.name)

    def by_name(self, name: str) -> Stage:
        for st in self.stages:
            if st.name == name:
                return st
        raise Phi1Error(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def validate(self) -> None:
        """Every stage's config checked before the first stage runs."""
        for st in self.stages:
            try:
                check = getattr(st.config, "validate", None)
                if callable(check):
                    check()
                if st.validate is not None:
                    st.validate()
            except Phi1Error as exc:
                msg = str(exc)
                raise type(exc)(msg if msg.startswith(f"stage {st.name!r}") else f"stage {st.name!r}: {msg}") from None

    def marker(self, name: str) -> Path | None:
        return self.marks / f"{name}.json" if self.marks is not None else None

    def read_marker(self, name: str) -> dict | None:
        m = self.marker(name)
        if m is None:
            return None
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _states(self, until: str | None):
        """Checks `until` and validates every stage (before anything is written), then yields (stage,
        fingerprint, its marker, finished with that fingerprint) for each stage in order, up to
        `until`; a stage's marker is read when its turn comes, after the stages before it ran."""
        if until is not None:
            self.by_name(until)
        self.validate()
        return self._walk(until)

    def _walk(self, until: str | None):
        fps: dict[str, str] = {}
        for st in self.stages:
            fp = fps[st.name] = fingerprint(st.kind, st.config, [fps[a] for a in st.after], st.inputs)
            prev = self.read_marker(st.name)
            done = (st.finished(fp) if st.finished is not None
                    else bool(prev) and prev.get("fingerprint") == fp and prev.get("status") == "done")
            yield st, fp, prev, done
            if until == st.name:
                return

    def plan(self, *, until: str | None = None, force: bool = False) -> list[dict]:
        """What `run` would do, running nothing: each stage's fingerprint and whether it is finished
        with it (`done`) or would run."""
        return [{"stage": st.name, "status": "done" if done and not force else "would run", "fingerprint": fp}
                for st, fp, _, done in self._states(until)]

    def run(self, *, until: str | None = None, force: bool = False, quiet: bool = False) -> list[dict]:
        """Run every stage not finished with its current fingerprint, in order; one result per stage."""
        states = self._states(until)
        if self.marks is not None:
            self.marks.mkdir(parents=True, exist_ok=True)
        results: list[dict] = []
        total = len(self.stages)
        for i, (st, fp, prev, done) in enumerate(states, 1):
            head = f"[{i}/{total}] {st.title or st.name}"
            if done and not force:
                if not quiet:
                    self.log(f"{head}: done earlier, skipping")
                results.append({"stage": st.name, "status": "skipped", "fingerprint": fp})
            elif st.skip is not None and (reason := st.skip()):
                if not quiet:
                    self.log(f"{head}: skipped ({reason})")
                if self.marks is not None:
                    atomic_write_json(self.marker(st.name), {"name": st.name, "kind": st.kind, "title": st.title,
                                                             "fingerprint": fp, "status": "done", "skipped": reason,
                                                             "command": "", "seconds": 0.0, "finished": time.time()})
                results.append({"stage": st.name, "status": "skipped", "fingerprint": fp, "reason": reason})
            else:
                results.append(self._run_one(st, fp, prev, head, force, quiet))
        return results

    def _run_one(self, st: Stage, fp: str, prev: dict | None, head: str, force: bool, quiet: bool) -> dict:
        resuming = bool(prev) and prev.get("fingerprint") == fp and not force
        if prev and not resuming and st.clear is not None:
            if not quiet:
                why = "forced" if force else "its config or an upstream stage changed"
                self.log(f"{head}: {why}; clearing what it wrote before")
            st.clear()
        command = st.render()
        if not quiet:
            self.log(f"{head}" + (f"\n  $ {command}" if command else ""))
            sys.stdout.flush()
        record = {"name": st.name, "kind": st.kind, "title": st.title, "fingerprint": fp, "command": command,
                  "config": config_dict(st.config)}
        if self.marks is not None:
            atomic_write_json(self.marker(st.name), {**record, "status": "running", "started": time.time()})
        t0 = time.time()
        try:
            summary = st.run(fp)
        except Phi1Error as exc:
            dt = time.time() - t0
            raise Phi1Error(f"stage {st.name!r} failed after {dt:.0f}s: {exc}; fix the cause and rerun the same "
                            "command to resume from this stage") from None
        dt = time.time() - t0
        if summary and summary.get("submitted"):  # handed to a cluster scheduler: it finishes later
            return {"stage": st.name, "status": "submitted", "fingerprint": fp}
        if summary and summary.get("incomplete"):  # ran, but part of its work failed: not done, a rerun resumes it
            if not quiet:
                self.log(f"  incomplete after {dt:.1f}s: {summary['incomplete']}")
            return {"stage": st.name, "status": "incomplete", "fingerprint": fp, "seconds": round(dt, 2),
                    "summary": summary}
        if st.finished is not None and not st.finished(fp):
            raise Phi1Error(f"stage {st.name!r} finished without its completion record")
        record = {**record, "command": st.render(), "status": "done", "seconds": round(dt, 2),
                  "finished": time.time()}
        if summary:
            record["summary"] = summary
        if self.marks is not None:
            atomic_write_json(self.marker(st.name), record)
        if not quiet:
            self.log(f"  done in {dt:.1f}s")
        return {"stage": st.name, "status": "ran", "fingerprint": fp, "seconds": round(dt, 2),
                **({"summary": summary} if summary else {})}


__all__ = ["Stage", "StageGraph", "config_dict", "fingerprint", "stamp"]
