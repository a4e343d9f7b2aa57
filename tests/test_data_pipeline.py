"""`phi1 data run`: the stages chained from one YAML file, resumable after an interruption."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from test_data_stages import copy_slice, phi1

from phi1.data.records import iter_records
from phi1.errors import ConfigError


def pipeline_yaml(tmp_path, src, bench_file, top_fraction=0.5):
    cfg = {
        "workdir": str(tmp_path / "work"),
        "workers": 1,
        "stages": [
            {"name": "collect", "sources": [str(src)]},
            {"name": "dedup", "threshold": 0.85},
            {"name": "annotate"},
            {"name": "classify", "n_estimators": 20},
            {"name": "score", "input": "dedup", "classifier": "@classify"},
            {"name": "filter", "top_fraction": top_fraction},
            {"name": "decontaminate", "benchmarks": ["humaneval"], "benchmark_files": [str(bench_file)]},
            {"name": "exercises", "input": "dedup"},
        ],
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ids(stage_dir) -> list[str]:
    return [r["id"] for r in iter_records(stage_dir)]


def test_pipeline_resumes_after_interruption(tmp_path):
    from phi1.data.pipeline import run_pipeline

    src = copy_slice(tmp_path / "src")
    bench = tmp_path / "mbpp.jsonl"  # written only after the first run has stopped midway
    pipe = pipeline_yaml(tmp_path, src, bench)
    work = tmp_path / "work"
    bench.write_text("{not json\n")  # a broken benchmark file: the decontaminate stage fails midway
    with pytest.raises(Exception, match="mbpp.jsonl"):
        run_pipeline(pipe, quiet=True)
    finished = sorted(p.parent.name for p in work.glob("*/manifest.json"))
    assert finished == ["annotate", "classify", "collect", "dedup", "filter", "score"]
    assert not (work / "decontaminate" / "manifest.json").exists()
    stamps = {str(p): p.stat().st_mtime_ns for p in work.glob("*/data/*.jsonl.gz")}
    bench.write_text(json.dumps({"task_id": 1, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b\n"}) + "\n")
    res = run_pipeline(pipe, quiet=True)
    status = {r["stage"]: r["status"] for r in res}
    assert status == {"collect": "skipped", "dedup": "skipped", "annotate": "skipped", "classify": "skipped",
                      "score": "skipped", "filter": "skipped", "decontaminate": "ran", "exercises": "ran"}
    assert all(Path(n).stat().st_mtime_ns == t for n, t in stamps.items())
    kept = list(iter_records(work / "decontaminate"))
    assert kept and all("edu_score" in r["meta"] for r in kept)
    assert len(kept) == len(_ids(work / "filter"))
    ex = list(iter_records(work / "exercises"))
    assert ex and all(r["meta"]["prompt"] + r["meta"]["completion"] == r["text"] for r in ex)
    for name in ("collect", "dedup", "filter", "decontaminate"):
        m = json.loads((work / name / "manifest.json").read_text())
        assert m["stage"] == name and m["kept"] == len(_ids(work / name))
    assert list((work / "filter" / "rejected").glob("*.jsonl.gz"))
    # Changing one stage's options reruns it and what depends on it, nothing upstream.
    pipe = pipeline_yaml(tmp_path, src, bench, top_fraction=0.3)
    status = {r["stage"]: r["status"] for r in run_pipeline(pipe, quiet=True)}
    assert status["score"] == "skipped" and status["filter"] == "ran" and status["decontaminate"] == "ran"
    assert status["exercises"] == "skipped"
    # A missing benchmark file is refused before anything runs.
    bench.unlink()
    with pytest.raises(ConfigError, match="benchmark file not found"):
        run_pipeline(pipeline_yaml(tmp_path, src, bench, top_fraction=0.2), quiet=True)
    assert json.loads((work / "filter" / "manifest.json").read_text())["kept"] == len(_ids(work / "filter"))


def test_pipeline_config_errors_and_cli(tmp_path):
    from phi1.data.pipeline import load_pipeline

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"name": "collect", "sources": ["x"], "tresh": 1}]}))
    with pytest.raises(ConfigError, match=r"stage 'collect' \(collect\).tresh: not an option of stage kind 'collect'; allowed"):
        load_pipeline(bad)
    bad.write_text(yaml.safe_dump({"stages": [{"name": "collect"}, {"name": "x", "kind": "frobnicate"}]}))
    with pytest.raises(ConfigError, match="'frobnicate' is not a stage"):
        load_pipeline(bad)
    bad.write_text(yaml.safe_dump({"executor": "datatrove", "stages": [{"name": "collect"}]}))
    assert load_pipeline(bad).executor == "local"  # datatrove's local executor: the default
    bad.write_text(yaml.safe_dump({"executor": "spark", "stages": [{"name": "collect"}]}))
    with pytest.raises(ConfigError, match="executor.*local"):
        load_pipeline(bad)
    # The shipped demo recipe parses and names only real options.
    from pathlib import Path

    import phi1 as phi1_pkg

    demo = load_pipeline(Path(phi1_pkg.__file__).parent / "recipes" / "data-demo.yaml")
    assert [s.kind for s in demo.stages][:4] == ["collect", "exact-dedup", "dedup", "annotate"]
    # The CLI end to end on a tiny pipeline: run, then rerun skips.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text('def double(x):\n    """Return twice x, for any number x."""\n    y = x * 2\n    return y\n')
    (src / "b.py").write_text((src / "a.py").read_text())
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "workers": 1, "stages": [
        {"name": "collect", "sources": [str(src)]}, {"name": "dedup"},
        {"name": "exercises"}]}))
    res = phi1("data", "run", pipe)
    assert res.returncode == 0, res.stderr
    assert "exercises: ran" in res.stdout and len(_ids(tmp_path / "w" / "exercises")) == 1
    assert len(_ids(tmp_path / "w" / "dedup")) == 1
    res = phi1("data", "run", pipe)
    assert res.returncode == 0 and "exercises: skipped" in res.stdout, res.stderr


def test_pipeline_killed_mid_stage_resumes_without_paying_twice(tmp_path):
    """A real `phi1 data run` process is killed while the judge is answering; the rerun skips the finished
    stages and asks the judge only about the records it had not answered yet."""
    import signal
    import subprocess
    import sys
    import time

    from fake_openai import FakeOpenAI

    from phi1.data.pipeline import run_pipeline

    src = copy_slice(tmp_path / "src")
    work = tmp_path / "work"
    with FakeOpenAI(responder=lambda body: '{"score": 3, "reason": "ok"}', gate_after=5) as srv:
        pipe = tmp_path / "pipe.yaml"
        pipe.write_text(yaml.safe_dump({"workdir": str(work), "workers": 1, "stages": [
            {"name": "collect", "sources": [str(src)]}, {"name": "dedup"},
            {"name": "annotate", "endpoint": srv.url, "model": "judge", "concurrency": 2, "timeout": 60}]}))
        proc = subprocess.Popen([sys.executable, "-m", "phi1", "data", "run", str(pipe)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "PHI1_NO_PROGRESS": "1"})
        cache = work / "annotate" / "judge-cache.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if cache.exists() and len(cache.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.3)  # the held requests are in flight now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        assert (work / "dedup" / "manifest.json").exists() and not (work / "annotate" / "manifest.json").exists()
        assert not list((work / "annotate" / "data").glob("*.jsonl.gz"))
        answered = len(cache.read_text().splitlines())
        assert answered == 5
        n_docs = len(_ids(work / "dedup"))
        srv.open_gate()
        before = len(srv.requests)  # includes the requests the killed run left held at the gate
        status = {r["stage"]: r["status"] for r in run_pipeline(pipe, quiet=True)}
        assert status == {"collect": "skipped", "dedup": "skipped", "annotate": "ran"}
        assert len(srv.requests) - before == n_docs - answered  # nothing asked twice
        got = list(iter_records(work / "annotate"))
        assert len(got) == n_docs and all(r["meta"]["edu_label"] == 3 for r in got)


def test_stage_dir_left_by_a_killed_runner_is_resumed_not_refused(tmp_path):
    """A runner killed between creating a stage directory and renaming its marker into place leaves
    only its pid-named temp file there (found by CI: the demo's killed child); the rerun takes the
    directory over. A file the user put there is still refused."""
    import subprocess
    import sys

    from phi1.data.pipeline import run_pipeline
    from phi1.errors import Phi1Error

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "workers": 1,
                                    "stages": [{"name": "collect", "sources": [str(src)]}]}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    sdir = tmp_path / "work" / "collect"
    sdir.mkdir(parents=True)
    stale = sdir / f".stage.json.phi1-{dead}-x1y2.tmp"
    stale.write_text("{")
    res = run_pipeline(pipe, quiet=True)
    assert [r["status"] for r in res] == ["ran"] and not stale.exists()
    assert _ids(sdir)
    other = tmp_path / "work2" / "collect"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    pipe.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work2"), "workers": 1,
                                    "stages": [{"name": "collect", "sources": [str(src)]}]}))
    with pytest.raises(Phi1Error, match="was not written by stage 'collect'"):
        run_pipeline(pipe, quiet=True)
    assert (other / "notes.txt").read_text() == "mine"
