"""A request to a cached route, answered: from the cache, or from the worker with the answer kept.

The I/O of the response cache, as thin as it goes: the decisions are
``_cache_policy``'s, the entries ``RouteCache``'s. A client connection hands
a GET or HEAD without a body on a route with a ``[route.cache]`` here
(``serve_cached``), with the three parts of its own it needs passed in
(``ProxyParts``): its params builder, its answer relay and its small-answer
writer, so an answer from the worker takes the same path as on any route.

Order of the decisions, nginx's: bypass -> lookup (HIT) -> an expired entry
served while another request updates it (UPDATING, ``use_stale`` "updating",
or ``background_update``) -> wait for another request's fill (``lock``) ->
the worker (MISS, EXPIRED, BYPASS), whose failure or listed status may be
met by the expired entry instead (STALE). A HEAD is sent to the worker as a
GET, so its answer fills the GET entry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing

import trio

from ...client import FastCGIError
from .._ranges import UNSATISFIABLE, content_range, wanted_range
from .._client_io import ClientGone
from .._proxy import UpstreamFailure, open_upstream_response
from .._relay import response_headers
from ._cache import RouteCache
from ._cache_policy import (
    BYPASS, CACHED_METHODS, EXPIRED, HIT, MISS, STALE, UPDATING,
    NOT_MODIFIED_HEADERS, bypassed, freshness, not_modified, request_key, stale_on_failure, stale_on_status,
    stored_headers,
)  # fmt: skip
from ._cache_store import Entry

__all__ = ["ProxyParts", "cacheable_request", "serve_cached", "STATUS_HEADER"]

log = logging.getLogger("fcgi_cluster.frontend")

STATUS_HEADER = b"X-Cache-Status"


class ProxyParts(typing.NamedTuple):
    """What the client connection lends the cache to ask the worker and answer."""

    #: ``params(head, route_number, path, content_length)``: the FastCGI params.
    params: typing.Callable[..., typing.Any]
    #: ``relay(head, proxy_result, started) -> keep``: write a worker's answer to the client.
    relay: typing.Callable[..., typing.Awaitable[bool]]
    #: ``simple(head, status, started) -> keep``: a small generated error answer.
    simple: typing.Callable[..., typing.Awaitable[bool]]
    #: ``watch()``: returns when the client hangs up (bytes it pipelines meanwhile kept).
    watch: typing.Callable[[], typing.Awaitable[None]]


def cacheable_request(head: typing.Any) -> bool:
    """Whether a request to a cached route may be answered from the cache: GET or HEAD without a body."""
    return head.method in CACHED_METHODS and not head.chunked and not head.content_length


class _Recording:
    """A worker's answer as a ``Relay`` reads it, with its body kept (up to ``limit`` bytes) for the cache.

    The client's headers lose X-Accel-Expires (for the front door only, as
    nginx hides it) and gain X-Cache-Status when asked.
    """

    __slots__ = ("_response", "status", "raw_headers", "pieces", "_left", "_on_whole")

    def __init__(self, response: typing.Any, limit: int, extra: list[tuple[bytes, bytes]],
                 on_whole: typing.Callable[[bytes], None] | None = None) -> None:
        self._response = response
        self.status = response.status
        self.raw_headers = [(n, v) for n, v in response.raw_headers if n.lower() != b"x-accel-expires"] + extra
        self.pieces: list[bytes] | None = [] if limit >= 0 else None
        self._left = limit
        self._on_whole = on_whole

    def take_ready(self) -> bytes | None:
        chunk = self._response.take_ready()
        if chunk is not None and self.pieces is not None:
            self._left -= len(chunk)
            if self._left < 0:
                self.pieces = None  # too large to keep: relayed only
            else:
                self.pieces.append(chunk)
        return chunk


    @property
    def complete(self) -> bool:
        return self._response.complete

    @property
    def failed(self) -> bool:
        return self._response.failed

    @property
    def has_ready(self) -> bool:
        return self._response.has_ready

    @property
    def has_stderr(self) -> bool:
        return self._response.has_stderr

    @property
    def stderr(self) -> bytes:
        return self._response.stderr

    def raise_if_failed(self) -> None:
        """What ``Relay`` calls once the answer is complete and all taken: the moment to store it.

        Stored here, before its last bytes are written, so a client that
        asks again on another connection (another process) finds it.
        """
        self._response.raise_if_failed()
        on_whole, self._on_whole = self._on_whole, None
        if on_whole is not None and self.pieces is not None:
            on_whole(b"".join(self.pieces))

    async def wait_ready(self) -> None:
        await self._response.wait_ready()

    def close(self) -> None:
        self._response.close()


async def serve_cached(
    client: typing.Any, head: typing.Any, number: int, route: typing.Any, path: bytes, started: float, parts: ProxyParts,
) -> bool:
    """Answer a ``cacheable_request`` on cached route ``number``; False when the connection must close."""
    http = client.http
    if not http.request_complete:
        http.next_event()  # the EndOfMessage that came with the head
    server = client.server
    cache: RouteCache = server.site.caches[number]
    compression = server.route_plans[number].compression  # after the cache, as nginx's gzip
    config = cache.config
    key = request_key(config, head, b"https" if client.params.https else b"http", client.remote_addr)
    now = time.time()
    entry = None
    word = MISS
    if bypassed(config, head):
        word = BYPASS
    else:
        entry = cache.lookup(key, head.headers, now)
        if entry is not None:
            if entry.fresh(now):
                return await _send_entry(client, cache, head, entry, HIT, started, compression)
            word = EXPIRED
            if "updating" in config.use_stale:
                if key in cache.filling:
                    return await _send_entry(client, cache, head, entry, UPDATING, started, compression)
                if config.background_update and cache.nursery is not None:
                    _refresh_in_background(client, cache, key, head, number, route, path, parts)
                    return await _send_entry(client, cache, head, entry, UPDATING, started, compression)
    keep_answer = entry is not None or cache.used_enough(key, now)  # min_uses: an entry's key has had them
    owner = cache.begin_fill(key) if keep_answer else None
    if owner is None and keep_answer and config.lock and word != BYPASS:
        if not await _wait_for_fill(cache.filling[key], config.lock_timeout, parts.watch):
            _log(client, head, 499, 0, started)  # nginx's word for a client that closed first
            raise ClientGone()
        now = time.time()
        filled = cache.lookup(key, head.headers, now)
        if filled is not None and filled.fresh(now):
            return await _send_entry(client, cache, head, filled, HIT, started, compression)
        keep_answer = False  # as nginx: after the lock's wait, the answer is not cached
    try:
        return await _from_worker(client, cache, key, head, number, route, path, started, parts, entry, word,
                                  keep_answer, owner)
    finally:
        if owner is not None:
            cache.end_fill(key, owner)


async def _wait_for_fill(filled: trio.Event, timeout: float, watch: typing.Callable[[], typing.Awaitable[None]]) -> bool:
    """Wait for another request's fill, up to ``timeout``; False when the client hung up meanwhile."""
    gone = False
    async with trio.open_nursery() as nursery:

        async def watcher() -> None:
            nonlocal gone
            await watch()
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watcher)
        with trio.move_on_after(timeout):
            await filled.wait()
        nursery.cancel_scope.cancel()
    return not gone


