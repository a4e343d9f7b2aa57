"""Every path a command writes, declared up front and checked by one guard (docs/guarantees.md §1).

A `WritePlan` is the list of everything a command will write: the output files and folders the
user named, and the files it derives from them (`OUT.report.json`, `OUT.summary.json`, a ledger,
a PNG beside a report). Entering the plan checks all of them before any work starts:

1. No written path is one of the command's inputs, or lies inside an input folder (`--out m/x`
   with `--model m`), and no two written paths are the same file.
2. An existing file is written only when the ledger of its folder (`.phi1-files.json`) proves
   that this command wrote it and nobody has replaced it since (same inode; for a whole file also
   the same size and modification time). Anything else needs `--overwrite`, which applies only to
   the paths the user named: a derived file that phi1 cannot prove it wrote is never replaced.
3. An existing folder is written only when it is empty or its marker (`.phi1-output.json`) names
   this command, or with `--overwrite` (which then adds and replaces the command's own names only).

Leaving the plan (also on an error or Ctrl-C) records in the ledgers every declared file the
command created or changed, and files written through `phi1.utils.io` (`atomic_write`,
`JsonlAppender`) are recorded the moment they appear, so that a run killed with SIGKILL can still
prove its outputs when it is resumed. The CLI builds each command's plan from `declare_io`
(`phi1.utils.cliio.write_plan`); library writers (`RecordSink`, `export_gguf`, `build_report`)
enter the same plan with the same owner, so a file written by either is provably the command's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from phi1.errors import Phi1Error
from phi1.utils import io as _io
from phi1.utils.safety import (DIR_LOCK, LEDGER, MARKER, _flat, _is_within, check_output_dir, refuse_overlap,
                               resolve)


@dataclass(frozen=True)
class Write:
    """One path a command writes. `named`: the user gave it (so `--overwrite` may replace it)."""

    label: str
    path: Path
    dir: bool = False
    named: bool = True


# ---------------------------------------------------------------------------------------------
# The ledger: which files in a folder phi1 wrote, and by which command


def _stat_key(st: os.stat_result) -> dict:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_ledger(folder: Path) -> dict:
    try:
        data = json.loads((folder / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def written_by(path: str | os.PathLike) -> str | None:
    """The phi1 command whose ledger entry proves it wrote `path` as it is now, else None."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    entry = read_ledger(p.parent).get(p.name)
    if not isinstance(entry, dict):
        return None
    now = _stat_key(st)
    keys = ("dev", "ino") if entry.get("append") else ("dev", "ino", "size", "mtime_ns")
    for known in (entry, entry.get("next") or {}):  # next: a complete temp file that was being renamed in
        if all(known.get(k) == now[k] for k in keys):
            return entry.get("owner") or None
    return None


