"""Ordered, bounded parallel map over a stream, in worker processes on one machine.

Stages stream records; `ProcessPoolExecutor.map` would submit the whole stream
at once (every text pickled up front). This keeps at most `2 * workers`
batches in flight and yields results in input order.

Every worker process of `src/phi1/data` starts with `worker_guard` (via
`guarded_initializer`): it dies with its parent, so killing a stage (even with
`kill -9`) never leaves workers running.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from phi1.utils.procs import guarded_initializer, resolve_workers  # noqa: F401 (re-exported)

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
