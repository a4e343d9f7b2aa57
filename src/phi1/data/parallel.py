"""Ordered, bounded parallel map over a stream, in worker processes on one machine.

Stages stream records; `ProcessPoolExecutor.map` would submit the whole stream
at once (every text pickled up front). This keeps at most `2 * workers`
batches in flight and yields results in input order.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


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
    with ProcessPoolExecutor(n, initializer=initializer, initargs=initargs) as pool:
        inflight: deque = deque()
        batch: list = []

        def drain():
            items_b, fut = inflight.popleft()
            return zip(items_b, fut.result())

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
