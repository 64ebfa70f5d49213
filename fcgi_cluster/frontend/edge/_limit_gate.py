"""A route's limits applied to its requests: the trio side of ``_limits``.

``LimitZones`` holds a process's zones (``[limit_req_zone.NAME]``,
``[limit_conn_zone.NAME]``); a reload keeps a zone's state when the zone's
settings are unchanged. ``RouteLimits.admit`` wraps one request: it waits the
delay ``limit_req`` gives (``trio.sleep``), counts it under ``limit_conn``
while it runs, and says which status refuses it, if any. Routes with limits
are answered by a connection's task (never from the hub's callbacks), since
a request may have to wait.

limit_req is checked first, then limit_conn (a request waiting its
limit_req delay is not yet in progress). The client's key is taken from
``remote_addr`` as the connection gives it (REMOTE_ADDR), so a real-address
feature that sets it feeds the limits too.

Error handling: a refused request is logged at warning level as nginx does
("limiting requests, excess ... by zone ..."), at most one line per zone per
second, with the count of lines left out.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import trio

from ._limits import Concurrency, LogThrottle, RequestRate, request_key

__all__ = ["LimitZones", "RouteLimits", "route_limits"]

log = logging.getLogger("fcgi_cluster.frontend")


class _Zone:
    """One zone: its settings, its state, its log throttle."""

    __slots__ = ("name", "config", "state", "throttle")

    def __init__(self, name: str, config: Any, state: RequestRate | Concurrency) -> None:
        self.name = name
        self.config = config
        self.state = state
        self.throttle = LogThrottle()

    def log_refusal(self, what: str, key: bytes, route: str) -> None:
        skipped = self.throttle.allow(trio.current_time())
        if skipped is None:
            return
        more = f" ({skipped} more not logged)" if skipped else ""
        # A client's key goes in the log printable only: no control character of its own.
        shown = "".join(c if c.isprintable() else "?" for c in key[:100].decode("ascii", "backslashreplace"))
        log.warning('%s by zone "%s", client key %s, route %s%s', what, self.name, shown, route, more)


class LimitZones:
    """A process's limit zones, by name, carried over a reload when unchanged.

    Args:
        config: the ``ClusterConfig``.
        previous: the zones of the configuration before a reload, if any.
    """

    def __init__(self, config: Any, previous: LimitZones | None = None) -> None:
        old = previous.zones if previous is not None else {}
        self.zones: dict[tuple[str, str], _Zone] = {}
        for kind, table in (("req", config.limit_req_zones), ("conn", config.limit_conn_zones)):
            for name, zone in table.items():
                kept = old.get((kind, name))
                if kept is not None and kept.config == zone:
                    self.zones[kind, name] = kept
                else:
                    state = RequestRate(zone.rate, zone.max_keys) if kind == "req" else Concurrency()
                    self.zones[kind, name] = _Zone(name, zone, state)


class RouteLimits:
    """One route's ``limit_req`` and ``limit_conn``, bound to their zones."""

    __slots__ = ("route", "req", "req_status", "burst", "delay", "conn", "conn_status", "most")

    def __init__(self, route: Any, zones: LimitZones) -> None:
        self.route = route.prefix if route.prefix is not None else route.regex.pattern
        self.req = self.conn = None
        self.req_status, self.conn_status = route.limit_req_status, route.limit_conn_status
        self.burst = self.most = 0
        self.delay = 0.0
        if route.limit_req is not None:
            self.req = zones.zones["req", route.limit_req.zone]
            self.burst = route.limit_req.burst
            self.delay = math.inf if route.limit_req.nodelay else float(route.limit_req.delay)
        if route.limit_conn is not None:
            self.conn = zones.zones["conn", route.limit_conn.zone]
            self.most = route.limit_conn.max

    @contextlib.asynccontextmanager
    async def admit(self, remote_addr: bytes, headers: list[tuple[bytes, bytes]]) -> AsyncIterator[int]:
        """Hold one request under the route's limits; yields 0 to serve it, else the status refusing it.

        A request limit_req delays waits here first; a request limit_conn
        counts is counted until the block ends.
        """
        held = None
        status = 0
        req = self.req
        if req is not None:
            key = request_key(req.config.key, remote_addr, headers)
            if key:
                wait = req.state.take(key, trio.current_time(), self.burst, self.delay)  # type: ignore[union-attr]
                if wait is None:
                    status = self.req_status
                    req.log_refusal("limiting requests", key, self.route)
                elif wait:
                    await trio.sleep(wait)
        conn = self.conn
        if not status and conn is not None:
            key = request_key(conn.config.key, remote_addr, headers)
            if key:
                if conn.state.enter(key, self.most):  # type: ignore[union-attr]
                    held = key
                else:
                    status = self.conn_status
                    conn.log_refusal("limiting connections", key, self.route)
        try:
            yield status
        finally:
            if held is not None:
                conn.state.leave(held)  # type: ignore[union-attr]


def route_limits(route: Any, zones: LimitZones) -> RouteLimits | None:
    """The route's ``RouteLimits``, or None when it has neither limit."""
    if route.limit_req is None and route.limit_conn is None:
        return None
    return RouteLimits(route, zones)
