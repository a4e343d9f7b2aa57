"""Helpers shared by the safety tests: the CLI in-process, the one-error-line check, a tiny disk."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from phi1.cli import main


def cli(args: list, capsys) -> tuple[int, list[str]]:
    """The real CLI in-process: exit status and the non-empty stderr lines."""
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def one_error_line(rc: int, lines: list[str], *expect: str) -> str:
    """Exit 2, exactly one `phi1: error:` line, no traceback, containing each of `expect`."""
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("phi1: error: ") and "Traceback" not in lines[0], lines
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str):
    """Mount a tmpfs of `size` (e.g. "256k") on `directory` for the block; skip the test unless root."""
    if os.geteuid() != 0:
        pytest.skip(f"the full-disk check mounts a {size} tmpfs, which needs root (running as uid {os.geteuid()})")
    directory.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
