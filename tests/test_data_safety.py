"""Issue 11 for the data stages and pack: never lose a user's files, one error line for every bad input.

Real files and real `phi1` processes: a pack into a foreign directory, a repack killed with
SIGKILL, two packs at once, outputs that are the input, bytes that are not UTF-8, workers
orphaned by a killed parent, and a full disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phi1.cli import main as cli_main
from safety_support import small_tmpfs
from phi1.data import pack as pack_mod
from phi1.data.shards import open_split
from phi1.errors import ConfigError, Phi1Error

ENV = {**os.environ, "PHI1_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
WORDS = ["def", "return", "x", "y", "for", "in", "range", "if", "else", "print", "self", "value", "total",
         "count", "item", "data", "list", "dict", "while", "yield", "lambda", "import", "class", "with"]


def phi1(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kw)


def start(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phi1", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV, start_new_session=True, **kw)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def write_docs(path: Path, n: int, words: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            body = " ".join(rng.choice(WORDS) for _ in range(words))
            fh.write(json.dumps({"id": f"r{i}", "text": f"def f{i}():\n    {body}\n"}) + "\n")
    return path


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for(cond, timeout: float, proc: subprocess.Popen | None = None, step: float = 0.01):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before the condition held: {proc.stderr.read()}")
        time.sleep(step)
    pytest.fail("timed out waiting")


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory) -> Path:
    """~5 MB of distinct records: several seconds of pack or dedup work on two cores."""
    return write_docs(tmp_path_factory.mktemp("big") / "big.jsonl", 15000, words=50, seed=1)


# ---- pack: whose directory, and replacing a pack ---------------------------------------------


def test_pack_refuses_a_foreign_directory_and_overwrite_keeps_foreign_files(tmp_path, tokenizer_dir):
    docs = write_docs(tmp_path / "docs.jsonl", 50)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"precious" * 100)  # the old code deleted every *.bin here
    (out / "notes.txt").write_text("keep me")
    before = digest(out)
    r = phi1("data", "pack", "--tokenizer", tokenizer_dir, "--input", docs, "--out", out, "--workers", "1")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert "--overwrite" in line and "not empty" in line
    assert digest(out) == before
    r = phi1("data", "pack", "--tokenizer", tokenizer_dir, "--input", docs, "--out", out, "--workers", "1",
             "--overwrite")
    assert r.returncode == 0, r.stderr
    assert open_split(out, "train").tokens > 0
    for name, h in before.items():  # written beside, never over or instead of, the user's files
        assert digest(out)[name] == h
    # A repack (ours now) needs no flag and still leaves the foreign files alone.
    r = phi1("data", "pack", "--tokenizer", tokenizer_dir, "--input", docs, "--out", out, "--workers", "1")
    assert r.returncode == 0, r.stderr
    after = digest(out)
    assert all(after[name] == h for name, h in before.items())
    m = json.loads((out / "manifest.json").read_text())
    listed = {sh["file"] for s in ("train", "val") for sh in m["splits"][s]["shards"]}
    assert {p.name for p in out.glob("*.bin")} == listed | {"weights.bin"}  # the first pack's shards are gone


def test_repack_killed_midway_keeps_old_pack_and_second_pack_is_refused(tmp_path, tokenizer_dir, big_jsonl):
    small = write_docs(tmp_path / "small.jsonl", 80)
    out = tmp_path / "shards"
    first = pack_mod.pack(tokenizer_dir, [small], out, workers=1, shard_tokens=500)
    old_tokens = np.concatenate(open_split(out, "train").arrays)
    old_manifest = (out / "manifest.json").read_bytes()
    old_files = {p.name for p in out.glob("*.bin")}
    proc = start("data", "pack", "--tokenizer", tokenizer_dir, "--input", big_jsonl, "--out", out,
                 "--workers", "1", "--shard-tokens", "2000")
    try:
        # The redo holds the directory: a second pack fails at once and names it. The redo is stopped
        # (SIGSTOP) while it holds the lock, so the state lasts however slowly the second command
        # starts on a loaded machine; then it goes on.
        wait_for(lambda: (out / ".phi1.lock").exists() and (out / ".phi1.lock").read_text().strip() == str(proc.pid),
                 30, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            r = phi1("data", "pack", "--tokenizer", tokenizer_dir, "--input", small, "--out", out, "--workers", "1")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert r.returncode == 2 and f"pid {proc.pid}" in one_error_line(r.stderr), r.stderr
        # Kill it once it has written new shard data (a finished new shard, not just a temp file); the
        # input is hundreds of shards long, so it is still packing.
        wait_for(lambda: len({p.name for p in out.glob("*.bin")} - old_files) >= 2, 120, proc)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # The old pack is still the pack: same manifest, same tokens.
    assert (out / "manifest.json").read_bytes() == old_manifest
    assert np.array_equal(np.concatenate(open_split(out, "train").arrays), old_tokens)
    # The next pack removes the abandoned generation and its stale temps, and is exact.
    again = pack_mod.pack(tokenizer_dir, [small], out, workers=1, shard_tokens=500)
    assert again["splits"]["train"]["tokens"] == first["splits"]["train"]["tokens"]
    assert np.array_equal(np.concatenate(open_split(out, "train").arrays), old_tokens)
    listed = {sh["file"] for s in ("train", "val") for sh in again["splits"][s]["shards"]}
    assert {p.name for p in out.glob("*.bin")} == listed
    assert not list(out.glob(".*.tmp")) and not (out / ".pack-pending.json").exists()


# ---- stage outputs ----------------------------------------------------------------------------


def test_dedup_never_writes_over_its_input(tmp_path, monkeypatch):
    from phi1.data.stages.dedup import run_dedup

    monkeypatch.chdir(tmp_path)
    inp = write_docs(tmp_path / "in.jsonl", 20)
    (tmp_path / "link.jsonl").symlink_to("in.jsonl")
    raw = inp.read_bytes()
    cases = [
        ["data", "dedup", "in.jsonl", "--out", "in.jsonl"],
        ["data", "dedup", "in.jsonl", "--out", "o.jsonl", "--rejected", "in.jsonl"],
        ["data", "dedup", "in.jsonl", "--out", "link.jsonl"],
        ["data", "dedup", "in.jsonl", "--out", "./in.jsonl"],
    ]
    r = phi1(*cases[0], cwd=tmp_path)
    assert r.returncode == 2 and "same file" in one_error_line(r.stderr)
    for argv in cases:
        assert cli_main(argv + ["--quiet"]) == 2, argv
        assert inp.read_bytes() == raw
    # Library level too (`phi1 data run` and `phi1 demo` call these directly).
    for out, rej in (("in.jsonl", None), ("./in.jsonl", None), ("link.jsonl", None), ("o.jsonl", "./in.jsonl")):
        with pytest.raises(Phi1Error, match="same file"):
            run_dedup("in.jsonl", out, rejected=rej, workers=1, quiet=True)
        assert inp.read_bytes() == raw
    assert not (tmp_path / "o.jsonl").exists()


def test_stage_output_someone_else_wrote_needs_overwrite(tmp_path):
    from phi1.data.stages.dedup import run_dedup
    from phi1.data.stages.filter import run_filter

    inp = write_docs(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    out.write_text("my hand-made file\n")
    with pytest.raises(Phi1Error, match="--overwrite"):
        run_dedup(inp, out, workers=1, quiet=True)
    assert out.read_text() == "my hand-made file\n"
    run_dedup(inp, out, workers=1, quiet=True, overwrite=True)
    assert out.read_text().count("\n") == 20
    run_dedup(inp, out, workers=1, quiet=True)  # its own output now: a rerun needs no flag
    rej = tmp_path / "rej.jsonl"
    rej.write_text("mine\n")
    with pytest.raises(Phi1Error, match="--rejected"):
        run_filter(out, tmp_path / "f.jsonl", min_score=0.5, rejected=rej, quiet=True)
    assert rej.read_text() == "mine\n"


# ---- bytes that are not UTF-8 -----------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path) -> Path:
    good = [json.dumps({"id": f"g{i}", "text": f"def g{i}(a):\n    return a + {i} * {i}\n"}) for i in range(12)]
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(("\n".join(good[:6]) + "\n").encode() + b'{"id": "bad", "text": "caf\xff\xfe"}\n'
                  + b'{"id": "torn", "text": \n' + ("\n".join(good[6:]) + "\n").encode())
    return p


def test_dedup_bad_bytes_fail_or_are_counted(tmp_path, mixed):
    from phi1.data.stages.dedup import run_dedup

    with pytest.raises(Phi1Error) as e:
        run_dedup(mixed, tmp_path / "o.jsonl", workers=1, quiet=True)
    assert f"{mixed}:7:" in str(e.value) and "UTF-8" in str(e.value) and "--skip-bad-lines" in str(e.value)
    rep = run_dedup(mixed, tmp_path / "o.jsonl", workers=1, quiet=True, skip_bad_lines=True)
    assert rep.dropped["bad_utf8"] == 1 and rep.dropped["bad_json"] == 1 and rep.kept == 12
    saved = json.loads((tmp_path / "o.jsonl.report.json").read_text())
    assert saved["dropped"]["bad_utf8"] == 1 and saved["dropped"]["bad_json"] == 1
    assert "\ufffd" not in (tmp_path / "o.jsonl").read_text()  # nothing was silently replaced
    r = phi1("data", "dedup", mixed, "--out", tmp_path / "o2.jsonl")  # two tasks: either bad line may be met first
    assert r.returncode == 2 and re.search(r"mixed\.jsonl:[78]: ", one_error_line(r.stderr))


def test_pack_and_tokenizer_bad_bytes_fail_or_are_counted(tmp_path, tokenizer_dir, mixed):
    from phi1.tokenizer import train_tokenizer

    with pytest.raises(Phi1Error) as e:
        pack_mod.pack(tokenizer_dir, [mixed], tmp_path / "p", workers=1)
    assert f"{mixed}:7:" in str(e.value) and "--skip-bad-lines" in str(e.value)
    m = pack_mod.pack(tokenizer_dir, [mixed], tmp_path / "p", workers=1, skip_bad_lines=True)
    assert m["bad_lines"]["bad_utf8"] == 1 and m["bad_lines"]["bad_json"] == 1
    assert m["splits"]["train"]["documents"] == 12
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["bad_lines"]["bad_utf8"] == 1
    with pytest.raises(Phi1Error) as e:
        train_tokenizer([mixed], vocab_size=400, min_frequency=1)
    assert f"{mixed}:7:" in str(e.value) and "--skip-bad-lines" in str(e.value)
    tok = train_tokenizer([mixed], vocab_size=400, min_frequency=1, skip_bad_lines=True)
    assert tok.skipped_lines == {"bad_utf8": 1, "bad_json": 1}
    r = phi1("tokenizer", "train", "--input", mixed, "--vocab-size", 400, "--out", tmp_path / "tok")
    assert r.returncode == 2 and ":7:" in one_error_line(r.stderr)
    r = phi1("tokenizer", "train", "--input", mixed, "--vocab-size", 400, "--min-frequency", 1,
             "--out", tmp_path / "tok", "--skip-bad-lines")
    assert r.returncode == 0 and "skipped 1 non-UTF-8 and 1 malformed" in r.stdout, r.stderr


def test_read_jsonl_names_only_a_real_flag(tmp_path):
    from phi1.utils.io import read_jsonl

    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{oops\n')
    with pytest.raises(Phi1Error) as e:
        list(read_jsonl(p))
    assert "x.jsonl:2:" in str(e.value) and "flag" not in str(e.value) and "--skip" not in str(e.value)
    with pytest.raises(Phi1Error, match="--skip-bad-lines"):
        list(read_jsonl(p, skip_flag="--skip-bad-lines"))
    counts: dict = {}
    assert list(read_jsonl(p, strict=False, counts=counts)) == [{"a": 1}] and counts == {"bad_json": 1}


# ---- messages ---------------------------------------------------------------------------------


def test_messages_for_directories_unknown_stages_bad_types_and_bad_classifiers(tmp_path):
    from phi1.data.stages.score import run_score
    from phi1.data.stages.dedup import run_dedup
    from phi1.data.pipeline import load_pipeline, run_pipeline

    (tmp_path / "adir").mkdir()
    with pytest.raises(Phi1Error, match="adir: no .jsonl or .jsonl.gz files under it; give a JSONL file"):
        run_dedup(tmp_path / "adir", tmp_path / "o.jsonl", workers=1, quiet=True)
    inp = write_docs(tmp_path / "in.jsonl", 5)

    def pipeline(stage: str) -> Path:
        p = tmp_path / "p.yaml"
        p.write_text(f"workdir: {tmp_path / 'wd'}\nstages:\n  - name: dd\n    kind: dedup\n    input: {inp}\n{stage}")
        return p

    with pytest.raises(ConfigError) as e:
        run_pipeline(pipeline(""), until="nope", quiet=True)
    assert "--until nope" in str(e.value) and "dd" in str(e.value)
    assert not (tmp_path / "wd").exists()
    for opt, expected in (('    threshold: "abc"\n', "expected float"), ("    num_buckets: [1, 2]\n", "expected int"),
                          ("    shingle: 1.5\n", "expected int")):
        with pytest.raises(ConfigError) as e:
            load_pipeline(pipeline(opt))
        assert "'dd'" in str(e.value) and opt.split(":")[0].strip() in str(e.value) and expected in str(e.value)
    clf = tmp_path / "clf.joblib"
    clf.write_bytes(b"\x80\x04garbage, not a pickle")
    (tmp_path / "clf.joblib.json").write_text(json.dumps({"format": "phi1-quality-classifier-v1", "task": "classification",
                                                          "label_field": "edu_label", "threshold": 3.0,
                                                          "encoder": {"spec": "hashing", "fingerprint": "x"}}))
    with pytest.raises(Phi1Error) as e:
        run_score(inp, tmp_path / "s.jsonl", classifier=clf, quiet=True)
    assert str(clf) in str(e.value) and "retrain" in str(e.value)
    # The real fingerprint, so that the unpickling itself is what fails.
    from phi1.data.features import describe, make_encoder

    side = json.loads((tmp_path / "clf.joblib.json").read_text())
    side["encoder"] = describe(make_encoder("hashing"))
    (tmp_path / "clf.joblib.json").write_text(json.dumps(side))
    with pytest.raises(Phi1Error) as e:
        run_score(inp, tmp_path / "s.jsonl", classifier=clf, quiet=True)
    assert "not a readable classifier" in str(e.value) and "retrain" in str(e.value)
    assert cli_main(["data", "score", str(inp), "--out", str(tmp_path / "s.jsonl"),
                     "--classifier", str(clf)]) == 2


# ---- leaks: workers and temp files ------------------------------------------------------------


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ..., session
            pids.append(int(d))
    return pids


def _wait_lock_free(out: Path, seconds: float = 10.0) -> None:
    """The killed run's output lock is released once the kernel has closed its last descriptor; under a
    loaded machine that can trail the last worker's exit a little. Longer than `seconds` is a leak:
    name the processes that still hold the lock file."""
    import fcntl

    from phi1.utils.safety import OutputLock

    lock = OutputLock(out, is_dir=False).lock_path
    deadline = time.time() + seconds
    while lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except BlockingIOError:
            if time.time() > deadline:
                holders = []
                for d in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        if any(os.path.realpath(f"/proc/{d}/fd/{f}") == str(lock.resolve())
                               for f in os.listdir(f"/proc/{d}/fd")):
                            holders.append((int(d), Path(f"/proc/{d}/cmdline").read_text().replace("\0", " ")[:120]))
                    except OSError:
                        continue
                raise AssertionError(f"{lock} still locked {seconds:.0f}s after the kill, held by {holders}")
        finally:
            os.close(fd)
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_killed_stage_leaves_no_workers_and_rerun_removes_its_temps(tmp_path, big_jsonl):
    out = tmp_path / "o.jsonl"
    proc = start("data", "dedup", big_jsonl, "--out", out, "--workers", "2", "--quiet")
    try:
        wait_for(lambda: len([p for p in _session_pids(proc.pid) if p != proc.pid]) >= 2, 30, proc)
        children = [p for p in _session_pids(proc.pid) if p != proc.pid]
        wait_for(lambda: list(tmp_path.glob(".o.jsonl.phi1-*.tmp")), 30, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.time()
        while _session_pids(proc.pid) and time.time() - t0 < 5:
            time.sleep(0.05)
        left = _session_pids(proc.pid)
        print(f"workers before the kill: {len(children)}, left {time.time() - t0:.2f}s after: {len(left)}")
        assert not left, f"orphaned workers {left} of killed pid {proc.pid}"
    finally:
        for p in _session_pids(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stale = list(tmp_path.glob(".o.jsonl.phi1-*.tmp"))
    assert stale  # a SIGKILL cannot clean up; the next run of this output does
    _wait_lock_free(out)
    from phi1.data.stages.dedup import run_dedup

    run_dedup(write_docs(tmp_path / "small.jsonl", 10), out, workers=1, quiet=True)
    assert not any(p.exists() for p in stale)


# ---- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    with small_tmpfs(tmp_path / "full", "256k") as d:
        yield d


def test_full_disk_is_one_line_and_leaves_no_temp(tmp_path, tiny_disk, tokenizer_dir):
    inp = write_docs(tmp_path / "in.jsonl", 3000, words=60, seed=3)  # ~1.2 MB of distinct records
    r = phi1("data", "dedup", inp, "--out", tiny_disk / "o.jsonl", "--workers", "1", "--quiet")
    assert r.returncode == 2
    assert "No space left on device" in one_error_line(r.stderr)
    assert not list(tiny_disk.glob("*.tmp")) and not list(tiny_disk.glob(".*.tmp")) and not (tiny_disk / "o.jsonl").exists()
    r = phi1("data", "pack", "--tokenizer", tokenizer_dir, "--input", inp, "--out", tiny_disk / "p", "--workers", "1")
    assert r.returncode == 2
    assert "No space left on device" in one_error_line(r.stderr)
    left = [p.name for p in (tiny_disk / "p").iterdir()] if (tiny_disk / "p").exists() else []  # a bare new folder goes
    assert not [n for n in left if n.endswith(".tmp") or n.endswith(".bin")], left


def test_pipeline_never_replaces_a_file_no_stage_wrote(tmp_path):
    from phi1.data.pipeline import run_pipeline

    inp = write_docs(tmp_path / "in.jsonl", 10)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "dd").mkdir()
    (wd / "dd" / "notes.txt").write_text("not a stage output\n")
    p = tmp_path / "p.yaml"
    p.write_text(f"workdir: {wd}\nstages:\n  - name: dd\n    kind: dedup\n    input: {inp}\n")
    with pytest.raises(Phi1Error, match="not written by stage 'dd'"):
        run_pipeline(p, quiet=True)
    assert (wd / "dd" / "notes.txt").read_text() == "not a stage output\n"
    shutil.rmtree(wd / "dd")
    assert run_pipeline(p, quiet=True)[0]["status"] == "ran"
    assert run_pipeline(p, quiet=True, force=True)[0]["status"] == "ran"  # its own output: rerun allowed
