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
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

import outcome
import trio

__all__ = ["ThreadPool", "Handoff", "process_busy_time", "waits_for_loop"]

log = logging.getLogger("fcgi_cluster.worker")

#: A process whose threads ran or waited to run less than this share of the
#: time (summed over threads) left the CPU idle at moments: its stalled
#: threads are blocked, and another thread can get on with queued work.
IDLE_BELOW = 0.9

_TASKS = "/proc/self/task"


class _LoopWaits:
    """How many app threads wait for the event loop right now (``with waits_for_loop:``).

    A thread waiting for its request body's next bytes, or for the loop to
    take its output, is blocked on the network whatever the process's load:
    the pool may give waiting work another thread at once.
    """

    __slots__ = ("_lock", "count")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


#: Entered by app threads around their waits for the loop (``worker._body``, ``worker._wsgi``).
waits_for_loop = _LoopWaits()


def process_busy_time() -> float | None:
    """Seconds this process's threads have spent on a CPU or waiting for one, summed.

    From Linux's per-thread schedstat (time run, time waited on a run queue);
    None where there is none. A thread waiting for the GIL or for I/O sleeps,
    and counts for neither.
    """
    total = read = 0
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        # os.open/os.read: a third cheaper than a file object, read 100 times a second under load.
        try:
            fd = os.open(f"{_TASKS}/{tid}/schedstat", os.O_RDONLY)
            try:
                ran, waited, _ = os.read(fd, 256).split(None, 2)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            continue  # the thread has just ended, or the kernel keeps no schedstat
        total += int(ran) + int(waited)
        read += 1
    return total / 1e9 if read else None


class ThreadPool:
    """Up to ``size`` threads running sync functions, grown only when needed.

    A queued function goes straight to a thread when no thread is busy (the
    most recently idle one: its caches are warm). While one is busy, new work
    waits in the queue: a short function is usually done long before the next
    arrives, and one thread running jobs back to back beats many threads taking
    turns at the GIL (on this 2-core class of machine: 13,500 vs 7,500 hello
    requests/s for 1 vs 16 threads). ``watch()`` (which must run in a nursery)
    looks at work that waits: when the busy threads finish nothing for two
    ``patience`` periods, they are blocked (I/O, sleep, a lock), or only slow
    to get the CPU (a loaded machine, the GIL held by the loop). Waiting work
    goes to more threads, up to ``size``, in the first case only: when a
    thread waits for the loop (``waits_for_loop``: a body's next bytes, room
    for output), or when the process's threads, all together, neither ran nor
    waited to run for part of the second period (``busy_time``: the app waits for
    something else). Before, any such stall counted as a block, and
    under load a hello app ended on all 16 threads, at about 1.2 times the CPU
    per request of one. The default patience is the GIL switch interval.

    ``close()`` lets the threads exit once the queue is empty.

    Args:
        size: the most threads.
        patience: half the time without a finished job after which the busy
            threads may be taken to be blocked.
        name: the threads' name prefix.
        busy_time: seconds the process's threads have run or waited to run,
            in all, or None when unknown (then every stall counts as a
            block); ``process_busy_time`` by default.
    """

    def __init__(self, size: int, *, patience: float | None = None, name: str = "fcgi-app",
                 busy_time: Callable[[], float | None] | None = None) -> None:
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self.size = size
        self.patience = sys.getswitchinterval() if patience is None else patience
        self._name = name
        self._lock = threading.Lock()
        self._jobs: deque[tuple[float, Callable[..., Any], tuple]] = deque()
        self._idle: list[threading.Lock] = []  # waiters of idle threads, most recent last
        self._threads = 0
        self._busy = 0
        self._completed = 0
        self._closed = False
        self._waiting = trio.Event()
        self._busy_time = process_busy_time if busy_time is None else busy_time

    @property
    def busy(self) -> int:
        """Threads running a job now (read without the lock: a hint)."""
        return self._busy

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return self._threads

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; it runs in a pool thread. Call from the trio thread."""
        with self._lock:
            self._jobs.append((time.monotonic(), fn, args))
            if self._busy == 0:
                self._wake_locked()
                return
        if not self._waiting.is_set():
            self._waiting.set()

    def _wake_locked(self) -> bool:
        """Hand the queue to one more thread; False when all ``size`` are busy."""
        if self._idle:
            self._busy += 1
            self._idle.pop().release()
            return True
        if self._threads < self.size:
            self._threads += 1
            self._busy += 1
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
            return True
        return False

    async def watch(self) -> None:
        """Give more threads to work that waits while the busy ones are blocked; runs until cancelled."""
        while True:
            await self._waiting.wait()
            progress = self._completed
            await trio.sleep(self.patience)
            blocked = False
            if self._completed == progress:
                # Nothing finished for one period: watch the second with the
                # process's busy time. Work that moves (the usual case under
                # load: jobs queued behind a busy thread) costs no /proc read.
                began, busy = time.monotonic(), self._busy_time()
                await trio.sleep(self.patience)
                now = time.monotonic()
                blocked = self._completed == progress and (
                    waits_for_loop.count > 0 or self._idle_between(began, busy, now))
            with self._lock:
                if blocked:
                    stale = time.monotonic() - 2 * self.patience
                    waiting = sum(1 for queued, _, _ in self._jobs if queued <= stale)
                    for _ in range(waiting):
                        if not self._wake_locked():
                            break
                if not self._jobs:
                    self._waiting = trio.Event()

    def _idle_between(self, began: float, busy: float | None, now: float) -> bool:
        """Did the process's threads leave the CPU idle for part of ``began``..``now``?"""
        after = self._busy_time()
        if busy is None or after is None or after < busy:  # unknown, or a thread's count left with it
            return True
        return after - busy < IDLE_BELOW * (now - began)

    def _work(self) -> None:
        waiter = threading.Lock()
        waiter.acquire()
        lock = self._lock
        jobs = self._jobs
        while True:
            with lock:
                if jobs:
                    _, fn, args = jobs.popleft()
                else:
                    self._busy -= 1
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle.append(waiter)
                    fn = None
            if fn is None:
                waiter.acquire()  # released by _wake_locked, with _busy already counted
                continue
            try:
                fn(*args)
            except BaseException:  # a job must report its own errors; this is the last resort
                log.exception("uncaught error in an app thread")
            # Read by watch(); a lost update only delays a wake-up.
            self._completed += 1

    def close(self) -> None:
        """Let every thread exit once the queued work is done."""
        with self._lock:
            self._closed = True
            while self._idle:
                self._busy += 1
                self._idle.pop().release()


