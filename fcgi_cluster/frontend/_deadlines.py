"""The deadlines of the two waits every request makes, kept by one task instead of cancel scopes.

A trio cancel scope per wait costs more than the rest of a small request's
trip through the front-end; on the hot path (a kept-alive client's next
request, a worker's answer) a dict entry is enough instead. The task wakes
every ``HEAD_TICK`` while something waits, and then:

* a client read past its deadline has its ``read_expired`` called (the
  connection closes after it anyway);
* an answer still missing when it was due (``WATCH_CLIENT_AFTER`` after it
  was asked for) is interrupted with ``WatchClient``, and its request goes on
  with a watcher on the client and an ordinary cancel scope (slow answers are
  rare, and then the scope's cost does not matter).

The precision is one tick: fine for timeouts of seconds. Waits off the hot
path (TLS clients, request bodies, sends) use cancel scopes as usual.
"""

from __future__ import annotations

import typing

import trio

__all__ = ["Deadlines", "WatchClient", "WATCH_CLIENT_AFTER"]

#: How long a request may wait for its upstream's answer before the
#: front-end also watches the client socket, so a client that hangs up on a
#: slow request has that request aborted at once. Fast answers (the usual
#: case) never pay for the watcher.
WATCH_CLIENT_AFTER = 0.05

#: How often waiting answers, and waiting clients, are looked at.
HEAD_TICK = 0.025
READ_TICK = 0.1


class WatchClient(Exception):
    """A request's answer is slow: start watching its client (raised into its wait by ``Deadlines``)."""


class Reader(typing.Protocol):
    def read_expired(self) -> None: ...


class Interruptible(typing.Protocol):
    def interrupt(self, error: BaseException) -> bool: ...


class Deadlines:
    """Client reads and answers awaited, each with the time it is due; ``run`` enforces them."""

    def __init__(self) -> None:
        self._reads: dict[Reader, float] = {}
        self._heads: dict[Interruptible, float] = {}
        self._parked = False
        self._lot = trio.lowlevel.ParkingLot()

    def watch_read(self, reader: Reader, deadline: float) -> None:
        """Call ``reader.read_expired()`` at ``deadline`` unless ``forget_read`` comes first."""
        self._reads[reader] = deadline
        if self._parked:
            self._lot.unpark_all()

    def forget_read(self, reader: Reader) -> None:
        self._reads.pop(reader, None)

    def watch_head(self, waiter: Interruptible, at: float) -> None:
        """Interrupt ``waiter`` with ``WatchClient`` at ``at`` unless ``forget_head`` comes first."""
        self._heads[waiter] = at
        if self._parked:
            self._lot.unpark_all()

    def forget_head(self, waiter: Interruptible) -> None:
        self._heads.pop(waiter, None)

    async def run(self) -> None:
        """Enforce the deadlines until cancelled."""
        next_read_check = 0.0
        while True:
            if not self._reads and not self._heads:
                self._parked = True
                try:
                    await self._lot.park()
                finally:
                    self._parked = False
            await trio.sleep(HEAD_TICK)
            now = trio.current_time()
            if self._heads:
                for waiter, at in list(self._heads.items()):
                    if now >= at and waiter.interrupt(WatchClient()):
                        self._heads.pop(waiter, None)
            if now >= next_read_check:
                next_read_check = now + READ_TICK
                for reader, deadline in list(self._reads.items()):
                    if now >= deadline:
                        del self._reads[reader]
                        reader.read_expired()
