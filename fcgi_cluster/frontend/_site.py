"""What one front-end process serves, as its requests see it: routes, upstream pools, limits, logs.

``Site`` is made from a ``ClusterConfig``: each route's prepared parts
(``RoutePlan``: its params, root, index and answer buffering, worked out
once rather than per request), the upstreams, the HTTP limits, the access
log, the deadlines task and the count of requests in progress. The server
(``_server``) adds the listening and accepting; a client connection
(``_client``) reads what it needs from here.

A reload (SIGHUP) makes a new ``Site`` from the new file with the old one as
``previous``: what lives as long as the process (the deadlines task, the
count of open connections, the answer memory) is shared, and an upstream
whose configuration is unchanged is carried over whole, with its pooled
connections, balancer and health. A connection sees the site through a
``SiteView``, which pins the site a request started with until that request
ends, so a request never sees two configurations.
"""

from __future__ import annotations

import dataclasses
import logging
import typing

import trio

from ..client._buffer import Buffering, MemoryPool
from ._access_log import AccessLog
from ._deadlines import Deadlines
from ._http import HTTPLimits, RequestHead, error_page
from .edge._accel import Accel
from .edge._listeners import listener_plans
from .edge._cache import route_caches
from ._upstream import ANSWER_POOL, ANSWER_POOL_PER_REQUEST, Upstream, answer_buffering
from .edge._compress import Compression, compression_of
from .edge._limit_gate import LimitZones, RouteLimits, route_limits

__all__ = ["RoutePlan", "Site", "SiteView", "log_stderr", "status_page"]

log = logging.getLogger("fcgi_cluster.frontend")

#: The keys of an upstream's answer buffering that a route may set for itself.
BUFFERING_KEYS = ("buffering", "buffer_size", "max_temp_file_size", "temp_path")


@dataclasses.dataclass(frozen=True)
class RoutePlan:
    """A route's parts that every request of it uses, prepared once."""

    #: Its own FastCGI params (encoded names and values), overriding any other.
    extra: dict[bytes, bytes]
    #: DOCUMENT_ROOT.
    root: bytes
    #: The index file name for a path ending in "/" (b"" for none).
    index: bytes
    #: Answer buffering (shared connection, connection of its own); None for a static route.
    buffering: tuple[Buffering, Buffering] | None
    #: How its answers are compressed; None: they are not (``gzip`` off).
    compression: Compression | None = None
    #: Its limit_req / limit_conn; None: none (its requests may be answered from callbacks).
    limits: RouteLimits | None = None


class Site:
    """Everything one front-end process serves: its routes and upstream pools.

    Args:
        config: a ``ClusterConfig``.
        nursery: where the upstreams' connections and the deadlines task run.
    """

    def __init__(self, config: object, nursery: trio.Nursery, previous: Site | None = None) -> None:
        self.config = config
        fe = config.frontend  # type: ignore[attr-defined]
        self.frontend = fe
        self.limits = HTTPLimits(
            max_request_line=fe.max_request_line,
            max_header_size=fe.max_header_size,
            max_headers=fe.max_headers,
            max_body_size=fe.max_body_size,
        )
        upstreams = config.upstreams  # type: ignore[attr-defined]
        if previous is None:
            #: Memory lent to answers past their buffer_size, before a file.
            self.answer_pool = MemoryPool(ANSWER_POOL, ANSWER_POOL_PER_REQUEST)
            self.deadlines = Deadlines()
            nursery.start_soon(self.deadlines.run)
            #: Client connections open, bounded by max_connections (for the life of the process).
            self.connections = trio.Semaphore(fe.max_connections)
            self.upstreams = {name: Upstream(name, upstream, nursery, self.answer_pool) for name, upstream in upstreams.items()}
            self.access_log = AccessLog.open(fe.access_log)
            if self.access_log is not None:
                nursery.start_soon(self.access_log.run)
        else:
            self.answer_pool = previous.answer_pool
            self.deadlines = previous.deadlines
            self.connections = previous.connections
            self.upstreams = {}
            for name, upstream in upstreams.items():
                old = previous.upstreams.get(name)
                if old is not None and old.config == upstream:
                    self.upstreams[name] = old
                else:
                    self.upstreams[name] = Upstream(name, upstream, nursery, self.answer_pool, previous=old)
            same_log = fe.access_log == previous.frontend.access_log
            self.access_log = previous.access_log if same_log else AccessLog.open(fe.access_log)
            if not same_log and self.access_log is not None:
                nursery.start_soon(self.access_log.run)
        #: limit_req / limit_conn zones: per process, kept over a reload when unchanged.
        self.limit_zones = LimitZones(config, previous.limit_zones if previous is not None else None)
        self.routes = config.routes  # type: ignore[attr-defined]
        self.route_plans = [self._plan(route) for route in self.routes]
        #: Each listening socket's client-address settings (``edge._listeners``).
        self.listeners = listener_plans(fe)
        #: X-Accel-Redirect / X-Sendfile handling (``edge._accel``); None when the file asks for none.
        self.accel = Accel.for_site(config)
        #: Each route's response cache (None: not cached), kept over a reload where the route is unchanged.
        self.caches = route_caches(self.routes, nursery, *((previous.caches, previous.routes) if previous else ()))
        self.active_requests = 0
        #: Requests begun in this process, over every site (the status page's).
        self.requests = previous.requests if previous is not None else 0
        self._idle_lot = trio.lowlevel.ParkingLot()

    def retired_upstreams(self, successor: Site) -> list[Upstream]:
        """This site's upstreams that ``successor`` does not use (to close once this site is idle)."""
        kept = {id(upstream) for upstream in successor.upstreams.values()}
        return [upstream for upstream in self.upstreams.values() if id(upstream) not in kept]

    def retired_servers(self, successor: Site) -> list[typing.Any]:
        """The worker ``Server`` objects of this site that ``successor`` does not use."""
        kept = {id(server) for upstream in successor.upstreams.values() for server in upstream.servers}
        return [server for upstream in self.upstreams.values() for server in upstream.servers if id(server) not in kept]

    def _plan(self, route: typing.Any) -> RoutePlan:
        buffering = None
        if route.upstream is not None:
            # The route's own buffering keys over its upstream's.
            own = {key: getattr(route, key) for key in BUFFERING_KEYS if getattr(route, key) is not None}
            upstream = dataclasses.replace(self.config.upstreams[route.upstream], **own)  # type: ignore[attr-defined]
            buffering = answer_buffering(upstream, self.answer_pool)
        return RoutePlan(
            extra={k.encode(): v.encode() for k, v in (route.params or {}).items()},
            root=(route.root or self.frontend.root).encode(),
            index=(route.index or "").encode(),
            buffering=buffering,
            compression=compression_of(route),
            limits=route_limits(route, self.limit_zones),
        )

    def route_of(self, path: bytes) -> tuple[int, typing.Any]:
        """The first route matching a normalised path, and its number; (-1, None) for none."""
        text_path = path.decode("utf-8", "surrogateescape")
        for number, route in enumerate(self.routes):
            if route.match(text_path):
                return number, route
        return -1, None

    def request_started(self) -> None:
        self.active_requests += 1
        self.requests += 1

    def request_ended(self) -> None:
        self.active_requests -= 1
        if not self.active_requests:
            self._idle_lot.unpark_all()

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        while self.active_requests:
            await self._idle_lot.park()

    def log_request(self, remote_addr: bytes, head: RequestHead, status: int, sent: int, started: float) -> None:
        """One line in the access log, if there is one."""
        if self.access_log is not None:
            self.access_log.write(remote_addr, head, status, sent, started)


