"""Background work for prep-depth: rasterising, rendering, encoding and writing on a thread pool.

The caller runs MediaPipe on frame i + 1 while threads turn frame i into files:
NumPy, OpenCV and zlib release the GIL for their heavy parts, so on a multi-core
machine the two overlap. Each file is still written atomically by its task;
`results()` waits for every task and raises the first error in submission order,
so an input's rows file (written after it) stays the last thing written. One
writer serves a whole run: `take()` hands over an input's tasks so that the next
input's MediaPipe runs while they finish, and its rows file is written later.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable


class BackgroundWriter:
    """A small thread pool with a bound on queued work (so frames do not pile up in memory).

    threads = 0 runs every task at once in the caller's thread (same results, no overlap).
    """

    def __init__(self, threads: int = 2, max_pending: int = 8):
        if threads < 0 or max_pending < 1:
            raise ValueError(f"threads must be >= 0 and max_pending >= 1, got {threads}, {max_pending}")
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rgbdface-write") if threads else None
        self.max_pending = max_pending
        self.futures: list[Future] = []
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        if self.pool is None:
            f: Future = Future()
            try:
                f.set_result(fn(*args, **kwargs))
            except BaseException as e:  # kept for results(), raised there like a thread's error
                f.set_exception(e)
            self.futures.append(f)
            return f
        while len(self._pending) >= self.max_pending:
            wait([self._pending.popleft()])  # its error, if any, is raised by results() for its own input
        f = self.pool.submit(fn, *args, **kwargs)
        self.futures.append(f)
        self._pending.append(f)
        return f

    def take(self) -> list[Future]:
        """The tasks submitted since the last take, results or discard (one input's), without waiting for them."""
        futures, self.futures = self.futures, []
        return futures

    def results(self, futures: list[Future] | None = None) -> list[Any]:
        """Every task's result in submission order, after all have finished; raises the first error.

        `futures`: tasks handed over by `take()`; by default the ones submitted since then, after
        which the writer is empty and ready for the next input's tasks."""
        futures = self.take() if futures is None else futures
        wait(futures)
        return [f.result() for f in futures]

    def discard(self, futures: list[Future] | None = None) -> None:
        """Drop tasks (by default those since the last take; those not started are cancelled, the rest finish)."""
        futures = self.take() if futures is None else futures
        for f in futures:
            f.cancel()
        wait(futures)

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)
