"""Nothing a program writes outlives its run, and nothing reaches the harness: writable places, the scratch
space's total size, channels between samples (files, SysV/POSIX IPC), inherited descriptors, signals to the
sandbox's own processes, and what a program can see of other runs."""

from __future__ import annotations

import os
import stat
import uuid

import pytest

from phi1.eval.sandbox import Sandbox, SandboxConfig, classify


@pytest.fixture(scope="module")
def box():
    with Sandbox(SandboxConfig(workers=1, timeout=5, scratch_mb=64)) as sb:
        if sb.isolation.get("tmp") != "private":
            pytest.skip(f"no private mount namespace on this machine ({sb.isolation})")
        yield sb


def _world_writable_dirs() -> list[str]:
    """World-writable directories of this machine (where any uid could leave a file), a few levels deep."""
    found = []
    for top in ("/tmp", "/var", "/run", "/dev", "/home", "/srv", "/opt", "/mnt", "/media"):
        for root, dirs, _ in os.walk(top):
            depth = root.count("/")
            if depth >= 4 or root.startswith(("/proc", "/sys")):
                dirs[:] = []
            try:
                st = os.lstat(root)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
                found.append(root)
    return sorted(set(found))


def test_isolation_reported(box):
    iso = box.isolation
    assert iso["tmp"] == "private" and iso["fs"] == "read-only except scratch", iso
    assert iso["pid"] == "private" and iso["ipc"] == "per-program" and iso["scratch_mb"] == 64, iso


def test_nothing_written_anywhere_outlives_the_run(box):
    """Every world-writable directory of the host (/run/lock included) gets 5 x 10 MiB files and a marker;
    none exists on the host afterwards, and the next sample finds nothing of them."""
    dirs = _world_writable_dirs()
    assert "/run/lock" in dirs or not os.path.isdir("/run/lock") or not os.stat("/run/lock").st_mode & 0o002
    tag = uuid.uuid4().hex
    write = (
        "import os, sys\n"
        f"dirs = {dirs + ['/var/tmp', '/dev/shm', '/tmp', '.']!r}\n"
        "kept = []\n"
        "for d in dirs:\n"
        "    try:\n"
        f"        open(os.path.join(d, 'phi1-left-{tag}'), 'w').write('x')\n"
        "        for i in range(5):\n"
        f"            with open(os.path.join(d, f'phi1-big-{tag}-{{i}}'), 'wb') as fh:\n"
        "                fh.write(b'x' * (10 << 20))\n"
        "        kept.append(d)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('WROTE', kept)\n"
    )
    first = box.run_one(write)
    assert first["status"] == "passed", first
    written = eval(first["stdout_tail"].split("WROTE", 1)[1])  # noqa: S307 - our own program's list
    # only the scratch space took the files (and 64 MiB of it cannot hold 5 x 10 MiB in each)
    assert set(written) <= {"/tmp", "/var/tmp", "/dev/shm", "."}, written
    for d in dirs + ["/var/tmp", "/dev/shm", "/tmp"]:
        left = [n for n in os.listdir(d) if tag in n] if os.path.isdir(d) else []
        assert left == [], (d, left)
    read = (
        "import os\n"
        f"found = [os.path.join(r, n) for top in ('/tmp', '/var/tmp', '/dev/shm', '/run', '/var', os.getcwd())\n"
        f"         for r, _, files in os.walk(top) for n in files if '{tag}' in n]\n"
        "assert found == [], found\n"
    )
    second = box.run_one(read)
    assert second["status"] == "passed", (second["exc_type"], second["message"])


def test_the_scratch_space_is_bounded_in_total(box):
    """RLIMIT_FSIZE bounds one file; the scratch tmpfs bounds them all together (64 MiB here). A later sample
    gets the whole space back."""
    fill = (
        "import os\n"
        "total = 0\n"
        "try:\n"
        "    for i in range(1000):\n"
        "        with open(f'/tmp/fill-{i}', 'wb') as fh:\n"
        "            fh.write(b'x' * (4 << 20))\n"
        "        total += 4 << 20\n"
        "except OSError as exc:\n"
        "    print('STOPPED', exc.errno, total >> 20)\n"
    )
    for _ in range(2):
        res = box.run_one(fill)
        assert res["status"] == "passed", res
        errno, mib = res["stdout_tail"].split("STOPPED", 1)[1].split()
        assert int(errno) == 28 and 40 <= int(mib) <= 64, res["stdout_tail"]  # ENOSPC near 64 MiB, both times


