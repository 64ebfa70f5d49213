"""When a WSGI app proven quick may run on the event loop's thread, skipping the thread hand-off.

A request handed to a pool thread costs two thread switches, a GIL hand-over
and a wake-up of the loop: for a small answer, more than the app itself. A
pool with threads may still run an app's call on the loop's own thread (as
``threads = 0`` always does) once its calls have been seen to be short and
small: ``PROMOTE_AFTER`` calls in a row in threads, each done in under
``QUICK_CALL`` seconds with an answer under ``SMALL_ANSWER`` bytes. A call
that took longer counts as quick when its thread worked under ``QUICK_CALL``
and, for the rest of the time (up to ``THREAD_WALL``), the process's other
threads ran: it waited for the GIL (a busy loop), not for I/O. An app that
waits on a socket or a sleep while the process is idle is never promoted.

An inline call that turns out slow or large sends the app back to threads,
and the next promotion needs four times as many quick calls in a row: an app
with a slow route stalls the loop for at most one such call per promotion,
and ever more rarely. Only requests whose whole body is already buffered run
inline (the loop cannot wait for more of it).
"""

from __future__ import annotations

import resource
import time

__all__ = ["GIL_SHARE", "InlinePolicy", "PROMOTE_AFTER", "QUICK_CALL", "SMALL_ANSWER", "THREAD_WALL"]

#: Seconds a call may take (wall clock; see ``THREAD_WALL`` for GIL waits) and still
#: count as quick, and the most CPU it may use. A hello call takes about 30 us in a
#: thread here; 2 ms is what the loop may be held up by the rare call that turns out slow.
QUICK_CALL = 0.002

#: Bytes of answer a quick call may return: an inline call holds its answer whole.
SMALL_ANSWER = 64 * 1024

#: Wall-clock seconds a call in a thread may take and still count as quick when
#: its own CPU time was under ``QUICK_CALL``: in a busy process a thread waits
#: for the GIL up to a switch interval (5 ms) at a time, so a 0.1 ms call can
#: take 10 ms, and a wall-clock test alone never promoted such an app (the
#: sessions benchmark: the loop's Redis work kept every call over 2 ms).
THREAD_WALL = 0.025

#: Of a thread call's time off its CPU, the share the process's other threads must
#: have run for that time to count as a wait for the GIL.
GIL_SHARE = 0.8

#: Quick calls in a row in threads before the app runs inline.
PROMOTE_AFTER = 64

#: The most quick calls a promotion can come to need (after many demotions).
_MOST_NEEDED = PROMOTE_AFTER * 4**6

_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux


def _switches() -> int:
    """Voluntary context switches of this thread so far (it blocked: I/O, a lock, the GIL); -1: unknown."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD is not None else -1


def _held_up(cpu_before: float, switches_before: int) -> bool:
    """Since the readings given, did this thread block or run for ``QUICK_CALL`` of CPU?

    The CPU time is the thread's exact clock (``CLOCK_THREAD_CPUTIME_ID``),
    not getrusage's: that one moves in scheduler ticks and is scaled, so a
    0.1 ms call can read as 3 or 4 ms of CPU and demote a quick app.
    """
    if switches_before < 0:
        return True
    return _switches() > switches_before or time.thread_time() - cpu_before >= QUICK_CALL


class InlinePolicy:
    """Decides, from the calls seen so far, whether the next call may run inline.

    Attributes:
        inline: the next call (with its body buffered) runs on the loop's thread.
    """

    __slots__ = ("inline", "_streak", "_needed", "_gil_credit")

    def __init__(self) -> None:
        self.inline = False
        self._streak = 0
        self._needed = PROMOTE_AFTER
        #: Thread calls slow in wall clock may count as GIL waits (``THREAD_WALL``):
        #: until an inline call blocks. A busy loop fills the gap of an app that
        #: waits on I/O too; once one is caught, only the wall clock counts.
        self._gil_credit = True

    @property
    def needed(self) -> int:
        """Quick calls in a row that the next promotion needs."""
        return self._needed

    def ran_in_thread(self, seconds: float, size: int, cpu: float | None = None, others: float = 0.0) -> None:
        """A call in a pool thread took ``seconds`` and answered ``size`` bytes (-1: streamed).

        ``cpu``: the thread's CPU seconds for it, when known; ``others``: the
        CPU seconds the process's other threads used meanwhile. A call quick in
        CPU whose time off the CPU the others filled (GIL waits) counts as quick
        up to ``THREAD_WALL`` of wall clock.
        """
        if (cpu is not None and self._gil_credit and cpu < QUICK_CALL and QUICK_CALL <= seconds < THREAD_WALL
                and others >= GIL_SHARE * (seconds - cpu)):
            seconds = 0.0
        if 0 <= size < SMALL_ANSWER and seconds < QUICK_CALL:
            self._streak += 1
            if self._streak >= self._needed:
                self.inline = True
        else:
            self._streak = 0

    @staticmethod
    def clock() -> tuple[float, float, int]:
        """Taken on the loop's thread just before an inline call, for ``ran_inline_since``."""
        return time.perf_counter(), time.thread_time(), _switches()

    def ran_inline_since(self, began: tuple[float, float, int], size: int, threads_busy: bool = False) -> None:
        """An inline call begun at ``clock()`` answered ``size`` bytes; call on the same thread.

        ``threads_busy``: app threads were running when it began (calls still
        finishing there), so a switch in it may have been a wait for the GIL.
        """
        seconds = time.perf_counter() - began[0]
        if seconds >= QUICK_CALL and size < SMALL_ANSWER:
            if not _held_up(began[1], began[2]):
                seconds = 0.0  # only preempted: the app was quick
            elif not threads_busy:
                self._gil_credit = False  # it blocked (or worked): judge threads by the wall clock
        self.ran_inline(seconds, size)

    def ran_inline(self, seconds: float, size: int) -> None:
        """A call on the loop's thread took ``seconds`` and answered ``size`` bytes."""
        if not (size < SMALL_ANSWER and seconds < QUICK_CALL):
            self.inline = False
            self._streak = 0
            self._needed = min(self._needed * 4, _MOST_NEEDED)
