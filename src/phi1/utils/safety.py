"""The guards that keep phi1 from destroying a user's files.

Every command that writes uses these four rules (docs/guarantees.md states them for users):

1. `refuse_overlap`: no output may resolve to one of the command's inputs (symlinks, `./x`
   versus `x` and hard links included), and an output directory may not contain an input.
2. `claim_output_dir`: a command writes only into a new or empty directory, or one that its own
   marker file (`.phi1-output.json`, naming the command) proves it wrote. Anything else needs
   `--overwrite`, and even then phi1 deletes only files it can prove it wrote.
3. `OutputLock`: one writer per output. An exclusive `flock` on a lock file beside the output,
   held by the process and released by the kernel when it dies; a second writer fails at once,
   naming the holder's pid.
4. `temp_name` / `clean_stale_temps`: temporary files carry their writer's pid
   (`.NAME.phi1-PID-RANDOM.tmp`); a later run removes the ones whose writer is dead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write_json

MARKER = ".phi1-output.json"
DIR_LOCK = ".phi1.lock"
LEDGER = ".phi1-files.json"  # which files in a folder phi1 wrote (phi1.utils.writes)
_TEMP_RE = re.compile(r"^\..*\.phi1-(\d+)-[A-Za-z0-9_]+\.tmp$")


def resolve(path: str | os.PathLike) -> Path:
    """The absolute path with every symlink followed (the file a write would really hit)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    ra, rb = resolve(a), resolve(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)  # hard links
    except OSError:
        return False


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _flat(values) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, os.PathLike)):
        return [os.fspath(values)]
    out = []
    for v in values:
        out.extend(_flat(v))
    return out


def refuse_overlap(
    inputs: dict[str, object],
    outputs: dict[str, object] | None = None,
    out_dirs: dict[str, object] | None = None,
) -> None:
    """Raise a Phi1Error when an output would write over an input or over another output.

    Each mapping is `{label: path or list of paths}`; labels (e.g. `--out`) name the flag in the
    message.
    """
    ins = [(label, p) for label, v in inputs.items() for p in _flat(v) if p and p != "-"]
    outs = [(label, p) for label, v in (outputs or {}).items() for p in _flat(v) if p and p != "-"]
    dirs = [(label, p) for label, v in (out_dirs or {}).items() for p in _flat(v) if p and p != "-"]
    for olabel, o in outs + dirs:
        for ilabel, i in ins:
            if same_file(o, i):
                raise Phi1Error(
                    f"{olabel} {o} is the same file as the input {i} ({ilabel}); "
                    "write to a new path (phi1 never writes over its own input)"
                )
    seen: list[tuple[str, str]] = []
    for olabel, o in outs + dirs:
        for slabel, s in seen:
            if same_file(o, s):
                raise Phi1Error(f"{olabel} {o} and {slabel} {s} are the same path; give each output its own path")
        seen.append((olabel, o))


# ---------------------------------------------------------------------------------------------
# Output directories


def read_marker(path: str | os.PathLike) -> dict | None:
    m = Path(path) / MARKER
    try:
        data = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owned_by(path: str | os.PathLike, owner: str) -> bool:
    marker = read_marker(path)
    return bool(marker) and marker.get("owner") == owner


def user_entries(path: str | os.PathLike) -> list[str]:
    """What a directory holds besides phi1's own marker, lock and pid-named temporary files."""
    return sorted(e for e in os.listdir(path) if e not in (MARKER, DIR_LOCK, LEDGER) and not _TEMP_RE.match(e))


def check_output_dir(path: str | os.PathLike, owner: str, *, overwrite: bool = False, flag: str = "--out",
                     can_overwrite: bool = True) -> None:
    """Refuse (one Phi1Error) a file at `path`, or a non-empty directory whose marker does not name
    `owner`, unless `overwrite`. Writes nothing; `claim_output_dir` and `phi1.utils.writes` use it.
    `can_overwrite`: the command has --overwrite, so the message may suggest it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise Phi1Error(f"{flag} {p}: exists and is not a directory; choose a directory path")
    if not p.is_dir() or overwrite:
        return
    entries = user_entries(p)
    marker = read_marker(p)
    if entries and not (marker and marker.get("owner") == owner):
        who = f"by `phi1 {marker['owner']}`" if marker and marker.get("owner") else "by a phi1 command"
        what = f"was written {who}" if marker else "was not written by phi1"
        fix = " or pass --overwrite" if can_overwrite else ""
        raise Phi1Error(
            f"{flag} {p}: directory is not empty ({len(entries)} entries) and {what}, not `phi1 {owner}`; "
            f"choose a new directory{fix} (phi1 never deletes files it did not write)"
        )


def claim_output_dir(path: str | os.PathLike, owner: str, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Make `path` a directory this command may write into, and mark it as the command's.

    Allowed: a new directory, an empty one, or one whose marker names `owner` (a rerun or a
    resume). Anything else raises a Phi1Error unless `overwrite`. The marker is written before
    the command writes anything else, so a directory phi1 wrote is always recognisable.
    """
    p = Path(path)
    check_output_dir(p, owner, overwrite=overwrite, flag=flag)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Phi1Error(f"{flag} {p}: cannot create the directory: {describe_oserror(exc)}") from None
    marker = read_marker(p) or {}
    if marker.get("owner") != owner:
        atomic_write_json(p / MARKER, {"owner": owner, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()})
    return p


