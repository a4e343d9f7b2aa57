"""Eval outputs: never a foreign directory, one writer at a time, one line for a bad --out (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from safety_support import cli, one_error_line


def humaneval(model, out) -> list:
    return ["eval", "humaneval", "--model", model, "--out", out, "--max-problems", "1", "--max-new-tokens", "2",
            "--workers", "1", "--device", "cpu"]


def test_humaneval_out_an_existing_file_is_one_line(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "results"
    f.write_text("my results\n")
    rc, lines = cli(humaneval(tiny_model_dir, f), capsys)
    one_error_line(rc, lines, str(f), "not a directory")
    assert f.read_text() == "my results\n"


def test_humaneval_out_a_foreign_directory_is_refused(tmp_path, tiny_model_dir, capsys):
    d = tmp_path / "project"
    d.mkdir()
    (d / "samples.jsonl").write_text('{"mine": true}\n')
    rc, lines = cli(humaneval(tiny_model_dir, d), capsys)
    one_error_line(rc, lines, str(d), "not empty", "eval humaneval")
    assert sorted(p.name for p in d.iterdir()) == ["samples.jsonl"]
    # mbpp may not take over a humaneval directory either (a humaneval run writes its marker).
    he = tmp_path / "he"
    rc, lines = cli(humaneval(tiny_model_dir, he), capsys)
    assert rc == 0, lines
    assert json.loads((he / ".phi1-output.json").read_text())["owner"] == "eval humaneval"
    rc, lines = cli(humaneval(tiny_model_dir, he), capsys)  # its own directory: a rerun resumes
    assert rc == 0, lines
    from phi1.errors import Phi1Error
    from phi1.eval.benchmark import claim_eval_dir

    with pytest.raises(Phi1Error, match=r"written by `phi1 eval humaneval`, not `phi1 eval mbpp`"):
        claim_eval_dir(he, "mbpp")


def test_concurrent_eval_writer_is_refused_naming_its_pid(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "busy"
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        "from phi1.eval.benchmark import claim_eval_dir\n"
        "from phi1.utils.safety import OutputLock\n"
        f"d = claim_eval_dir({str(out)!r}, 'humaneval')\n"
        "with OutputLock(d, is_dir=True, what='eval output directory'):\n"
        f"    pathlib.Path({str(ready)!r}).write_text('1')\n"
        "    time.sleep(60)\n")])
    try:
        deadline = time.time() + 60
        while not ready.exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the lock holder did not start"
        rc, lines = cli(humaneval(tiny_model_dir, out), capsys)
        one_error_line(rc, lines, f"pid {holder.pid}", str(out))
        assert not (out / "samples.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died: the kernel dropped its lock, and the directory is usable at once.
    rc, lines = cli(humaneval(tiny_model_dir, out), capsys)
    assert rc == 0, lines


@pytest.mark.parametrize("command", ["execute", "loss"])
def test_file_outputs_refuse_a_directory(command, tmp_path, tiny_model_dir, capsys):
    d = tmp_path / "outdir"
    d.mkdir()
    (d / "keep.txt").write_text("mine\n")
    if command == "execute":
        samples = tmp_path / "s.jsonl"
        samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
        args = ["eval", "execute", "--samples", samples, "--out", d, "--workers", "1"]
    else:
        args = ["eval", "loss", "--model", tiny_model_dir, "--max-problems", "1", "--device", "cpu", "--out", d]
    rc, lines = cli(args, capsys)
    one_error_line(rc, lines, f"--out {d}", "is a directory")
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    # Their own file types are simply replaced on a rerun.
    if command == "loss":
        f = tmp_path / "loss.json"
        for _ in range(2):
            rc, lines = cli(args[:-1] + [f], capsys)
            assert rc == 0, lines
        assert json.loads(f.read_text())["problems"] == 1