async def _from_worker(
    client: typing.Any, cache: RouteCache, key: bytes, head: typing.Any, number: int, route: typing.Any, path: bytes,
    started: float, parts: ProxyParts, entry: Entry | None, word: bytes, keep_answer: bool, owner: trio.Event | None,
) -> bool:
    config = cache.config
    compression = client.server.route_plans[number].compression
    server = client.server
    upstream = server.upstreams[route.upstream]
    as_get = head._replace(method=b"GET") if head.method == b"HEAD" else head
    try:
        result = await open_upstream_response(
            upstream, parts.params(as_get, number, path, head.content_length), b"", method=b"GET",
            hash_key=upstream.hash_key(head, client.remote_addr) if upstream.hashed else None,
            buffering=server.route_plans[number].buffering,
        )
    except UpstreamFailure as exc:
        if entry is not None and stale_on_failure(config, exc.status):
            return await _send_entry(client, cache, head, entry, STALE, started, compression)
        return await parts.simple(head, exc.status, started)
    response = result.response
    if entry is not None and stale_on_status(config, response.status):
        result.finish()
        return await _send_entry(client, cache, head, entry, STALE, started, compression)
    now = time.time()
    fresh_for = freshness(config, response.status, response.raw_headers, now) if keep_answer else None
    cache.answers[word] += 1
    extra = [(STATUS_HEADER, word)] if config.status_header else []
    on_whole: typing.Callable[[bytes], None] | None = None
    if fresh_for is not None:
        headers, declared = response_headers(response.raw_headers)

        def keep(body: bytes) -> None:
            if declared is None or declared == len(body):  # else the relay fails it: not kept
                cache.store(key, head.headers, response.status, stored_headers(headers), body, fresh_for, now)
                if owner is not None:  # the waiters need not wait for a slow client to take the rest
                    cache.end_fill(key, owner)

        on_whole = keep
    recording = _Recording(response, config.max_entry_size if fresh_for else -1, extra, on_whole)
    return await parts.relay(head, dataclasses.replace(result, response=recording), started, compression)


