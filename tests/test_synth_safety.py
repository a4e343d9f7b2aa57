"""`phi1 synth` never loses or doubles a user's records: one writer per output, unique-index
resume, outputs that are not the input, and one error line on a full or read-only disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from safety_support import small_tmpfs
from phi1.errors import Phi1Error
from phi1.synth.job import JobConfig, run_job
from phi1.synth.validate import ValidateConfig, validate_file
from phi1.utils.io import read_jsonl
from phi1.utils.safety import OutputLock


def cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "phi1", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def job_args(url, out, count, *extra):
    return ["synth", "textbooks", "--endpoint", url, "--model", "fake-model", "--count", str(count),
            "--out", str(out), "--seed", "7", "--timeout", "5", "--base-delay", "0.01", *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def no_temps(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_second_job_on_the_same_out_fails_at_once_and_the_first_writes_each_record_once(tmp_path):
    out, n = tmp_path / "same.jsonl", 24
    lock = tmp_path / ".same.jsonl.lock"
    with FakeOpenAI(latency=0.25) as srv:  # 24 records / 2 in flight * 0.25 s: the first job runs ~3 s
        first = cli(*job_args(srv.url, out, n, "--concurrency", "2"))
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(first.pid) and srv.n_requests > 0):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first job never took its lock"
            time.sleep(0.02)
        t0 = time.monotonic()
        second = cli(*job_args(srv.url, out, n, "--concurrency", "2"))
        _, err2 = second.communicate(timeout=60)
        waited = time.monotonic() - t0
        assert second.returncode == 2, err2
        assert first.poll() is None, "the first job had already finished: the test did not overlap them"
        lines = error_lines(err2)
        assert len(lines) == 1 and lines[0].startswith("phi1: error:") and f"pid {first.pid}" in lines[0], err2
        assert "Traceback" not in err2
        out1, err1 = first.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert json.loads(out1.strip().splitlines()[-1])["complete"]
        assert srv.n_requests == n  # the second job sent nothing
    recs = list(read_jsonl(out))
    assert len(recs) == n and sorted(r["meta"]["index"] for r in recs) == list(range(n))
    assert len({r["id"] for r in recs}) == n
    assert waited < 20  # it failed at once rather than waiting for the lock
    assert lock.read_text() == ""  # released (and emptied) by the first job


def test_a_ledger_with_repeated_indices_is_counted_by_unique_index_and_reported(tmp_path, caplog):
    out = tmp_path / "tb.jsonl"
    with FakeOpenAI() as srv:
        base = dict(kind="textbooks", endpoint=srv.url, model="fake-model", out=str(out), base_delay=0.01)
        run_job(JobConfig(count=10, **base))
    lines = out.read_text().splitlines(keepends=True)
    with out.open("a") as fh:  # what two jobs of an older phi1 left: some records twice
        fh.writelines(lines[2:6])
    assert len(out.read_text().splitlines()) == 14

    # 20 wanted, 10 distinct present, the endpoint refuses everything: not complete, 10 missing.
    with FakeOpenAI(fault_fn=lambda i, body: "500") as srv:
        rep = run_job(JobConfig(count=20, max_attempts=1, max_consecutive_failures=0,
                                **{**base, "endpoint": srv.url}))
    assert (rep.already_done, rep.generated, rep.duplicates, rep.present) == (10, 0, 4, 10)
    assert not rep.complete and rep.missing == 10
    assert "4 lines repeat a record index" in caplog.text

    # 14 lines for 14 distinct indices would look complete with line counting: it is not.
    with FakeOpenAI(fault_fn=lambda i, body: "500") as srv:
        rep = run_job(JobConfig(count=14, max_attempts=1, max_consecutive_failures=0,
                                **{**base, "endpoint": srv.url}))
    assert not rep.complete and rep.missing == 4

    with FakeOpenAI() as srv:
        rep = run_job(JobConfig(count=20, **{**base, "endpoint": srv.url}))
        assert len(srv.requests) == 10  # only the missing ones were sent
    assert rep.complete and (rep.already_done, rep.generated, rep.duplicates) == (10, 10, 4)
    recs = list(read_jsonl(out))
    assert len(recs) == 24 and {r["meta"]["index"] for r in recs} == set(range(20))

    # validate keeps the first record of each id and says why it dropped the repeats
    report = validate_file(ValidateConfig("textbooks", str(out), str(tmp_path / "v.jsonl"), decontaminate=False,
                                          min_words=1))
    assert report["rejection_reasons"].get("duplicate record") == 4
    rejected = list(read_jsonl(tmp_path / "v.jsonl.rejected.jsonl"))
    dup = [r for r in rejected if any(x.startswith("duplicate record") for x in r["meta"]["validation"]["reasons"])]
    assert sorted(r["id"] for r in dup) == sorted(json.loads(x)["id"] for x in lines[2:6])


def _input(tmp_path: Path) -> Path:
    inp = tmp_path / "gen.jsonl"
    inp.write_text("".join(json.dumps({"id": f"s{i}", "text": f"story {i} " * 50, "meta": {}}) + "\n"
                           for i in range(3)))
    return inp


def test_validate_refuses_to_write_over_its_input_from_the_library(tmp_path):
    inp = _input(tmp_path)
    before = inp.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(inp)
    hard = tmp_path / "hard.jsonl"
    os.link(inp, hard)
    cases = [
        dict(out=str(inp)),                      # --out == --input
        dict(out="./" + os.path.relpath(inp)),   # the same file spelled differently
        dict(out=str(link)),                     # through a symlink
        dict(out=str(hard)),                     # a hard link
        dict(out=str(tmp_path / "ok.jsonl"), report=str(inp)),  # --report
    ]
    for kw in cases:
        with pytest.raises(Phi1Error, match="same file as the input"):
            validate_file(ValidateConfig("stories", str(inp), decontaminate=False, **kw))
        assert inp.read_bytes() == before, kw
    # OUT.rejected.jsonl is the input
    rej_in = tmp_path / "x.jsonl.rejected.jsonl"
    rej_in.write_bytes(before)
    with pytest.raises(Phi1Error, match="rejected.jsonl"):
        validate_file(ValidateConfig("stories", str(rej_in), str(tmp_path / "x.jsonl"), decontaminate=False))
    assert rej_in.read_bytes() == before
    assert not (tmp_path / "ok.jsonl").exists() and not (tmp_path / "x.jsonl").exists()


def test_validate_holds_a_lock_on_its_output(tmp_path):
    inp, out = _input(tmp_path), tmp_path / "v.jsonl"
    with OutputLock(out, is_dir=False):
        with pytest.raises(Phi1Error, match=f"pid {os.getpid()}"):
            validate_file(ValidateConfig("stories", str(inp), str(out), decontaminate=False))
    assert not out.exists()
    validate_file(ValidateConfig("stories", str(inp), str(out), decontaminate=False, min_words=1))
    assert out.exists() and not no_temps(tmp_path)


def test_full_then_read_only_disk_is_one_error_line_and_loses_nothing(tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        out, n = disk / "tb.jsonl", 300  # ~1 KB per record: 64 KB holds a few dozen
        with FakeOpenAI() as srv:
            proc = cli(*job_args(srv.url, out, n, "--concurrency", "4"))
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, err
            lines = error_lines(err)
            assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
            assert str(out) in lines[0]
            assert not no_temps(disk)
            text = out.read_text()
            assert text.endswith("\n")  # no torn record: the failed write was cut back off
            kept = [json.loads(x) for x in text.splitlines()]
            assert 0 < len(kept) < n

            # validate writing onto the full disk: one line, no temp file
            proc = cli("synth", "validate", "--kind", "textbooks", "--input", out, "--out", disk / "v.jsonl",
                       "--no-decontam")
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, err
            lines = error_lines(err)
            assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
            assert not no_temps(disk) and not (disk / "v.jsonl").exists()

            # read-only: one line, nothing changes
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            proc = cli(*job_args(srv.url, out, n, "--concurrency", "4"))
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, err
            lines = error_lines(err)
            assert len(lines) == 1 and "Read-only file system" in lines[0] and "Traceback" not in err, err
            assert out.read_text() == text

            # room again: the same command finishes, every record exactly once
            subprocess.run(["mount", "-o", "remount,rw,size=2m", str(disk)], check=True)
            sent = len(srv.requests)
            proc = cli(*job_args(srv.url, out, n, "--concurrency", "4"))
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert len(srv.requests) - sent == n - len(kept)  # what was written before was not asked again
        recs = list(read_jsonl(out))
        assert len(recs) == n and sorted(r["meta"]["index"] for r in recs) == list(range(n))
        assert recs[: len(kept)] == kept