def test_ipc_objects_die_with_the_run(box):
    """SysV shared memory and POSIX message queues live in the program's own IPC namespace."""
    make = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.shmget(0x5eed, 4096, 0o1666) >= 0, ctypes.get_errno()\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "assert rt.mq_open(b'/phi1q', os.O_CREAT | os.O_RDWR, 0o666, None) >= 0, ctypes.get_errno()\n"
        "assert libc.shmget(0x5eed, 0, 0) >= 0\n"
    )
    look = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.shmget(0x5eed, 0, 0) == -1 and ctypes.get_errno() == 2\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "assert rt.mq_open(b'/phi1q', os.O_RDWR, 0, None) == -1 and ctypes.get_errno() == 2\n"
    )
    a, b = box.run_one(make), box.run_one(look)
    assert a["status"] == "passed", (a["exc_type"], a["message"])
    assert b["status"] == "passed", (b["exc_type"], b["message"])
    assert not os.path.exists("/dev/mqueue/phi1q")


def test_only_its_own_descriptors_are_open(box):
    probe = (
        "import os\nopen_fds = []\n"
        "for fd in range(0, 1024):\n"
        "    try:\n        os.fstat(fd)\n        open_fds.append(fd)\n    except OSError:\n        pass\n"
        "print('FDS', open_fds)\n"
    )
    plain = box.run_one(probe)
    judged = box.run_one({"program": probe, "check": "pass\n"})
    assert plain["stdout_tail"].split("FDS", 1)[1].strip() == "[0, 1, 2, 3]", plain
    assert judged["stdout_tail"].split("FDS", 1)[1].strip() == "[0, 1, 2, 3, 4]", judged


def test_signals_cannot_reach_the_sandbox_or_the_caller(box):
    """The program sees only its own run in /proc; the executor (init of its PID namespace), the judge (another
    uid) and the caller (outside the namespace) survive everything it sends."""
    attack = (
        "import os, signal\n"
        "pids = [int(n) for n in os.listdir('/proc') if n.isdigit()]\n"
        "print('SEEN', len(pids), 'PPID', os.getppid())\n"
        "for p in pids + [os.getppid()]:\n"
        "    if p != os.getpid():\n"
        "        for s in (signal.SIGSTOP, signal.SIGKILL):\n"
        "            try:\n                os.kill(p, s)\n            except OSError:\n                pass\n"
        "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
    )
    outer = box._zygotes[0].proc.pid
    res = box.run_one({"program": attack, "check": "pass\n"})
    # the judge survived the attack and gave its verdict; the executor, the caller and this test live on
    assert res["status"] == "passed", res
    seen = res["stdout_tail"].split()
    assert int(seen[1]) <= 3 and seen[3] == "1", res["stdout_tail"]  # init (executor), judge, itself
    assert box._zygotes[0].proc.poll() is None and box._zygotes[0].proc.pid == outer
    assert box.run_one("assert 1 + 1 == 2")["status"] == "passed"


def test_workers_cannot_see_each_other():
    """Two samples running at once, in two workers: neither sees the other's processes or files."""
    tag = uuid.uuid4().hex
    program = (
        "import os, time\n"
        f"open('/tmp/{tag}-' + str(os.getpid()), 'w').write('x')\n"
        "time.sleep(0.5)\n"
        "mine = [n for n in os.listdir('/tmp') if n.startswith('" + tag + "')]\n"
        "assert len(mine) == 1, mine\n"
        "cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert not any(b'pytest' in c for c in cmds)\n"
    )
    with Sandbox(SandboxConfig(workers=2, timeout=5)) as sb:
        results = list(sb.run([(0, program), (1, program)]))
    assert [classify(r)[0] for r in results] == ["passed", "passed"], results