async def _send_entry(client: typing.Any, cache: RouteCache, head: typing.Any, entry: Entry, word: bytes,
                      started: float, compression: typing.Any = None) -> bool:
    """Write a cached answer to the client; False when it could not be written whole (the connection closes).

    Entries are kept as the worker sent them; a route that compresses
    compresses each answer for its client (``compression``), as nginx's gzip
    runs after its cache.
    """
    cache.answers[word] += 1
    http = client.http
    headers = list(entry.headers)
    extra = [(STATUS_HEADER, word)] if cache.config.status_header else []
    if not_modified(head.headers, entry.status, entry.headers):
        kept = [(name, value) for name, value in headers if name.lower() in NOT_MODIFIED_HEADERS]
        await client.io.send(http.send_head(304, kept + extra) + http.send_end())
        _log(client, head, 304, 0, started)
        return True
    if entry.status == 200:  # as nginx's range filter: a 200 only, and never compressed
        part = wanted_range(head.headers, _value(headers, b"etag"), _value(headers, b"last-modified"), entry.length)
        if part is not None:
            return await _send_part(client, cache, head, entry, headers + extra, part, started)
    encoder, length = None, entry.length
    if compression is not None:
        encoder, headers = compression.choose(head, entry.status, headers, entry.length)
        length = None if encoder is not None else length
    out = http.send_head(entry.status, headers + extra, content_length=length)
    sent = 0
    if head.method != b"HEAD" and entry.length:
        for piece in cache.body(entry):
            sent += len(piece)
            if encoder is not None:
                piece = encoder.feed(piece)
                if not piece:
                    continue
            out += http.send_body(piece)
            if len(out) >= 256 * 1024:
                await client.io.send(out)
                out = b""
    if sent != entry.length and head.method != b"HEAD":
        # The file went away under the answer (purged, trimmed): the client
        # cannot be given the rest, so the connection closes.
        if out:
            await client.io.send(out)
        _log(client, head, entry.status, sent, started)
        return False
    if encoder is not None and head.method != b"HEAD":
        tail = encoder.finish()
        if tail:
            out += http.send_body(tail)
    await client.io.send(out + http.send_end())
    _log(client, head, entry.status, sent, started)
    return True