def remove_own_files(root: str | os.PathLike, names: Iterable[str]) -> int:
    """Delete the listed files under `root` (names a manifest of ours recorded); nothing else."""
    root = Path(root)
    n = 0
    for name in names:
        f = root / name
        if f.parent.resolve() != root.resolve() and not _is_within(f.resolve(), root.resolve()):
            continue  # a manifest entry pointing outside its directory is never followed
        try:
            f.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


# ---------------------------------------------------------------------------------------------
# One writer per output


class OutputLock:
    """An exclusive lock on an output (a run directory or a file), released by the OS on death.

    For a directory the lock file is `DIR/.phi1.lock`; for a file `.NAME.lock` beside it. The
    holder's pid is written into the lock file so that a second writer can name it. Entering
    also removes stale temporary files left by dead writers of this output.
    """

    def __init__(self, target: str | os.PathLike, *, is_dir: bool | None = None, what: str = "output"):
        self.target = Path(target)
        if is_dir is None:
            is_dir = self.target.is_dir()
        self.is_dir = is_dir
        self.what = what
        self.lock_path = self.target / DIR_LOCK if is_dir else self.target.with_name(f".{self.target.name}.lock")
        self.fd = -1

    def acquire(self) -> "OutputLock":
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Phi1Error(f"{self.lock_path}: cannot create the lock file: {describe_oserror(exc)}") from None
        try:
            self._lock(fd)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise Phi1Error(
                f"{self.target}: this {self.what} is in use by another phi1 process (pid {holder}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise Phi1Error(f"{self.lock_path}: cannot write the lock file: {describe_oserror(exc)}") from None
        self.fd = fd
        if self.is_dir:
            clean_stale_temps(self.target)
        else:
            clean_stale_temps(self.target.parent, stem=self.target.name)
        return self

    ORPHAN_WAIT = 30.0  # seconds a dead holder's worker processes get to die (they die with their parent)

    def _lock(self, fd: int) -> None:
        """flock, or BlockingIOError when another live writer holds it. A writer killed with kill -9
        leaves the lock held for a moment by its worker processes, which die with it: when the pid in
        the lock file is dead, wait for them (up to ORPHAN_WAIT) instead of refusing a rerun."""
        import time

        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                if not holder.isdigit() or _pid_alive(int(holder)):
                    raise
                deadline = deadline or time.monotonic() + self.ORPHAN_WAIT
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Temporary files that name their writer


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, *, stem: str | None = None) -> list[Path]:
    """Remove `.NAME.phi1-PID-*.tmp` files and directories in `directory` whose writer is dead.

    Only names in phi1's own temp format are touched, so a user's files are never removed. With
    `stem`, only temps of that file name are considered.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or (stem is not None and not name.startswith(f".{stem}.phi1-")):
            continue
        if _pid_alive(int(m.group(1))):
            continue
        f = d / name
        try:
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f)
            else:
                f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------------------------------
# OS errors in words


_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file path, not a directory",
    errno.ENOTDIR: "a parent of this path is a file, not a directory",
    errno.EEXIST: "choose a new path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EADDRINUSE: "choose another port or stop the process using it",
}


def describe_oserror(exc: OSError) -> str:
    """`No space left on device (ENOSPC): free some space...` for an OSError."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    words = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or -1)
    return f"{words}" + (f" ({name})" if name else "") + (f"; {hint}" if hint else "")


def oserror_line(exc: OSError) -> str:
    """One line for an OSError: the path(s) it concerns, then the errno in words."""
    paths = [p for p in (exc.filename, exc.filename2) if p]
    where = " -> ".join(os.fspath(p) if not isinstance(p, bytes) else p.decode(errors="replace") for p in paths)
    return f"{where}: {describe_oserror(exc)}" if where else describe_oserror(exc)