@contextlib.contextmanager
def _folder_locked(folder: Path):
    """An exclusive flock on the folder itself, so that two commands never lose each other's entries."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(path: str | os.PathLike, owner: str, *, append: bool = False,
           staged: str | os.PathLike | None = None) -> None:
    """Note in its folder's ledger that `owner` wrote `path` (as it is now). With `staged`, the
    complete temp file about to be renamed onto `path`: both the current file (if it was already
    proven the owner's) and the staged one are then proofs, so a kill on either side of the rename
    loses nothing. Entries of files that are gone are dropped. A ledger that cannot be written (a
    read-only folder) is skipped: the file then simply cannot be proven phi1's later."""
    p = Path(path)
    try:
        st = Path(staged).stat() if staged is not None else p.stat()
    except OSError:
        return
    folder = p.parent
    with _folder_locked(folder):
        files = read_ledger(folder)
        entry = {"owner": owner, **_stat_key(st), **({"append": True} if append else {})}
        if staged is not None:
            entry = {"owner": owner, "next": _stat_key(st)}
            if written_by(p) == owner:  # the file the rename replaces stays proven until then
                with contextlib.suppress(OSError):
                    entry.update(_stat_key(p.stat()))
        files = {n: e for n, e in files.items() if n != p.name and (folder / n).exists()}
        files[p.name] = entry
        with contextlib.suppress(OSError):
            _io.atomic_write_json(folder / LEDGER, {"about": "files phi1 wrote here (docs/guarantees.md)",
                                                   "files": dict(sorted(files.items()))})


# ---------------------------------------------------------------------------------------------
# Files written while a plan is active are recorded at once (a SIGKILL later loses nothing)


_ACTIVE: dict[Path, list[str]] = {}


def _on_write(path: os.PathLike, append: bool, staged: os.PathLike | None = None) -> None:
    owners = _ACTIVE.get(resolve(path))
    if owners:
        record(path, owners[-1], append=append, staged=staged)


class WritePlan:
    """Everything one command writes, checked before it starts and recorded as it is written."""

    def __init__(self, owner: str, writes: list[Write], *, inputs: dict[str, object] | None = None,
                 overwrite: bool = False, overwrite_flag: bool = True, updates: tuple = ()):
        self.owner = owner
        self.writes = [w for w in writes if w.path is not None and os.fspath(w.path) not in ("", "-")]
        self.inputs = [(label, os.fspath(p)) for label, v in (inputs or {}).items() for p in _flat(v)
                       if p and os.fspath(p) != "-"]
        self.overwrite = overwrite
        self.overwrite_flag = overwrite_flag  # the command has --overwrite (its messages may suggest it)
        self.updates = [resolve(u) for u in updates if u]  # input folders the command adds its own files to
        self._before: dict[Path, dict | None] = {}

    # -- the guard ----------------------------------------------------------------------------

    def check(self) -> None:
        self._check_overlap()
        for w in self.writes:
            (self._check_dir if w.dir else self._check_file)(w)

    def _check_overlap(self) -> None:
        inputs: dict[str, list] = {}
        for label, i in self.inputs:
            inputs.setdefault(label, []).append(i)
        files: dict[str, list] = {}
        for w in self.writes:
            files.setdefault(w.label, []).append(w.path)
        refuse_overlap(inputs, files)  # no write is an input, and no two writes are one file
        for w in self.writes:
            rw = resolve(w.path)
            for ilabel, i in self.inputs:
                ri = resolve(i)
                if ri.is_dir() and rw != ri and _is_within(rw, ri) and \
                        not any(rw != u and _is_within(rw, u) for u in self.updates):
                    raise Phi1Error(f"{w.label} {w.path} lies inside the input folder {i} ({ilabel}); "
                                    "write outside it (phi1 never writes into its own input)")

    def _check_file(self, w: Write) -> None:
        p = Path(w.path)
        if p.is_dir():
            raise Phi1Error(f"{w.label} {p}: is a directory; give a file path")
        if not p.exists() and not p.is_symlink():
            return
        owner = written_by(p)
        if owner == self.owner:
            return
        if w.named and self.overwrite:
            return
        who = (f"was written by `phi1 {owner}`, not `phi1 {self.owner}`" if owner
               else f"was not written by `phi1 {self.owner}` (no phi1 record of it)")
        if w.named:
            fix = ("choose another path, or pass --overwrite to replace it" if self.overwrite_flag
                   else "choose another path or move the file away")
        else:
            fix = "move it away or choose another output path (phi1 never replaces a file it did not write)"
        raise Phi1Error(f"{w.label} {p}: exists and {who}; {fix}")

    def _check_dir(self, w: Write) -> None:
        check_output_dir(w.path, self.owner, overwrite=self.overwrite, flag=w.label, can_overwrite=self.overwrite_flag)

    # -- recording ----------------------------------------------------------------------------

    def __enter__(self) -> "WritePlan":
        self.check()
        self._new_dirs = [Path(w.path) for w in self.writes if w.dir and not Path(w.path).exists()]
        for w in self.writes:
            if not w.dir:
                rp = resolve(w.path)
                self._before[rp] = _stat_or_none(rp)
                _ACTIVE.setdefault(rp, []).append(self.owner)
        if _ACTIVE:
            _io.WRITE_HOOKS.add(_on_write)  # only while some declared file may be written
        return self

    def __exit__(self, exc_type=None, *exc) -> None:
        if exc_type is not None:  # a folder this run created and left holding only phi1's bookkeeping goes
            for d in getattr(self, "_new_dirs", ()):
                _remove_if_bare(d)
        for rp, before in self._before.items():
            owners = _ACTIVE.get(rp)
            if owners:
                owners.remove(self.owner)
                if not owners:
                    del _ACTIVE[rp]
            now = _stat_or_none(rp)
            if now is None or now == before:
                continue  # not written by this run (a foreign file is never adopted by accident)
            if written_by(rp) != self.owner:  # else recorded when it was written (atomic_write, JsonlAppender)
                record(rp, self.owner)
        if not _ACTIVE:
            _io.WRITE_HOOKS.discard(_on_write)


def _remove_if_bare(d: Path) -> None:
    try:
        names = set(os.listdir(d))
    except OSError:
        return
    if not names <= {MARKER, DIR_LOCK, LEDGER}:
        return
    for n in names:
        with contextlib.suppress(OSError):
            (d / n).unlink()
    with contextlib.suppress(OSError):
        d.rmdir()


def _stat_or_none(p: Path) -> dict | None:
    try:
        return _stat_key(p.stat())
    except OSError:
        return None