async def _send_part(client: typing.Any, cache: RouteCache, head: typing.Any, entry: Entry,
                     headers: list[tuple[bytes, bytes]], part: tuple[int, int] | object, started: float) -> bool:
    """A Range of a cached 200: 206 with the part, or 416 when no byte of it is there."""
    http = client.http
    if part is UNSATISFIABLE:
        kept = [(n, v) for n, v in headers if n.lower() not in (b"content-type", b"content-length")]
        body = b"416 Range Not Satisfiable\n"
        out = http.send_head(416, kept + [(b"Content-Type", b"text/plain"),
                                           (b"Content-Range", b"bytes */%d" % entry.length)], content_length=len(body))
        await client.io.send(out + (http.send_body(body) if head.method != b"HEAD" else b"") + http.send_end())
        _log(client, head, 416, 0, started)
        return True
    first, last = typing.cast(tuple[int, int], part)
    out = http.send_head(206, headers + [(b"Content-Range", content_range(first, last, entry.length))],
                         content_length=last - first + 1)
    at = sent = 0
    if head.method != b"HEAD":
        for piece in cache.body(entry):
            start, end = max(first - at, 0), min(last + 1 - at, len(piece))
            at += len(piece)
            if start < end:
                sent += end - start
                out += http.send_body(piece[start:end])
                if len(out) >= 256 * 1024:
                    await client.io.send(out)
                    out = b""
            if at > last:
                break
        if sent != last - first + 1:  # the file went away under the answer: the connection closes
            if out:
                await client.io.send(out)
            _log(client, head, 206, sent, started)
            return False
    await client.io.send(out + http.send_end())
    _log(client, head, 206, sent, started)
    return True


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for field, value in headers:
        if field.lower() == name:
            return value
    return None


def _log(client: typing.Any, head: typing.Any, status: int, sent: int, started: float) -> None:
    client.server.log_request(client.remote_addr, head, status, sent, started)


def _refresh_in_background(client: typing.Any, cache: RouteCache, key: bytes, head: typing.Any, number: int,
                           route: typing.Any, path: bytes, parts: ProxyParts) -> None:
    """Start a fill of ``key`` with no client waiting for it (``background_update``)."""
    event = cache.begin_fill(key)
    if event is None:
        return
    server = client.server
    upstream = server.upstreams[route.upstream]
    as_get = head._replace(method=b"GET")
    params = parts.params(as_get, number, path, head.content_length)
    hash_key = upstream.hash_key(head, client.remote_addr) if upstream.hashed else None
    buffering = server.route_plans[number].buffering
    try:
        cache.nursery.start_soon(  # type: ignore[union-attr]
            _refresh, cache, key, event, list(head.headers), upstream, params, hash_key, buffering)
    except RuntimeError:  # the front-end is stopping
        cache.end_fill(key, event)


async def _refresh(cache: RouteCache, key: bytes, event: trio.Event, request_headers: list[tuple[bytes, bytes]], upstream: typing.Any,
                   params: typing.Any, hash_key: bytes | None, buffering: typing.Any) -> None:
    try:
        result = await open_upstream_response(upstream, params, b"", method=b"GET", hash_key=hash_key, buffering=buffering)
        response = result.response
        failed = False
        pieces: list[bytes] = []
        size = 0
        try:
            with trio.fail_after(upstream.config.read_timeout or math.inf):
                async for chunk in response:
                    size += len(chunk)
                    if size > cache.config.max_entry_size:
                        return
                    pieces.append(chunk)
        except (FastCGIError, trio.TooSlowError) as exc:
            failed = True
            log.warning("cache: background update of %r failed: %s", key[:200], exc or type(exc).__name__)
            return
        finally:
            result.finish(failed)
        now = time.time()
        fresh_for = freshness(cache.config, response.status, response.raw_headers, now)
        if fresh_for is not None:
            headers = stored_headers(response_headers(response.raw_headers)[0])
            cache.store(key, request_headers, response.status, headers, b"".join(pieces), fresh_for, now)
    except UpstreamFailure as exc:
        log.warning("cache: background update of %r failed: %s", key[:200], exc)
    except Exception:
        log.exception("cache: background update of %r failed", key[:200])
    finally:
        cache.end_fill(key, event)
