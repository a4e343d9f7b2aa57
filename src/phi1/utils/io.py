"""File helpers shared by every stage: atomic writes, JSON files read with one-line errors, JSONL streams."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from phi1.errors import Phi1Error

# Called as hook(path, append) once a file is complete under its name (`atomic_write`) or opened for
# appending (`JsonlAppender`): `phi1.utils.writes` records the files a command declared the moment
# they appear, so that a run killed later can still prove they are its own.
WRITE_HOOKS: set = set()


def note_written(path: os.PathLike, append: bool = False, staged: os.PathLike | None = None) -> None:
    """Tell the active write plans that `path` is now complete (or open for appending); for writers
    that rename a file into place themselves instead of using `atomic_write`. With `staged`, the
    complete temp file that is about to be renamed onto `path` (call it again after the rename):
    a kill between the two leaves either file provably the command's."""
    for hook in list(WRITE_HOOKS):
        hook(path, append, staged)


def json_loads(text: str | bytes) -> Any:
    """`json.loads` for text a user gave: nesting deeper than the parser's recursion limit is a
    `json.JSONDecodeError` ("nested too deeply"), like any other malformed JSON, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text if isinstance(text, str) else ""
        raise json.JSONDecodeError("nested too deeply to read", doc, 0) from None


def temp_beside(path: str | os.PathLike, tag: str = "w") -> Path:
    """`.NAME.phi1-PID-TAG.tmp` beside `path`: the one temp pattern, which a later run removes once
    this process is dead (`phi1.utils.safety.clean_stale_temps`). `tag`: letters, digits, `_`."""
    path = Path(path)
    return path.with_name(f".{path.name}.phi1-{os.getpid()}-{tag}.tmp")


def temp_prefix(name: str) -> str:
    """Prefix for `tempfile.mkstemp/mkdtemp(prefix=...)`: `.NAME.phi1-PID-` (add suffix='.tmp');
    `phi1.utils.safety.clean_stale_temps` removes those whose writer died."""
    return f".{name}.phi1-{os.getpid()}-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    A crash or an exception leaves any previous `path` untouched and no
    half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), 0o644 & ~umask())  # mkstemp makes 0600; give the usual mode
            os.fsync(fh.fileno())
        note_written(path, staged=tmp)  # the active write plans learn the file before and after the rename
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    note_written(path)


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def directory_commit(target: str | os.PathLike, *, replace: bool = False, mode: int = 0o777):
    """Build a directory at `target` whole or not at all: yields an empty temp sibling named after
    this process (`.NAME.phi1-PID-*.tmp`, which `phi1.utils.safety.clean_stale_temps` removes once the
    writer is dead), renamed to `target` when the block ends without an error, removed when it raises.

    An existing `target` is an error unless `replace`: then it is moved aside under a temp name, the
    new directory renamed in, and only then the old one removed (put back if the rename fails).
    The directory gets `mode` less the umask (mkdtemp makes 0700)."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, mode & ~umask())
        yield tmp
        if not target.exists():
            os.replace(tmp, target)
            return
        if not replace:
            raise FileExistsError(errno.EEXIST, "exists; phi1 builds a new directory only where there is none",
                                  str(target))
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
        os.replace(target, old)  # onto the empty directory
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=False)
        fh.write("\n")


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A text file a user gave (a template, a prompt), decoded strictly as UTF-8; a file that is not
    UTF-8 is one Phi1Error naming `what`, the file and the byte."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Phi1Error(f"{what} {path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None


def read_json(path: str | os.PathLike, what: str, expect: type | None = None) -> Any:
    """A JSON file a user pointed a command at (a config, a manifest, a tree, a report).

    A missing file, a directory, bytes that are not UTF-8, malformed JSON, or (with `expect`)
    a top-level value of another type raise one Phi1Error naming `what` and the file.
    """
    path = Path(path)
    if path.is_dir():
        raise Phi1Error(f"{what} {path}: is a directory; give a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Phi1Error(f"{what} {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise Phi1Error(f"{what} {path}: not UTF-8 text (byte {exc.start}); is this the right file?") from None
    try:
        obj = json_loads(text)
    except json.JSONDecodeError as exc:
        raise Phi1Error(f"{what} {path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                        "fix or regenerate the file") from None
    if expect is not None and not isinstance(obj, expect):
        want = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise Phi1Error(f"{what} {path}: expected {want}, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike, *, strict: bool = True, skip_flag: str | None = None,
               counts: dict | None = None) -> Iterator[dict]:
    """Yield one dict per non-empty line (of a plain or gzip-compressed `.gz` file).

    Lines are read as bytes and decoded strictly (a bad byte is never replaced silently).
    With strict=True a line that is not UTF-8, not JSON or not an object raises a Phi1Error
    naming file and line; the message names `skip_flag` (e.g. "--skip-bad-lines") only when
    the caller's command has such a flag. With strict=False bad lines are skipped and, when
    `counts` is given, counted there under `bad_utf8` / `bad_json`.
    """
    for _, obj in read_jsonl_numbered(path, strict=strict, skip_flag=skip_flag, counts=counts):
        yield obj


def read_jsonl_numbered(path: str | os.PathLike, *, strict: bool = True, skip_flag: str | None = None,
                        counts: dict | None = None) -> Iterator[tuple[int, dict]]:
    """`read_jsonl`, yielding (line number, record): for callers whose own checks name the line."""
    path = Path(path)
    if path.is_dir():
        raise Phi1Error(f"{path}: is a directory; give a JSONL file")
    if not path.exists():
        raise Phi1Error(f"{path}: file not found")
    fix = f"fix the line or pass {skip_flag} to skip and count such lines" if skip_flag else "fix the line"
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            raw = raw.strip()
            if not raw:
                continue
            kind, why = "bad_json", None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                kind, why = "bad_utf8", f"not valid UTF-8 (byte 0x{raw[exc.start:exc.start + 1].hex()} at column {exc.start + 1})"
            else:
                try:
                    obj = json_loads(line)
                except json.JSONDecodeError as exc:
                    why = f"malformed JSON ({exc.msg})"
                else:
                    if not isinstance(obj, dict):
                        why = f"expected a JSON object, got {type(obj).__name__}"
            if why is not None:
                if strict:
                    raise Phi1Error(f"{path}:{lineno}: {why}; {fix}") from None
                if counts is not None:
                    counts[kind] = counts.get(kind, 0) + 1
                continue
            yield lineno, obj


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically (temp file then rename); return the count."""
    n = 0
    with atomic_write(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n


class JsonlAppender:
    """Append records to a JSONL file so that a crash never leaves a torn line.

    On open, a trailing partial line (from a crash mid-write) is truncated away.
    Each record is appended whole (a short write is cut back) and fsynced when `sync` is set.
    """

    def __init__(self, path: str | os.PathLike, sync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        repair_torn_tail(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        note_written(self.path, append=True)

    def write(self, record: dict) -> None:
        """Append one line whole or not at all: after a short write (a full disk) the file is cut
        back to where the record started, and the OSError names the file."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
            if self.sync:
                os.fsync(self.fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)  # else the next open cuts the torn tail off
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def repair_torn_tail(path: Path) -> int:
    """Truncate a file after its last newline; return the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        # Scan back in blocks for the last newline.
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                cut = start + idx + 1
                if cut < size:
                    fh.truncate(cut)
                return size - cut
            pos = start
        fh.truncate(0)
        return size
