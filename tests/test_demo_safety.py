"""`phi1 demo` / `phi1 ablate` never write into a directory they did not create, and two runs on
one directory cannot interleave; the exported model is replaced whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi1.demo.pipeline import export_model
from phi1.demo.runner import own_run_dir
from phi1.errors import Phi1Error
from phi1.utils.safety import MARKER, read_marker


def phi1(*args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("phi1: error:"), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["demo", "ablate"])
def test_a_foreign_non_empty_directory_is_refused_and_left_intact(tmp_path, command):
    mine = tmp_path / "my-project"
    (mine / "src").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "src" / "main.py").write_text("print('hi')\n")
    if command == "demo":
        (mine / ".stages").mkdir()  # one of the demo's state names, without demo.json: still not a demo dir
    before = snapshot(mine)
    r = phi1(command, "--out", mine)
    line = one_error_line(r)
    assert "not empty" in line and "choose a new directory" in line and "--overwrite" not in line
    assert snapshot(mine) == before  # nothing written: no marker, no lock, no stage files


def test_a_directory_of_the_other_command_is_refused(tmp_path):
    run = tmp_path / "run"
    with own_run_dir(run, "ablate"):
        (run / ".stages").mkdir()
    before = snapshot(run)
    line = one_error_line(phi1("demo", "--out", run))
    assert "written by `phi1 ablate`" in line
    assert snapshot(run) == before


def test_a_second_demo_on_a_locked_run_dir_fails_at_once_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    with own_run_dir(run, "demo"):
        (run / "demo.json").write_text("{}")
        r = phi1("demo", "--out", run)
        line = one_error_line(r)
        assert f"pid {os.getpid()}" in line
        assert sorted(os.listdir(run)) == sorted([MARKER, ".phi1.lock", "demo.json"])
    assert read_marker(run)["owner"] == "demo"


def test_new_empty_own_and_older_demo_dirs_are_accepted(tmp_path):
    with own_run_dir(tmp_path / "new", "demo") as d:  # a new directory
        assert read_marker(d)["owner"] == "demo"
    (tmp_path / "empty").mkdir()
    with own_run_dir(tmp_path / "empty", "ablate") as d:
        assert read_marker(d)["owner"] == "ablate"
    with own_run_dir(tmp_path / "new", "demo"):  # its own, again (a resume)
        pass
    # a run directory written by an older phi1 demo, before the marker: adopted, nothing removed
    old = tmp_path / "old-demo"
    (old / ".stages").mkdir(parents=True)
    (old / ".stages" / "collect.json").write_text(json.dumps({"name": "collect"}))
    (old / "demo.json").write_text(json.dumps({"name": "demo-micro"}))
    (old / "data").mkdir()
    (old / "data" / "raw.jsonl").write_text("{}\n")
    before = snapshot(old)
    with own_run_dir(old, "demo"):
        pass
    after = snapshot(old)
    assert {k: v for k, v in after.items() if k not in (MARKER, ".phi1.lock")} == before
    assert read_marker(old)["owner"] == "demo"
    # ...but an older demo's directory is not an ablation's, and a file is not a directory
    old2 = tmp_path / "old-demo-2"
    (old2 / ".stages").mkdir(parents=True)
    (old2 / "demo.json").write_text("{}")
    with pytest.raises(Phi1Error, match="not empty"):
        with own_run_dir(old2, "ablate"):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(Phi1Error, match="not a directory"):
        with own_run_dir(tmp_path / "file", "demo"):
            pass


def test_export_model_uses_pid_named_temps_and_replaces_whole(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text('{"v": 1}')
    (src / "model.safetensors").write_bytes(b"\0" * 100)
    root = tmp_path / "run"
    root.mkdir()
    stale = root / ".model.phi1-999999999-abc123.tmp"  # left by a dead writer (no such pid)
    stale.mkdir()
    (stale / "half").write_text("x")
    legacy = root / ".model.tmp"  # the temp name of an older phi1
    legacy.mkdir()
    mine = root / "keep.tmp"  # not phi1's temp format: never touched
    mine.write_text("user file")
    dst = root / "model"
    export_model(src, dst)
    assert (dst / "config.json").read_text() == '{"v": 1}'
    assert not stale.exists() and not legacy.exists() and mine.read_text() == "user file"
    (src / "config.json").write_text('{"v": 2}')
    export_model(src, dst)  # over an existing export
    assert (dst / "config.json").read_text() == '{"v": 2}'
    assert sorted(os.listdir(root)) == ["keep.tmp", "model"]
    assert oct(dst.stat().st_mode & 0o777) == oct(0o755 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