class SiteView:
    """The site as one client connection sees it: the current one, pinned for a request's life.

    ``request_started`` pins the site current at that moment (the same one
    the request's route was just chosen from: no await comes between), and
    ``request_ended`` lets go of it, so a kept-alive connection's next
    request sees a reloaded configuration, while a request in flight keeps
    the routes, upstreams and plans it began with.

    Args:
        current: returns the site new requests get.
    """

    __slots__ = ("_current", "_pinned")

    def __init__(self, current: typing.Callable[[], Site]) -> None:
        self._current = current
        self._pinned: Site | None = None

    @property
    def site(self) -> Site:
        """The request's site while one is in progress, else the current one.

        (The properties below read it inline: a dozen reads per request, one
        Python call fewer each.)
        """
        return self._pinned or self._current()

    @property
    def frontend(self) -> typing.Any:
        return (self._pinned or self._current()).frontend

    @property
    def limits(self) -> HTTPLimits:
        return (self._pinned or self._current()).limits

    @property
    def upstreams(self) -> dict[str, Upstream]:
        return (self._pinned or self._current()).upstreams

    @property
    def routes(self) -> typing.Any:
        return (self._pinned or self._current()).routes

    @property
    def route_plans(self) -> list[RoutePlan]:
        return (self._pinned or self._current()).route_plans

    @property
    def connections(self) -> trio.Semaphore:
        return (self._pinned or self._current()).connections

    @property
    def deadlines(self) -> Deadlines:
        return (self._pinned or self._current()).deadlines

    @property
    def answer_pool(self) -> MemoryPool:
        return (self._pinned or self._current()).answer_pool

    def route_of(self, path: bytes) -> tuple[int, typing.Any]:
        """``Site.route_of`` of the request's site."""
        return (self._pinned or self._current()).route_of(path)

    def request_started(self) -> None:
        """A request begins: pin the current site for it."""
        site = self._pinned = self._current()
        site.request_started()

    def request_ended(self) -> None:
        """The request ends: its site may retire."""
        site, self._pinned = self.site, None
        site.request_ended()

    def log_request(self, remote_addr: bytes, head: RequestHead, status: int, sent: int, started: float) -> None:
        """``Site.log_request`` of the request's site."""
        (self._pinned or self._current()).log_request(remote_addr, head, status, sent, started)


def log_stderr(address: str, stderr: bytes) -> None:
    """A worker's FCGI_STDERR, line by line, into the error log."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            log.warning("worker %s stderr: %s", address, line)


_STATUS_PAGES: dict[int, bytes] = {}


def status_page(status: int) -> bytes:
    """The small HTML page of an error status, made once."""
    page = _STATUS_PAGES.get(status)
    if page is None:
        page = _STATUS_PAGES[status] = error_page(status)
    return page