class Handoff:
    """Messages from one thread to one trio task, one at a time.

    The task calls ``await receive()``; the thread calls ``deliver(value)``.
    If the task is cancelled while waiting it stops at once and the handoff is
    ``closed``: later deliveries are dropped, and the thread should notice
    ``closed`` and wind up.
    """

    __slots__ = ("_task", "_deliveries", "closed", "callback")

    def __init__(self) -> None:
        self._task: Any = None
        self._deliveries = _Deliveries.current()
        self.closed = False
        #: Called on the loop with each value instead of waking a task, while
        #: set (no task waits then): for a caller that has no task to park.
        self.callback: Callable[[Any], None] | None = None

    async def receive(self) -> Any:
        if self.closed:
            raise trio.ClosedResourceError("handoff closed")
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.closed = True
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def interrupt(self, error: BaseException) -> None:
        """From trio: make a ``receive`` in progress raise ``error``, and close the handoff.

        A task not parked in ``receive`` (woken already, or not there yet) is
        left alone: it finds ``closed`` and the caller's own flag.
        """
        self.closed = True
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(error))

    def deliver(self, value: Any) -> None:
        """From the thread: wake the task with ``value`` (dropped once closed)."""
        self._deliveries.put(self, value)

    def _deliver(self, value: Any) -> None:
        if self.closed:
            return
        callback = self.callback
        if callback is not None:
            callback(value)
            return
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(value))


class _Deliveries:
    """Values on their way from threads to ``Handoff`` tasks, many per wake-up of the loop.

    ``run_sync_soon`` writes to trio's wake-up socket on every call. A value
    delivered before the loop has run the last flush joins that flush: a
    thread running jobs back to back finishes several in one turn at the GIL,
    and their results then cost the loop one wake-up, not one each (about 5%
    of a worker's CPU per small request, measured with two worker pairs
    behind one front-end each). One per trio run.
    """

    __slots__ = ("_token", "_lock", "_items", "_scheduled")

    _current: trio.lowlevel.RunVar[_Deliveries] = trio.lowlevel.RunVar("fcgi_cluster_deliveries")

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._items: list[tuple[Handoff, Any]] = []
        self._scheduled = False

    @classmethod
    def current(cls) -> _Deliveries:
        """The trio run's instance (made on first use). Call from the trio thread."""
        try:
            return cls._current.get()
        except LookupError:
            deliveries = cls()
            cls._current.set(deliveries)
            return deliveries

    def put(self, handoff: Handoff, value: Any) -> None:
        """From any thread: deliver ``value`` to ``handoff`` on the loop, after those put before it."""
        with self._lock:
            self._items.append((handoff, value))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._token.run_sync_soon(self._flush)
        except trio.RunFinishedError:
            pass

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for handoff, value in items:
            handoff._deliver(value)
