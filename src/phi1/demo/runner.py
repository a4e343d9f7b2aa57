"""Run a list of CLI stages with resume markers, timing, and a record of the exact commands.

A stage is one `phi1 ...` command line. The runner executes it in-process
(`phi1.cli.main(argv)`), so the command recorded for the report is literally what
ran. A finished stage leaves `RUN/.stages/NAME.json` (command, wall time, exit
status); rerunning the pipeline skips finished stages, so an interrupted demo
resumes at the stage it was in (which resumes its own work where it supports it).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write_json


@dataclass
class Stage:
    name: str
    argv: list[str]
    title: str = ""
    outputs: list[Path] = field(default_factory=list)
    skip_if: Callable[[], str | None] | None = None  # returns a reason to skip, or None
    prepare: Callable[[], None] | None = None  # writes inputs the command needs (e.g. a config file)
    fn: Callable[[], None] | None = None  # a Python step instead of a CLI command
    describe: str = ""  # what `fn` does, for the report

    @property
    def command(self) -> str:
        if self.fn is not None:
            return f"# {self.describe}"
        return "phi1 " + " ".join(shlex.quote(str(a)) for a in self.argv)


class StageRunner:
    def __init__(self, run_dir: Path, log=print):
        self.run_dir = Path(run_dir)
        self.marks = self.run_dir / ".stages"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.log = log

    def marker(self, name: str) -> Path:
        return self.marks / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.marker(name).exists()

    def run(self, stages: list[Stage]) -> None:
        from phi1.cli import main as cli_main

        total = len(stages)
        for i, st in enumerate(stages, 1):
            head = f"[{i}/{total}] {st.title or st.name}"
            if self.done(st.name):
                self.log(f"{head}: done earlier, skipping")
                continue
            reason = st.skip_if() if st.skip_if else None
            if reason:
                self.log(f"{head}: skipped ({reason})")
                atomic_write_json(self.marker(st.name), {"name": st.name, "command": st.command,
                                                         "skipped": reason, "seconds": 0.0})
                continue
            if st.prepare is not None:
                st.prepare()
            self.log(f"{head}\n  $ {st.command}")
            sys.stdout.flush()
            t0 = time.time()
            if st.fn is not None:
                st.fn()
                rc = 0
            else:
                rc = cli_main([str(a) for a in st.argv])
            dt = time.time() - t0
            if rc != 0:
                raise Phi1Error(f"stage '{st.name}' failed (exit {rc}) after {dt:.0f}s; "
                                f"fix the cause and rerun the same command to resume from this stage")
            missing = [str(p) for p in st.outputs if not Path(p).exists()]
            if missing:
                raise Phi1Error(f"stage '{st.name}' finished but did not write {missing}")
            atomic_write_json(self.marker(st.name), {"name": st.name, "title": st.title, "command": st.command,
                                                     "seconds": round(dt, 2), "finished": time.time()})
            self.log(f"  done in {dt:.1f}s")

    def records(self) -> list[dict]:
        out = []
        for f in sorted(self.marks.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                out.append(json.loads(f.read_text()))
            except json.JSONDecodeError:
                continue
        return out
