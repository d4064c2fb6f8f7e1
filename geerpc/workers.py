"""Threads for plain ``def`` handlers, with results handed back to the loop in batches.

``loop.run_in_executor`` costs a concurrent future, a wrapped asyncio future and a
self-pipe write per call. Here a worker appends its outcome to a deque and wakes the
loop only when no wake-up is pending, so 64 calls finishing together cost one wake.
Threads are daemons: a handler that never returns cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["WorkerPool", "Job", "on_worker"]


class Job:
    """One call for a worker. ``abandoned`` jobs are skipped or their result dropped.

    ``context``, when set, is the ``contextvars.Context`` the function runs in (the
    one holding the call's ``geerpc.current_call()``).
    """

    __slots__ = ("func", "args", "kwargs", "done", "abandoned", "context")

    def __init__(self, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                 done: Callable[[Job, bool, Any], None], context: contextvars.Context | None = None) -> None:
        self.func, self.args, self.kwargs, self.done = func, args, kwargs, done
        self.abandoned = False
        self.context = context


class WorkerPool:
    def __init__(self, max_workers: int, name: str = "geerpc-handler") -> None:
        self._max = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._outcomes: collections.deque[tuple[Job, bool, Any]] = collections.deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("worker pool is shut down")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._jobs.put(job)
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        jobs, outcomes = self._jobs, self._outcomes
        while True:
            job = jobs.get()
            if job is None:
                return
            outcome = None
            if not job.abandoned:
                try:
                    if job.context is None:
                        outcome = (job, True, job.func(*job.args, **job.kwargs))
                    else:
                        outcome = (job, True, job.context.run(job.func, *job.args, **job.kwargs))
                except BaseException as exc:  # noqa: BLE001 - delivered as the call's error
                    outcome = (job, False, exc)
                outcomes.append(outcome)
                if not self._wake_pending:
                    self._wake_pending = True
                    assert self._loop is not None
                    try:
                        self._loop.call_soon_threadsafe(self._deliver)
                    except RuntimeError:  # the loop is closed: nobody to deliver to
                        return
            job = outcome = None  # drop references before idling
            self._idle.release()

    def _deliver(self) -> None:
        # Clear the flag before draining: a worker that appends after the drain sees
        # it clear and schedules another delivery, so no outcome is stranded.
        self._wake_pending = False
        outcomes = self._outcomes
        while outcomes:
            job, ok, value = outcomes.popleft()
            if not job.abandoned:
                job.done(job, ok, value)

    def shutdown(self) -> None:
        """Stop idle workers; a worker stuck in a handler finishes on its own."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)


def on_worker(loop: asyncio.AbstractEventLoop, submit: Callable[[Job], None], func: Callable[..., Any],
              args: list[Any], kwargs: dict[str, Any], context: contextvars.Context | None) -> asyncio.Future[Any]:
    """Run ``func`` on a worker thread (through ``submit``); its result or exception through a future.

    Cancelling the future abandons the job: its result is dropped. A StopIteration
    comes back as a RuntimeError (a future refuses it: it would end the awaiting coroutine).
    """
    future: asyncio.Future[Any] = loop.create_future()

    def done(job: Job, ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(RuntimeError(f"handler raised {value!r}")
                                 if isinstance(value, StopIteration) else value)

    job = Job(func, args, kwargs, done, context)
    future.add_done_callback(lambda f: setattr(job, "abandoned", True) if f.cancelled() else None)
    submit(job)
    return future
