"""A fixed pool of threads for sync app code, with a cheap hand-off to trio.

``trio.to_thread.run_sync`` costs about 80-120 us a call on this class of
machine; a WSGI request needs at least one hand-off, so that alone would cap a
worker near 10,000 requests/s. Long-lived threads blocked on a ``SimpleQueue``,
delivering results with ``run_sync_soon``, cost about 30-40 us.

The pool only runs functions; how a result gets back to a waiting task is the
caller's business (see ``Handoff``), because a cancelled request must stop
waiting at once while its thread runs on to the app's next check point.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

import outcome
import trio

__all__ = ["ThreadPool", "Handoff"]

log = logging.getLogger("fcgi_cluster.worker")


class ThreadPool:
    """``size`` daemon threads running functions, at most ``size`` at once.

    ``close()`` stops the threads once the queued calls are done.
    """

    def __init__(self, size: int, name: str = "fcgi-app") -> None:
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # a job must report its own errors; this is the last resort
                log.exception("uncaught error in an app thread")

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` for the next free thread."""
        self._queue.put((fn, args))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


class Handoff:
    """Messages from one thread to one trio task, one at a time.

    The task calls ``await receive()``; the thread calls ``deliver(value)``.
    If the task is cancelled while waiting it stops at once and the handoff is
    ``closed``: later deliveries are dropped, and the thread should notice
    ``closed`` and wind up.
    """

    __slots__ = ("_task", "_token", "closed")

    def __init__(self) -> None:
        self._task: Any = None
        self._token = trio.lowlevel.current_trio_token()
        self.closed = False

    async def receive(self) -> Any:
        if self.closed:
            raise trio.ClosedResourceError("handoff closed")
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.closed = True
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def deliver(self, value: Any) -> None:
        """From the thread: wake the task with ``value`` (dropped once closed)."""
        try:
            self._token.run_sync_soon(self._deliver, value)
        except trio.RunFinishedError:
            pass

    def _deliver(self, value: Any) -> None:
        task, self._task = self._task, None
        if task is not None and not self.closed:
            trio.lowlevel.reschedule(task, outcome.Value(value))
