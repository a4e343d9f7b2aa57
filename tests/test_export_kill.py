"""A killed `phi1 export gguf` leaves nothing model-sized behind (issue 30, F1).

The export is killed with SIGKILL at several points (right after its first temp file exists, in the
middle of writing the GGUF, with the full-precision staging file of a quantizer route on disk, just
before the rename and just after it); the rerun of the same command must give a file byte-identical
to an uninterrupted export and leave no temp file. Kill points are exact: the child process wraps
the export's own steps and kills itself there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gguf")

CHILD = textwrap.dedent('''
    import os, shutil, signal, sys
    from pathlib import Path
    import phi1.export.gguf_export as ge
    from phi1.cli import main

    point, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "temp":
        real_temp = ge._temp_beside
        ge._temp_beside = lambda o: (real_temp(o), die())[0]
    elif point == "mid-write":
        import gguf
        real_kv = gguf.GGUFWriter.write_kv_data_to_file
        def kv(self):
            real_kv(self)
            self.fout[0].flush() if isinstance(getattr(self, "fout", None), list) else None
            die()
        gguf.GGUFWriter.write_kv_data_to_file = kv
    elif point == "staged":  # a quantizer route: the f32 staging file is complete, the quantizer runs
        ge.check_type = lambda q: "fake-route"
        def quantize(route, src, dst, qtype):
            assert Path(src).stat().st_size > 0 and Path(src).name.startswith(".")
            shutil.copyfile(src, dst)
            die()
        ge._llama_quantize = quantize
    elif point in ("before-rename", "after-rename"):
        real_replace = os.replace
        def replace(a, b, *k, **kw):
            if Path(b) == Path(out):
                if point == "before-rename":
                    die()
                real_replace(a, b, *k, **kw)
                die()
            return real_replace(a, b, *k, **kw)
        os.replace = replace
    sys.exit(main(["export", "gguf", "--model", model, "--out", out, "--type", "f16", "--no-check"]))
''')


def _export(*argv, cwd):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PHI1_NO_PROGRESS": "1"})


def _in_process(model, out) -> int:
    """The same command in this process (only the killed runs need a process of their own)."""
    from phi1.cli import main

    return main(["export", "gguf", "--model", str(model), "--out", str(out), "--type", "f16", "--no-check"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> bytes:
    """An uninterrupted export's bytes."""
    d = tmp_path_factory.mktemp("ref")
    assert _in_process(tiny_model_dir, d / "m.gguf") == 0
    return (d / "m.gguf").read_bytes()


@pytest.mark.parametrize("point", ["temp", "mid-write", "staged", "before-rename", "after-rename"])
def test_a_killed_export_reruns_to_the_same_bytes_and_leaves_no_temp(point, tmp_path, tiny_model_dir, reference):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    if point in ("before-rename", "after-rename"):  # an earlier export of ours is there: it must stay provable
        assert _in_process(tiny_model_dir, out) == 0
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    k = _export(str(child), point, str(tiny_model_dir), str(out), cwd=tmp_path)
    assert k.returncode == -9, (point, k.returncode, k.stderr[-2000:])
    left = [p.name for p in out_dir.iterdir() if ".phi1-" in p.name and p.name.endswith(".tmp")]
    if point == "after-rename":  # the new file is in place but the command never finished: still its own
        assert not left and out.read_bytes() == reference
    else:
        assert left, f"{point}: the kill left no temp file, so it tested nothing"

    assert _in_process(tiny_model_dir, out) == 0, point  # the same command again, no --overwrite
    assert out.read_bytes() == reference
    assert sorted(p.name for p in out_dir.iterdir()) == [".m.gguf.lock", ".phi1-files.json", "m.gguf"]


def test_two_exports_onto_one_output_are_not_run_at_once(tmp_path, tiny_model_dir):
    """The second export of the same --out fails at once, naming the first one's pid."""
    import fcntl

    out = tmp_path / "m.gguf"
    lock = tmp_path / ".m.gguf.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        r = _export("-m", "phi1", "export", "gguf", "--model", str(tiny_model_dir), "--out", str(out),
                    "--type", "f16", "--no-check", cwd=tmp_path)
    finally:
        os.close(fd)
    assert r.returncode == 2 and f"in use by another phi1 process (pid {os.getpid()})" in r.stderr, r.stderr
    assert not out.exists()
