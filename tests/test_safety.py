"""The shared guards in phi1.utils.safety: real processes, real locks, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phi1.errors import Phi1Error
from phi1.utils.io import atomic_write_text, temp_prefix
from phi1.utils.safety import (
    MARKER,
    OutputLock,
    claim_output_dir,
    clean_stale_temps,
    describe_oserror,
    refuse_overlap,
    remove_own_files,
    same_file,
)


def _holder(target: Path, is_dir: bool) -> subprocess.Popen:
    """A real process that takes the lock and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from phi1.utils.safety import OutputLock
        OutputLock({str(target)!r}, is_dir={is_dir}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.parametrize("is_dir", [True, False])
def test_second_writer_fails_naming_the_holder_and_the_lock_dies_with_it(tmp_path, is_dir):
    target = tmp_path / ("run" if is_dir else "out.jsonl")
    if is_dir:
        target.mkdir()
    holder = _holder(target, is_dir)
    try:
        with pytest.raises(Phi1Error, match=rf"in use by another phi1 process \(pid {holder.pid}\)"):
            OutputLock(target, is_dir=is_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock: no stale-lock cleanup is needed.
    with OutputLock(target, is_dir=is_dir):
        pass


def test_a_rerun_right_after_kill_9_waits_for_the_dead_writers_workers(tmp_path):
    """kill -9 of a writer leaves its lock held for a moment by its worker processes (they die with it):
    a rerun then waits for them instead of refusing; a live writer's lock is still refused at once."""
    import time

    code = textwrap.dedent(f"""
        import os, sys, time
        from phi1.utils.safety import OutputLock
        OutputLock({str(tmp_path)!r}, is_dir=True).acquire()
        if os.fork() == 0:  # a worker: it inherits the locked descriptor, outlives the writer by 1.5 s
            os.setsid()
            time.sleep(1.5)
            os._exit(0)
        print("locked", flush=True)
        time.sleep(600)
    """)
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "locked"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    t0 = time.monotonic()
    with OutputLock(tmp_path, is_dir=True):  # the writer is dead, its worker holds the lock a little longer
        waited = time.monotonic() - t0
    assert 0.2 < waited < OutputLock.ORPHAN_WAIT, waited


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with OutputLock(tmp_path, is_dir=True):
        with pytest.raises(Phi1Error, match=str(os.getpid())):
            OutputLock(tmp_path, is_dir=True).acquire()


def test_claim_output_dir_rules(tmp_path):
    new = tmp_path / "new"
    claim_output_dir(new, "model init")
    assert (new / MARKER).is_file()
    (new / "config.json").write_text("{}")
    claim_output_dir(new, "model init")  # its own directory: a rerun is fine

    with pytest.raises(Phi1Error, match=r"written by `phi1 model init`, not `phi1 data pack`.*--overwrite"):
        claim_output_dir(new, "data pack")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"trained weights")
    with pytest.raises(Phi1Error, match=r"not empty \(1 entries\) and was not written by phi1"):
        claim_output_dir(foreign, "model init")
    claim_output_dir(foreign, "model init", overwrite=True)
    assert (foreign / "model.safetensors").read_bytes() == b"trained weights"

    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output_dir(empty, "data pack")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Phi1Error, match="not a directory"):
        claim_output_dir(tmp_path / "file", "data pack")


def test_remove_own_files_never_leaves_its_directory(tmp_path):
    root = tmp_path / "pack"
    root.mkdir()
    (root / "train-0.bin").write_bytes(b"a")
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"b")
    assert remove_own_files(root, ["train-0.bin", "../precious.bin", "gone.bin"]) == 1
    assert outside.exists() and not (root / "train-0.bin").exists()


def test_refuse_overlap_sees_through_symlinks_dots_and_hard_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    for out in ("in.jsonl", "./in.jsonl", str(src), "link.jsonl", "hard.jsonl", "sub/../in.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(Phi1Error, match="same file as the input"):
            refuse_overlap({"input": [str(src)]}, {"--out": out})
    with pytest.raises(Phi1Error, match="are the same path"):
        refuse_overlap({"input": "in.jsonl"}, {"--out": "o.jsonl", "--rejected": "./o.jsonl"})
    refuse_overlap({"input": "in.jsonl"}, {"--out": "o.jsonl", "--rejected": "r.jsonl"})
    assert same_file("in.jsonl", "link.jsonl") and not same_file("in.jsonl", "o.jsonl")


def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.jsonl.phi1-{dead.pid}-abc123.tmp"
    stale.write_text("partial")
    stale_dir = tmp_path / f".step-10.phi1-{dead.pid}-xyz.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x")
    live = tmp_path / f".out.jsonl.phi1-{os.getpid()}-def456.tmp"
    live.write_text("being written")
    users = [tmp_path / ".notes.tmp", tmp_path / "data.tmp", tmp_path / f".x.phi1-{dead.pid}.tmp"]
    for u in users:
        u.write_text("mine")
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale, stale_dir])
    assert live.exists() and all(u.exists() for u in users)


def test_atomic_write_names_its_temp_with_its_pid(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(a, b):
        seen.append(Path(a).name)
        return real(a, b)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_text(tmp_path / "x.json", "{}")
    assert seen and seen[0].startswith(temp_prefix("x.json")) and seen[0].endswith(".tmp")


def test_a_killed_writer_leaves_a_temp_the_next_lock_holder_removes(tmp_path):
    out = tmp_path / "out.jsonl"
    code = textwrap.dedent(f"""
        import time
        from phi1.utils.io import atomic_write
        with atomic_write({str(out)!r}) as fh:
            fh.write("half")
            fh.flush()
            print("writing", flush=True)
            time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    temps = list(tmp_path.glob(".out.jsonl.phi1-*.tmp"))
    assert len(temps) == 1 and not out.exists()
    with OutputLock(out, is_dir=False):
        pass
    assert not list(tmp_path.glob(".out.jsonl.phi1-*.tmp"))


def test_oserror_in_words():
    import errno

    msg = describe_oserror(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert msg.startswith("No space left on device (ENOSPC)") and "free some space" in msg


def test_cli_wraps_oserror_in_one_line(tmp_path):
    """An output under a path whose parent is a file: one line naming the path and the errno, exit 2."""
    (tmp_path / "in.jsonl").write_text('{"text": "x = 1"}\n')
    (tmp_path / "afile").write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "filter", str(tmp_path / "in.jsonl"), "--out",
                        str(tmp_path / "afile" / "o.jsonl"), "--min-score", "0"], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "afile") in lines[0] and ("ENOTDIR" in lines[0] or "EEXIST" in lines[0]), lines[0]
