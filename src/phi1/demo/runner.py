"""Run a list of CLI stages with resume markers, timing, and a record of the exact commands.

A stage is one `phi1 ...` command line. The runner executes it in-process
(`phi1.cli.main(argv)`), so the command recorded for the report is literally what
ran. A finished stage leaves `RUN/.stages/NAME.json` (command, wall time, exit
status); rerunning the pipeline skips finished stages, so an interrupted demo
resumes at the stage it was in (which resumes its own work where it supports it).

`own_run_dir` guards the run directory: `phi1 demo` / `phi1 ablate` write only into a new or
empty directory or one they wrote themselves (marker `.phi1-output.json`; a directory of an
older phi1, without the marker, is recognised by its own state files), and hold an exclusive
lock on it for the whole run, so two runs on one directory cannot interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write_json
from phi1.utils.safety import DIR_LOCK, MARKER, OutputLock, claim_output_dir, read_marker

# The state files by which a run directory written before the marker existed is recognised.
_LEGACY = {"demo": "demo.json", "ablate": ".stages"}


def _entries(root: Path) -> list[str]:
    """What a directory holds besides phi1's own marker, lock and temporary files."""
    return sorted(e for e in os.listdir(root)
                  if e not in (MARKER, DIR_LOCK) and not (e.startswith(".") and ".phi1-" in e and e.endswith(".tmp")))


def _legacy_owned(root: Path, owner: str) -> bool:
    """A directory an older `phi1 demo`/`phi1 ablate` wrote (no marker): it holds that command's state files."""
    if read_marker(root) is not None:
        return False
    if owner == "demo":
        return (root / "demo.json").is_file() and (root / ".stages").is_dir()
    return (root / ".stages").is_dir() and not (root / "demo.json").exists()


@contextlib.contextmanager
def own_run_dir(root: Path, owner: str, flag: str = "--out") -> Iterator[Path]:
    """Claim `root` for `phi1 OWNER` and lock it for the duration of the `with` block.

    Refuses (one Phi1Error, nothing written) a file, or a non-empty directory that this command
    did not write; there is no --overwrite: a run always has a directory of its own. A second
    run on the same directory fails at once, naming the pid of the one that holds it.
    """
    root = Path(root)
    if root.is_dir() and read_marker(root) is None and _legacy_owned(root, owner):
        claim_output_dir(root, owner, overwrite=True, flag=flag)  # adopt: writes the marker, deletes nothing
    elif root.is_dir():
        marker = read_marker(root) or {}
        entries = _entries(root)
        if entries and marker.get("owner") != owner:
            what = (f"was written by `phi1 {marker['owner']}`" if marker.get("owner")
                    else "was not written by this command")
            raise Phi1Error(
                f"{flag} {root}: directory is not empty ({len(entries)} entries) and {what}; `phi1 {owner}` "
                "writes only into a new or empty directory or one of its own runs: choose a new directory "
                "(nothing was written)"
            )
    claim_output_dir(root, owner, flag=flag)
    with OutputLock(root, is_dir=True, what=f"`phi1 {owner}` run directory"):
        yield root


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
