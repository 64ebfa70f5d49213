"""One HTTP request sent to an upstream pool and its answer streamed back.

The trip: choose a server (the pool's balancer), take a connection from it,
queue the request, wait for the CGI header block, send the HTTP head, then
the body as it arrives. nginx's ``next_upstream`` rules decide what happens
when a server fails:

* Retried on the next server: a connect error, a connection lost or broken
  before any of the response reached the client, a read timeout, a request
  the worker refused (OVERLOADED, CANT_MPX_CONN), a server whose connections
  stayed busy at ``max_conns`` for ``connect_timeout``. Each counts against
  that server's ``max_fails`` but the last two: the worker is alive.
* Never retried: anything after response bytes reached the client; a
  non-idempotent method (POST, PATCH, LOCK) once the request may have reached
  the worker (only connect errors are safe), unless
  ``next_upstream_non_idempotent``; a request whose body was streamed (it
  cannot be sent twice).
* Bounded by ``tries`` (0: each server once) and ``next_upstream_timeout``.

Answers when nothing could be had: 502 (refused, reset, garbage, nothing
available), 503 (every connection busy, as HAProxy's queue timeout) or 504
(timeouts). No traceback or worker detail reaches the
client; the error log gets the reason, tagged with the worker's address.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import trio

from ..client import (
    Buffering,
    Connection,
    ConnectError,
    ConnectionLost,
    FastCGIError,
    PeerUnresponsive,
    RequestRefused,
    ResponseOverflow,
    ResponseStream,
    UpstreamProtocolError,
)
from ..protocol import ProtocolStatus
from ._upstream import ServerBusy, Upstream

__all__ = [
    "UpstreamFailure", "FirstTry", "ProxyResult", "finish_try", "open_upstream_response", "IDEMPOTENT",
]

log = logging.getLogger("fcgi_cluster.frontend")

#: Times a request may be sent again, unstarted, to the same server on a new
#: connection (a stopping worker refused it, or closed its kept connection
#: under it): each child of a recycling pool can cost one.
RESENDS = 2

#: Methods RFC 9110 calls idempotent, plus those nginx treats so: safe to
#: send twice. nginx's list of the others is POST, LOCK and PATCH.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PROPFIND", b"MKCOL", b"COPY", b"MOVE", b"UNLOCK", b"PROPPATCH"})

class UpstreamFailure(Exception):
    """No server gave an answer; ``status`` is what the client gets (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class FirstTry:
    """How far a request's first try got before ``open_upstream_response`` took it over.

    Attributes:
        index: the server chosen.
        started: ``balancer.started(index)`` was called.
        conn: the connection it was sent on, with ``response`` its answer
            so far; None when it was not sent.
        error: what the try met before it could be sent (it failed then).
    """

    index: int
    started: bool = False
    conn: Connection | None = None
    response: ResponseStream | None = None
    error: FastCGIError | None = None


@dataclass(slots=True)
class ProxyResult:
    """An answer on its way: the response and what to do when it is finished with."""

    response: ResponseStream
    upstream: Upstream
    index: int
    _conn: object

    def finish(self, upstream_failed: bool = False, started: float = 0.0) -> None:
        """Close the response, give the connection back, tell the balancer how it went.

        Args:
            upstream_failed: the worker failed mid-body (connection lost,
                garbage, timeout): counted against its ``max_fails``. A client
                that went away is not the worker's fault.
            started: the request's start (``time.time()``), for the latency histogram.
        """
        finish_try(self.response, self.upstream, self.index, self._conn, upstream_failed, started)  # type: ignore[arg-type]


def finish_try(
    response: ResponseStream, upstream: Upstream, index: int, conn: Connection, upstream_failed: bool = False,
    started: float = 0.0,
) -> None:
    """``ProxyResult.finish``, for a caller that holds the parts rather than a ``ProxyResult``."""
    response.close()
    # Closing the response aborted the request if it had not ended; the
    # server keeps the connection only if it is healthy and now idle (a
    # multiplexed one serves on: other requests may be using it).
    server = upstream.servers[index]
    server.release(conn)
    balancer = upstream.balancer
    balancer.finished(index)
    if upstream_failed:
        balancer.failed(index)
        server.counters.aborted += 1
    else:
        balancer.succeeded(index)
        if started:
            server.counters.observe(time.time() - started)


async def open_upstream_response(
    upstream: Upstream,
    params: dict[bytes, bytes],
    body: bytes | AsyncIterator[bytes],
    *,
    method: bytes,
    hash_key: bytes | None,
    wait_head: Callable[[ResponseStream, float], Awaitable[None]] | None = None,
    first: FirstTry | None = None,
    buffering: tuple[Buffering, Buffering] | None = None,
) -> ProxyResult:
    """Send one request to the pool and wait for its CGI head, retrying as the module says.

    Args:
        upstream: the pool.
        params: the FastCGI params.
        body: the whole body (can be resent) or an async iterator (sent once).
        method: the HTTP method, for the retry rules.
        hash_key: the key for ``ip_hash`` / ``hash`` balancing.
        wait_head: ``wait_head(response, deadline)`` waits for a response's
            head and raises ``trio.TooSlowError`` at the deadline (default:
            ``read_head`` under that deadline); the server's version also
            watches the client.
        first: the first try, begun already by a caller that went as far
            as it could without waiting.
        buffering: ``answer_buffering`` of the route (default: the upstream's).

    Returns:
        A ``ProxyResult`` whose response has its status and headers; the
        caller reads the body and must call ``finish``.

    Raises:
        UpstreamFailure: no server answered; its ``status`` is 502 or 504.
    """
    config = upstream.config
    balancer = upstream.balancer
    tries = config.tries or len(upstream.servers)  # type: ignore[attr-defined]
    read_timeout = config.read_timeout or math.inf  # type: ignore[attr-defined]
    total = config.next_upstream_timeout  # type: ignore[attr-defined]
    give_up_at = time.monotonic() + total if total else math.inf
    replayable = isinstance(body, bytes)
    idempotent = method in IDEMPOTENT or config.next_upstream_non_idempotent  # type: ignore[attr-defined]
    tried: set[int] = set()
    shared, alone = buffering or upstream.buffering
    status, reason = 502, "no live upstream server"
    attempts = 0
    resends = 0  # sent again unstarted, not counted as tries (RESENDS at most)
    refused_here: int | None = None  # the server whose stopping child refused the last try
    # More rounds than tries: a request refused unstarted by a stopping
    # worker (OVERLOADED), or cut with its kept connection before its head,
    # is sent again to the same server, on a new connection, without
    # counting as a try (RESENDS times at most).
    for _ in range(tries + RESENDS):
        conn = None
        response = None
        error = None
        if first is not None:
            index, conn, response, error = first.index, first.conn, first.response, first.error
            if not first.started:
                balancer.started(index)
            first = None
        else:
            index = balancer.choose(hash_key, exclude=tried | upstream.unhealthy if upstream.unhealthy else tried,
                                    retry=bool(tried))
            if index is None:
                break
            balancer.started(index)
        tried.add(index)
        server = upstream.servers[index]
        try:
            if error is not None:
                raise error
            if response is None:
                if refused_here == index and server.multiplexed:
                    conn = await server.fresh_connection()  # not another of the refusing child's
                else:
                    conn = server.ready_connection() or await server.acquire()
                refused_here = None
                response = conn.start_request(params, body, buffering=shared if server.multiplexed else alone)
            deadline = trio.current_time() + read_timeout
            if wait_head is None:
                # A bare CancelScope: fail_after costs a generator per request.
                with trio.CancelScope(deadline=deadline) as scope:
                    await response.read_head()
                if scope.cancelled_caught:
                    raise trio.TooSlowError
            else:
                await wait_head(response, deadline)
            return ProxyResult(response, upstream, index, conn)
        except (FastCGIError, trio.TooSlowError) as exc:
            sent = conn is not None
            # Closing the response aborts just this request: a multiplexed
            # connection serves the others on, and release() keeps a
            # connection only if it is alive and idle.
            if response is not None:
                response.close()
            if conn is not None:
                server.release(conn)
            balancer.finished(index)
            counters = server.counters
            if (isinstance(exc, ConnectionLost) and not isinstance(exc, PeerUnresponsive) and conn is not None and conn.answered and idempotent
                    and replayable and resends < RESENDS):
                # A kept connection closed under a request before its answer's
                # head (nothing reached the client): a worker closing it as idle (a pool child at
                # pm.max_requests, a stop), the request on the wire. Sent again
                # once, on a new connection, as an HTTP client does with a
                # stale kept-alive connection; not counted against the server.
                # Not when the worker stopped answering (PeerUnresponsive: its
                # host vanished, it hung): that is a failure, and the next server's turn.
                resends += 1
                tried.discard(index)
                log.info("upstream %s: %s; sending it again on a new connection", upstream.name, exc)
                continue
            if isinstance(exc, RequestRefused):
                counters.refused += 1
                status, reason = 502, f"{server.address} refused the request: {exc}"
            elif isinstance(exc, ServerBusy):
                counters.busy += 1
                status, reason = 503, str(exc)
            elif isinstance(exc, ResponseOverflow):
                counters.protocol += 1
                # A head too large for the buffering: the worker is alive.
                status, reason = 502, f"{server.address}: {exc}"
            else:
                balancer.failed(index)
                server.forget_capabilities()
                if isinstance(exc, trio.TooSlowError):
                    counters.timeout += 1
                elif isinstance(exc, ConnectError):
                    counters.connect += 1
                else:
                    counters.protocol += 1
                status = 504 if isinstance(exc, trio.TooSlowError) else 502
                reason = (
                    f"{server.address} did not answer within {read_timeout:g} s"
                    if isinstance(exc, trio.TooSlowError)
                    else f"{server.address}: {exc}"
                )
            if (isinstance(exc, RequestRefused) and exc.protocol_status is ProtocolStatus.OVERLOADED
                    and replayable and resends < RESENDS):
                resends += 1
                tried.discard(index)
                refused_here = index
                log.info("upstream %s: %s; sending it again on a new connection", upstream.name, reason)
                continue
            log.warning("upstream %s: %s", upstream.name, reason)
            attempts += 1
            if isinstance(exc, ConnectError) or isinstance(exc, RequestRefused):
                retry = replayable
            elif isinstance(exc, (ConnectionLost, UpstreamProtocolError, trio.TooSlowError)):
                retry = replayable and (idempotent or not sent)
            else:
                retry = False
            if not retry or attempts >= tries or time.monotonic() >= give_up_at:
                break
            counters.retries += 1
        except BaseException:
            if response is not None:
                response.close()
            if conn is not None:
                server.release(conn)
            balancer.finished(index)
            raise
    raise UpstreamFailure(status, reason)
