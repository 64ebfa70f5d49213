"""Connections to the workers of one upstream pool, and the choice among them.

One ``Upstream`` per ``[upstream.NAME]``; one ``Server`` per worker address in
it. A server learns on its first connection how the worker wants to be
spoken to, by asking FCGI_GET_VALUES:

* ``FCGI_MPXS_CONNS=1`` (our worker, flup's multiplexed server): requests
  are multiplexed, up to the worker's ``FCGI_MAX_REQS`` on one connection, over
  at most ``connections`` connections: with "auto", one per process serving
  the address when the worker says how many (our FCGI_CLUSTER_PROCESSES; a
  pool says its pm.max_children), else ``AUTO_CONNECTIONS``. A request goes
  to an idle connection if there is one, else a new connection is opened
  while under the cap, else it shares the least busy one: concurrent
  requests spread over the processes that share the worker's socket, while
  a quiet pool keeps one connection.
* Otherwise (php-fpm answers 0; some workers do not answer at all, after
  ``GET_VALUES_TIMEOUT``): one request per connection at a time, and up to
  ``keepalive`` idle connections kept for reuse, as nginx's ``keepalive``.

The answer is remembered until the server fails, then asked again, since the
process behind the address may have been replaced by a different one.

A server's ``max_conns`` caps its connections when it takes one request per
connection, and requests past the cap wait in line (first come, first
served, for up to ``connect_timeout``) for one to come back, as HAProxy
queues at a server's ``maxconn``. php-fpm needs it set to its
``pm.max_children``: each child serves one connection until that closes, so
without the cap a connection opened in a burst waits in php-fpm's backlog
behind the connections we keep alive, until the read timeout.

Resource handling: every connection lives in a task of the upstream's
nursery, which the front-end's server opens for the life of the process; a
connection's task ends when the connection dies or is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections import deque
from collections.abc import Callable, Sequence

import trio

from .._address import Address, parse_address
from ..client._buffer import Buffering, MemoryPool
from ..client import ConnectError, Connection, FastCGIError, open_connection
from ..client._liveness import DEFAULT_DEAD_PEER_TIMEOUT
from ._balancer import Balancer
from ._counters import ServerCounters

__all__ = ["Server", "ServerBusy", "Upstream", "GET_VALUES_TIMEOUT", "answer_buffering", "ANSWER_POOL", "ANSWER_POOL_PER_REQUEST"]

log = logging.getLogger("fcgi_cluster.frontend")

#: Seconds to wait for a GET_VALUES answer on a server's first connection.
#: A worker that ignores management records costs this once per learning,
#: not per request; one second is long for a worker on the same LAN.
GET_VALUES_TIMEOUT = 1.0

#: FCGI_MAX_REQS assumed when a multiplexing worker does not say: the
#: default of our worker and of HAProxy's ``max-reqs`` tuning advice.
DEFAULT_MAX_REQS = 100

#: Connections per multiplexing server under ``connections = "auto"`` when
#: the worker does not say how many processes it has: two, so that one
#: stalled reader cannot hold up every request to it.
AUTO_CONNECTIONS = 2

#: The most connections "auto" opens to one address, however many processes
#: it claims.
MAX_AUTO_CONNECTIONS = 64


class ServerBusy(ConnectError):
    """Every connection of a server at ``max_conns`` stayed busy for ``connect_timeout``.

    The worker is alive, only full: it is not counted against ``max_fails``
    (marking it down would turn a busy pool into one that refuses everyone),
    and the request may go to another server, as after a connect error.
    """


class _Waiter:
    """A request in line for a connection at ``max_conns``: its parked task (or callback) and what it gets."""

    __slots__ = ("task", "deadline", "conn", "expired", "callback")

    def __init__(self, deadline: float, callback: Callable[[Connection | None, ServerBusy | None], None] | None = None) -> None:
        self.task = trio.lowlevel.current_task() if callback is None else None
        #: Called instead of waking a task: see ``Server.wait_in_line``.
        self.callback = callback
        self.deadline = deadline
        #: Handed over by ``release``.
        self.conn: Connection | None = None
        #: Woken at its deadline; otherwise, without a connection, there is room to open one.
        self.expired = False


class Server:
    """The connections to one worker address."""

    def __init__(
        self,
        address: str,
        nursery: trio.Nursery,
        *,
        multiplex: bool = True,
        connections: int | str = "auto",
        keepalive: int = 32,
        connect_timeout: float = 5.0,
        send_timeout: float = 60.0,
        max_conns: int = 0,
        dead_host_timeout: float = DEFAULT_DEAD_PEER_TIMEOUT,
        ping: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.address = address
        self._address: Address = parse_address(address)
        self._nursery = nursery
        self._allow_multiplex = multiplex
        self._auto_connections = connections == "auto"
        self._max_connections = AUTO_CONNECTIONS if connections == "auto" else max(1, int(connections))
        #: Connections at most when one request per connection (0: no cap).
        self._max_conns = max_conns
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout or math.inf
        self._dead_host_timeout = dead_host_timeout
        self._ping = ping  # (ping_interval, ping_timeout): multiplexed connections only
        #: None until learned; then True (multiplexed) or False.
        self.multiplexed: bool | None = None
        self.max_reqs = 1
        self._live: list[Connection] = []
        self._idle: list[Connection] = []
        self._opening = 0
        self._learning: trio.Event | None = None
        #: Requests waiting for room on a multiplexed connection.
        self._room = trio.lowlevel.ParkingLot()
        #: Requests waiting, in order, for a connection at ``max_conns``.
        self._queue: deque[_Waiter] = deque()
        #: ``_expire_waiters`` is running.
        self._expiring = False
        #: Failures by kind, retries, latency (the status page's).
        self.counters = ServerCounters()
        #: Marked ``down`` (``set_down``): no connection is kept.
        self.down = False

    def set_down(self, down: bool) -> None:
        """Mark the server down (no request will come: idle connections close now,
        busy ones once their requests end) or up again."""
        self.down = down
        if down:
            for conn in list(self._live):
                if conn.requests_in_flight == 0:
                    conn.close()
            self._idle.clear()

    def forget_capabilities(self) -> None:
        """Ask GET_VALUES again on the next new connection (the worker may have changed)."""
        if self._learning is None:
            self.multiplexed = None

    @property
    def connection_count(self) -> int:
        """Live connections, idle ones included."""
        return len(self._live)

    def ready_connection(self) -> Connection | None:
        """A connection for one more request, if one is there now: ``acquire`` without waiting.

        A multiplexed connection with room, or (one request per connection)
        an idle kept-alive one while nobody waits in line. The proxy's
        shortcut past ``acquire``, which it calls when this gives None: the
        worker is not learned yet, or a new connection is due or must be
        waited for.
        """
        if not self.multiplexed:
            return None if self.multiplexed is None else self._take_idle()
        best, load = self._least_busy()
        if load == 0:
            return best
        if len(self._live) + self._opening < self._max_connections:
            return None
        if load < self.max_reqs:
            return best
        return None

    def _least_busy(self) -> tuple[Connection | None, int]:
        """An idle usable connection if there is one, else the usable one with the
        fewest requests, with its requests in flight (None and -1 when none is usable)."""
        best: Connection | None = None
        fewest = -1
        for conn in self._live:
            if conn.is_usable:
                load = conn.requests_in_flight
                if load == 0:
                    return conn, 0
                if best is None or load < fewest:
                    best, fewest = conn, load
        return best, fewest

    async def acquire(self) -> Connection:
        """A connection ready for one more request.

        Raises:
            ConnectError: the worker is unreachable or did not accept in time.
        """
        if self.multiplexed is None:
            if self._learning is None:
                # The first connection learns; requests arriving meanwhile
                # wait for its answer rather than open connections of their own.
                self._learning = trio.Event()
                conn = await self._open(learn=True)
                if self._has_room(conn):
                    return conn
            else:
                await self._learning.wait()
        if self.multiplexed:
            deadline = trio.current_time() + self._connect_timeout
            while True:
                best, load = self._least_busy()
                if load == 0:
                    return best
                if len(self._live) + self._opening < self._max_connections:
                    conn = await self._open()
                    if self._has_room(conn):
                        return conn
                    continue  # others filled it while it opened
                if best is not None and load < self.max_reqs:
                    return best
                if self._opening:
                    # A connection on its way takes FCGI_MAX_REQS more: wait
                    # for it rather than open one per waiting request.
                    await self._room.park()
                    continue
                if best is None or trio.current_time() >= deadline:
                    # Every connection is full and stays full: one more beyond
                    # the cap beats refusing (the worker's FCGI_MAX_CONNS
                    # still bounds it); release() closes it once idle.
                    conn = await self._open()
                    if self._has_room(conn):
                        return conn
                    continue
                with trio.CancelScope(deadline=deadline):  # move_on_at, without its generator
                    await self._room.park()
        deadline = trio.current_time() + self._connect_timeout
        while True:
            idle = self._take_idle()
            if idle is not None:
                return idle
            if not self._max_conns or len(self._live) + self._opening < self._max_conns:
                return await self._open()
            # At max_conns, wait in line for a connection to come back, as
            # HAProxy queues at a server's maxconn: a php-fpm child serves
            # one connection until it closes, so a connection beyond its
            # children would wait in its backlog behind ones we keep idle.
            # The wait costs no cancel scope: one task per server ends the
            # waits that reach their deadline (see _expire_waiters).
            waiter = _Waiter(deadline)
            self._queue.append(waiter)
            if not self._expiring:
                self._expiring = True
                self._nursery.start_soon(self._expire_waiters)

            def abort(_: object) -> trio.lowlevel.Abort:
                # Still parked, so still in line (taking it out wakes it).
                self._queue.remove(waiter)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            if waiter.conn is not None:
                return waiter.conn
            if not waiter.expired:
                continue  # a connection closed: room to open one
            raise self._busy()

    def wait_in_line(self, callback: Callable[[Connection | None, ServerBusy | None], None]) -> _Waiter | None:
        """Queue for a connection at ``max_conns`` with a callback instead of a task.

        For a caller with no task to park (the front-end's hub), when
        ``ready_connection`` gave None. ``callback(conn, error)`` is then
        called once, when the waiter leaves the line: with a connection; with
        neither (a connection closed: there is room to open one, which takes
        ``acquire``); or with ``ServerBusy`` at the deadline.

        Returns:
            The waiter (for ``leave_line``), or None when waiting in line is
            not what it takes (the caller should ``acquire``).
        """
        if self.multiplexed is not False or not self._max_conns or len(self._live) + self._opening < self._max_conns:
            return None
        waiter = _Waiter(trio.current_time() + self._connect_timeout, callback)
        self._queue.append(waiter)
        if not self._expiring:
            self._expiring = True
            self._nursery.start_soon(self._expire_waiters)
        return waiter

    def leave_line(self, waiter: _Waiter) -> None:
        """Take a ``wait_in_line`` waiter out of the line (its callback is not called)."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            pass

    def _busy(self) -> ServerBusy:
        return ServerBusy(
            f"{self.address} is busy: all {self._max_conns} connections (max_conns) "
            f"stayed busy for {self._connect_timeout:g} s"
        )

    def _take_idle(self) -> Connection | None:
        """A kept-alive idle connection still fit for a request, unless someone waits in line first."""
        while self._idle and not self._queue:
            conn = self._idle.pop()
            if conn.is_usable and conn.requests_in_flight == 0:
                return conn
            conn.close()
        return None

    def _has_room(self, conn: Connection) -> bool:
        # A new connection is visible to other requests as soon as it opens,
        # before its opener resumes: they may have filled it meanwhile.
        return conn.is_usable and conn.requests_in_flight < self.max_reqs

    def release(self, conn: Connection) -> None:
        """Give back a connection after a request (its response closed, so aborted if unfinished).

        A multiplexed connection serves on (others may be using it; a dead
        one removes itself). Otherwise the connection is kept for reuse only
        if it is alive, idle, and ``keepalive`` allows; an aborted request
        still in flight on it means the worker is still busy: closed.
        """
        if self.multiplexed:
            if conn.requests_in_flight == 0 and (
                len(self._live) > self._max_connections or not conn.is_usable or self.down
            ):
                # Opened past the cap in a burst, or refused by a stopping
                # worker (OVERLOADED): not kept once idle.
                conn.close()
            if self._room:  # an empty lot's unpark still costs a generator
                self._room.unpark()
            return
        if conn.is_usable and conn.requests_in_flight == 0 and not (self.down and not self._queue):
            if self._queue:
                # First in line gets it, before any newcomer can.
                waiter = self._queue.popleft()
                waiter.conn = conn
                self._wake(waiter)
                return
            if len(self._idle) < self._keepalive:
                self._idle.append(conn)
                return
        conn.close()

    def _wake(self, waiter: _Waiter) -> None:
        """Wake a waiter taken out of the line: with a connection, with room to open one, or at its deadline."""
        if waiter.callback is None:
            trio.lowlevel.reschedule(waiter.task)
        else:
            waiter.callback(waiter.conn, self._busy() if waiter.expired else None)

    async def _expire_waiters(self) -> None:
        """Wake each waiter in line at its deadline (it then fails); runs while the line is not empty.

        The line is in arrival order and every wait has the same timeout, so
        its head has the earliest deadline: this task sleeps once per
        ``connect_timeout`` or so, not once per waiter.
        """
        try:
            while self._queue:
                now = trio.current_time()
                head = self._queue[0]
                if now >= head.deadline:
                    head.expired = True
                    self._wake(self._queue.popleft())
                else:
                    await trio.sleep_until(head.deadline)
        finally:
            self._expiring = False

    async def fresh_connection(self) -> Connection:
        """A multiplexed connection opened now, for a request a stopping worker refused.

        The pool's other kept connections may lead to the same stopping
        process (each child holds several): a new one is accepted by a child
        that is not stopping. Past ``connections`` it is closed once idle.
        """
        return await self._open()

    async def _open(self, learn: bool = False) -> Connection:
        # Counted in _opening until it is in _live (or failed), never in both:
        # requests that run between the two would see one connection as two
        # and open too few.
        self._opening += 1
        pending = [True]
        try:
            conn: Connection = await self._nursery.start(self._hold, learn, pending)
        finally:
            self._opened(pending)
            self._room.unpark_all()
        return conn

    def _opened(self, pending: list[bool]) -> None:
        if pending[0]:
            pending[0] = False
            self._opening -= 1

    async def _hold(self, learn: bool, pending: list[bool], *, task_status: trio.TaskStatus[Connection]) -> None:
        learning = self._learning if learn else None
        try:
            async with open_connection(
                self._address, connect_timeout=self._connect_timeout, send_timeout=self._send_timeout,
                dead_peer_timeout=self._dead_host_timeout,
            ) as conn:
                if learning is not None:
                    await self._learn(conn)
                    self._learning = None
                    learning.set()
                    learning = None
                self._opened(pending)
                if self.multiplexed:
                    conn.watch_liveness(*self._ping)
                self._live.append(conn)
                try:
                    task_status.started(conn)
                    await conn.wait_closed()
                finally:
                    self._live.remove(conn)
                    if conn in self._idle:
                        self._idle.remove(conn)
                    if self._queue:
                        self._wake(self._queue.popleft())  # room to open another
        finally:
            self._opened(pending)
            if learning is not None:  # the connection failed before learning ended
                self._learning = None
                learning.set()

    async def _learn(self, conn: Connection) -> None:
        try:
            values = await conn.get_values(timeout=GET_VALUES_TIMEOUT)
        except FastCGIError:
            values = {}
        multiplexed = self._allow_multiplex and values.get("FCGI_MPXS_CONNS") == "1"
        max_reqs = DEFAULT_MAX_REQS
        text = values.get("FCGI_MAX_REQS", "")
        if text.isdigit() and int(text) > 0:
            max_reqs = int(text)
        self.max_reqs = max_reqs if multiplexed else 1
        if self._auto_connections:
            text = values.get("FCGI_CLUSTER_PROCESSES", "")
            processes = int(text) if text.isdigit() and int(text) > 0 else 0
            self._max_connections = min(processes, MAX_AUTO_CONNECTIONS) if processes else AUTO_CONNECTIONS
        self.multiplexed = multiplexed
        log.info(
            "upstream %s: %s", self.address,
            f"multiplexing up to {max_reqs} requests per connection over {self._max_connections}"
            if multiplexed else "one request per connection",
        )

    def close_all(self) -> None:
        """Close every connection (shutdown)."""
        for conn in list(self._live):
            conn.close()


#: Memory a front-end process lends to answers past their ``buffer_size``
#: before they go to a file (``MemoryPool``), in all and to one answer: a fast
#: client of large answers that is only a little behind stays off the disk,
#: while 100 slow clients cost at most this much more than their buffer_size each.
ANSWER_POOL = 8 * 1024 * 1024
ANSWER_POOL_PER_REQUEST = 1024 * 1024


def answer_buffering(config: object, pool: MemoryPool | None = None) -> tuple[Buffering, Buffering]:
    """How much of an answer a front-end holds for its client: on a multiplexed connection, and on one of its own.

    Args:
        config: an ``UpstreamConfig``, or a ``RouteConfig``-like object with
            every buffering key set.

    With ``buffering`` off nothing goes to a file: a connection the request
    has alone waits for its client (nginx's unbuffered answers), and a shared
    one aborts an answer past ``buffer_size``, since waiting would stall the
    other requests on it.
    """
    max_file = config.max_temp_file_size if config.buffering else 0  # type: ignore[attr-defined]
    shared = Buffering(
        memory=config.buffer_size, max_file=max_file, temp_path=config.temp_path or None,  # type: ignore[attr-defined]
        pool=pool if config.buffering else None,  # type: ignore[attr-defined]
    )
    return shared, dataclasses.replace(shared, wait=not config.buffering)  # type: ignore[attr-defined]


class Upstream:
    """One pool of workers: its balancer and a ``Server`` per address."""

    def __init__(
        self, name: str, config: object, nursery: trio.Nursery, pool: MemoryPool | None = None,
        previous: Upstream | None = None,
    ) -> None:
        """Args (past the config): ``previous``, the upstream of the same name before a
        reload, whose ``Server`` objects (and their pooled connections) are
        kept for every address whose connection settings are unchanged."""
        self.name = name
        self.config = config
        specs = config.servers  # type: ignore[attr-defined]
        # A server's max_conns is enforced by its Server, which queues
        # requests at the cap; the balancer would turn a full pool into 502s.
        uncapped = [dataclasses.replace(spec, max_conns=0) for spec in specs]
        self.balancer = Balancer(uncapped, config.balance)  # type: ignore[attr-defined]
        if previous is not None:
            self.balancer.carry_state(previous.balancer)
        multiplex = config.multiplex != "off"  # type: ignore[attr-defined]
        settings = (multiplex, config.connections, config.keepalive,  # type: ignore[attr-defined]
                    config.connect_timeout, config.send_timeout, config.dead_host_timeout,  # type: ignore[attr-defined]
                    config.ping_interval, config.ping_timeout)  # type: ignore[attr-defined]
        #: What a Server is made of, per server: equal keys, one Server can serve both.
        self.server_keys = [(spec.address, spec.max_conns, *settings) for spec in specs]
        reusable: dict[tuple, Server] = {}
        if previous is not None:
            reusable = dict(zip(previous.server_keys, previous.servers))
        self.servers: Sequence[Server] = [
            reusable.pop(key, None) or Server(
                spec.address, nursery,
                multiplex=multiplex,
                connections=config.connections,  # type: ignore[attr-defined]
                keepalive=config.keepalive,  # type: ignore[attr-defined]
                connect_timeout=config.connect_timeout,  # type: ignore[attr-defined]
                send_timeout=config.send_timeout,  # type: ignore[attr-defined]
                max_conns=spec.max_conns,
                dead_host_timeout=config.dead_host_timeout,  # type: ignore[attr-defined]
                ping=(config.ping_interval, config.ping_timeout),  # type: ignore[attr-defined]
            )
            for key, spec in zip(self.server_keys, specs)
        ]
        for server, spec in zip(self.servers, specs):
            server.set_down(spec.down)
        #: How much of an answer is held for its client (``answer_buffering``).
        self.buffering = answer_buffering(config, pool)
        #: Servers an active health check found failing: never chosen.
        self.unhealthy: set[int] = set()
        if previous is not None and previous.unhealthy:
            # Still failing until a check passes, whatever their new positions.
            failing = {previous.servers[index].address for index in previous.unhealthy}
            self.unhealthy = {index for index, spec in enumerate(specs) if spec.address in failing}
        # ``hash_key = "cookie:sid"`` as ("cookie", b"sid"), split once here
        # rather than on every request.
        kind, _, name = config.hash_key.partition(":")  # type: ignore[attr-defined]
        self.hash_kind = kind
        self.hash_name = name.encode("latin-1")
        #: The balancing needs a key from each request (ip_hash, hash).
        self.hashed = config.balance in ("ip_hash", "hash")  # type: ignore[attr-defined]

    def hash_key(self, head: typing.Any, remote_addr: bytes) -> bytes | None:
        """The key ``ip_hash`` or ``hash`` balances request ``head`` by (None: no key-based balancing)."""
        method = self.config.balance  # type: ignore[attr-defined]
        if method == "ip_hash":
            return remote_addr
        if method != "hash":
            return None
        kind, name = self.hash_kind, self.hash_name
        if kind == "remote_addr":
            return remote_addr
        if kind == "uri":
            return head.target
        if kind == "header":
            lname = name.lower()
            for hname, value in head.headers:
                if hname == lname:
                    return value
            return b""
        if kind == "cookie":
            for hname, value in head.headers:
                if hname == b"cookie":
                    for part in value.split(b";"):
                        cname, _, cvalue = part.strip().partition(b"=")
                        if cname == name:
                            return cvalue
            return b""
        if kind == "arg":
            for part in head.query.split(b"&"):
                aname, _, avalue = part.partition(b"=")
                if aname == name:
                    return avalue
            return b""
        return None

    def close_all(self) -> None:
        for server in self.servers:
            server.close_all()


async def run_health_checks(upstream: Upstream) -> None:
    """Check every server of ``upstream`` every ``interval`` seconds, forever.

    A check is a FastCGI GET of ``path`` on a fresh connection (a pooled one
    could hide a worker that no longer accepts). A server whose check fails
    (no connection, no answer within ``timeout``, or a status other than
    ``expect_status``) is left out of the balancing until a check passes.
    """
    from ..client import cgi_params

    check = upstream.config.health_check  # type: ignore[attr-defined]
    params = cgi_params("GET", check.path, headers={"User-Agent": "fcgi-cluster health check"})

    async def probe(index: int, server: Server) -> None:
        healthy = False
        with trio.move_on_after(check.timeout):
            try:
                async with open_connection(server.address, connect_timeout=check.timeout) as conn:
                    response = await conn.request(params)
                healthy = response.status == check.expect_status
            except FastCGIError:
                healthy = False
        was_healthy = index not in upstream.unhealthy
        if healthy and not was_healthy:
            upstream.unhealthy.discard(index)
            log.warning("upstream %s: %s passes its health check again", upstream.name, server.address)
        elif not healthy and was_healthy:
            upstream.unhealthy.add(index)
            log.warning("upstream %s: %s failed its health check (%s)", upstream.name, server.address, check.path)

    while True:
        async with trio.open_nursery() as nursery:
            for index, server in enumerate(upstream.servers):
                if not server.down:
                    nursery.start_soon(probe, index, server)
        await trio.sleep(check.interval)
