"""Ordered, bounded parallel map over a stream, in worker processes on one machine.

Stages stream records; `ProcessPoolExecutor.map` would submit the whole stream
at once (every text pickled up front). This keeps at most `2 * workers`
batches in flight and yields results in input order.

Every worker process of `src/phi1/data` starts with `worker_guard` (via
`guarded_initializer`): it dies with its parent, so killing a stage (even with
`kill -9`) never leaves workers running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

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


def _apply(fn: Callable, batch: list) -> list:
    return [fn(x) for x in batch]


def parallel_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int = 0,
    batch_size: int = 16,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> Iterator[tuple[Any, Any]]:
    """Yield (item, fn(item)) in order; `fn` must be a module-level function (picklable by name).

    With one worker everything runs in this process (after calling `initializer`),
    which keeps small inputs and tests free of process start-up costs.
    """
    n = resolve_workers(workers)
    if n <= 1:
        if initializer:
            initializer(*initargs)
        for x in items:
            yield x, fn(x)
        return
    init, args = guarded_initializer(initializer, initargs)
    with ProcessPoolExecutor(n, initializer=init, initargs=args) as pool:
        inflight: deque = deque()
        batch: list = []

        def drain():
            items_b, fut = inflight.popleft()
            return zip(items_b, fut.result())

        try:
            for x in items:
                batch.append(x)
                if len(batch) >= batch_size:
                    inflight.append((batch, pool.submit(_apply, fn, batch)))
                    batch = []
                    if len(inflight) >= 2 * n:
                        yield from drain()
            if batch:
                inflight.append((batch, pool.submit(_apply, fn, batch)))
            while inflight:
                yield from drain()
        except BaseException:
            # An error (or a consumer that stopped early): do not wait for queued batches.
            for _, fut in inflight:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
