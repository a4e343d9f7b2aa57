"""Worker processes that die with their parent.

Every worker process phi1 starts (data engine pool workers and their Manager, pack's encoders, the
process pools of the single-stage commands) starts with `worker_guard`: killing the process that
started it, even with `kill -9`, never leaves workers running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

_PR_SET_PDEATHSIG = 1


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def worker_guard(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this (worker) process die when `parent_pid` does.

    On Linux the kernel sends SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG). As a
    second line (other platforms, or a parent that died before the prctl took effect), a
    daemon thread exits the process as soon as its parent pid changes.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="phi1-parent-watch", daemon=True).start()


def _guarded_init(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    worker_guard(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def guarded_initializer(initializer: Callable | None = None, initargs: tuple = ()) -> tuple[Callable, tuple]:
    """(initializer, initargs) for any process pool: the worker guard first, then `initializer`."""
    return _guarded_init, (os.getpid(), initializer, tuple(initargs))
