"""php-fpm's per-request pool features inside one worker process.

``PoolFeatures`` is built from a ``WorkerConfig`` and does, for the server:

* ``listen.allowed_clients``: ``allows(host)`` is asked for each TCP peer before
  a byte of it is read; the server closes the others (unix peers always pass).
* ``ping.path`` / ``pm.status_path``: matched against the request's path, as
  php-fpm matches its script name: SCRIPT_NAME (nginx's stock ``fastcgi_params``
  send the whole path there), plus PATH_INFO when the web server split the path
  (our front-end, ``fastcgi_split_path_info``), or the REQUEST_URI path when
  both are empty; answered here: the app never sees them.
* the request hooks (the master's scoreboard), the access log, the slow log and
  ``request_terminate_timeout``, around every request the app serves.

``wrap(handler)`` returns the handler unchanged when none of that is asked for,
so a plain worker pays nothing. Otherwise the cost per request is one
``RequestInfo``, one dict entry and the hook calls: timeouts are not one cancel
scope per request but one ``watch()`` task that looks over the requests in
flight a few times per shortest timeout, as php-fpm's master does with its
heartbeat.

Timeouts, and why they end as they do: php-fpm kills a child past
``request_terminate_timeout`` and nginx then answers 502. Here the request's
cancel scope is cancelled: a client that got nothing yet gets a clean
``504 Gateway Timeout`` (what nginx says of an upstream too slow for it); a
client that got part of the answer gets it cut short (END_REQUEST with app
status 1). An ASGI app stops at its next await. A WSGI app's thread cannot be
stopped from outside: it stops at its next write or body read; if it is still
in the app ``STUCK_GRACE`` seconds later, ``hooks.request_stuck(info)`` tells
the process manager to replace this process once its other requests are done,
and the thread keeps its slot in the pool until the app returns.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import resource
import socket
import time
from typing import Awaitable, Callable

import trio

from ._config import WorkerConfig
from ._connection import RequestContext
from ._request_logs import AccessLog, SlowLog, task_frames, thread_frames
from ._status import PoolStatus, ProcessStatus, RequestHooks, RequestInfo, listen_queue, render_status

__all__ = ["PoolFeatures", "STUCK_GRACE"]

log = logging.getLogger("fcgi_cluster.worker")

#: Seconds a WSGI thread has, after its request timed out, to reach a point
#: where it stops (a write, a body read) before it counts as stuck.
STUCK_GRACE = 1.0

# How often watch() looks at the requests in flight: a tenth of the shortest
# timeout (so a 5 s slowlog fires within 5.5 s), at most once a second, and not
# more than 20 times a second whatever the timeout.
_MIN_INTERVAL, _MAX_INTERVAL = 0.05, 1.0

# php-fpm's headers for its own pages.
_NO_CACHE = b"Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n"
_TIMEOUT_504 = (
    b"Status: 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 16\r\n\r\nGateway Timeout\n"
)

Handler = Callable[[RequestContext], Awaitable[None]]


def _text(params: dict[bytes, bytes], key: bytes) -> str:
    value = params.get(key)
    return value.decode("latin-1") if value else ""


class _AllowList:
    """listen.allowed_clients, as addresses and networks (IPv4-mapped IPv6 taken as IPv4)."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.exact: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                self.exact.add(str(_plain(ipaddress.ip_address(entry))))

    def allows(self, host: str) -> bool:
        if host in self.exact:  # the common case, without parsing
            return True
        try:
            address = _plain(ipaddress.ip_address(host.partition("%")[0]))
        except ValueError:
            return False
        return str(address) in self.exact or any(address in net for net in self.networks)


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class PoolFeatures:
    """The pool features of one worker process (see the module docstring).

    Args:
        config: what is on (allowed_clients, ping/status paths, timeouts, logs, hooks).
        listener: the listening socket, for the listen queue of this
            process's own status page.

    Raises:
        OSError: the access log or slow log cannot be opened.
    """

    def __init__(self, config: WorkerConfig, listener: socket.socket | None = None) -> None:
        self.config = config
        self.hooks: RequestHooks = config.hooks
        self._listener = listener
        self._allow = _AllowList(config.allowed_clients) if config.allowed_clients is not None else None
        self._pages: dict[bytes, Callable[[RequestContext], None]] = {}
        if config.ping_path:
            self._pages[config.ping_path.encode("latin-1")] = self._ping
        if config.status_path:
            self._pages[config.status_path.encode("latin-1")] = self._status
        self._ping_body = config.ping_response.encode("utf-8")
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        try:
            self.slowlog = SlowLog(config.slowlog) if config.slowlog else None
        except BaseException:
            self.close()
            raise
        self._slow_after = config.request_slowlog_timeout
        self._terminate_after = config.request_terminate_timeout
        timeouts = [t for t in (self._slow_after, self._terminate_after) if t > 0]
        self.interval = min(_MAX_INTERVAL, max(_MIN_INTERVAL, min(timeouts) / 10)) if timeouts else _MAX_INTERVAL
        self._custom_hooks = type(self.hooks) is not RequestHooks
        self.enabled = bool(self._custom_hooks or self._pages or timeouts or self.access_log)
        #: watch() must run (in the server's nursery) for timeouts and the listen queue figures.
        self.needs_watch = bool(timeouts or config.status_path)
        # In flight: the request's context -> its info (and whether it was logged as slow).
        self._running: dict[RequestContext, RequestInfo] = {}
        self._slow_logged: set[RequestContext] = set()
        self._timed_out: list[tuple[RequestInfo, RequestContext, float]] = []
        # This process's own figures, for its status page without a master.
        self._start_time = time.time()
        self._accepted = 0
        self._served = 0
        self._slow = 0
        self._max_queue = 0
        self._last: RequestInfo | None = None
        self._last_duration = 0.0

    # --- connections ---------------------------------------------------------

    def allows(self, host: str) -> bool:
        """Whether a TCP peer at ``host`` may connect (always, without allowed_clients)."""
        return self._allow is None or self._allow.allows(host)

    def connection_accepted(self) -> None:
        """Count an allowed connection (the hook's ``connection_accepted``)."""
        if self._custom_hooks:
            self.hooks.connection_accepted()

    # --- requests ------------------------------------------------------------

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` with the features around each request (itself when none is on).

        The result keeps the handler's fast path: when ``handler`` can start a
        request without a task (``start_nowait``), so can the result, and the
        features are paid for in the request's callbacks.
        """
        if not self.enabled:
            return handler
        return _Featured(self, handler)

    def _info(self, ctx: RequestContext) -> RequestInfo:
        params = ctx.params
        length = params.get(b"CONTENT_LENGTH")
        return RequestInfo(
            _text(params, b"REQUEST_METHOD"),
            _text(params, b"REQUEST_URI"),
            int(length) if length and length.isdigit() else 0,
            _text(params, b"SCRIPT_FILENAME") or _text(params, b"SCRIPT_NAME"),
            time.monotonic(),
            _text(params, b"REMOTE_ADDR"),
        )

    def _page(self, ctx: RequestContext) -> Callable[[RequestContext], None] | None:
        """The ping or status page the request asks for, or None (the app's)."""
        if not self._pages:
            return None
        # The request's path: SCRIPT_NAME (stock fastcgi_params, cgi-fcgi),
        # plus PATH_INFO when the web server split it off (our front-end,
        # fastcgi_split_path_info), else the REQUEST_URI path.
        params = ctx.params
        path = params.get(b"SCRIPT_NAME", b"")
        path_info = params.get(b"PATH_INFO")
        if path_info:
            path += path_info
        elif not path:
            path = params.get(b"REQUEST_URI", b"").partition(b"?")[0]
        return self._pages.get(path)

    def _begin(self, ctx: RequestContext, info: RequestInfo, app: bool) -> None:
        """The request runs from now on: ``_end`` is owed, whatever happens."""
        self.hooks.request_started(info)
        # Counted over as its END_REQUEST goes (a status page asked right
        # after the answer counts it), or at _end for one that never ends.
        ctx.before_end = functools.partial(self._finished, ctx, info)
        self._running[ctx] = info
        self._accepted += 1
        if app:
            self._last = info

    def _end(self, ctx: RequestContext, info: RequestInfo, app: bool) -> None:
        """The request's handler is over: a timed-out one answered, then the logs and hooks."""
        del self._running[ctx]
        if ctx in self._slow_logged:
            self._slow_logged.discard(ctx)
        if info.timed_out and not ctx.ended:
            # Cancelled by watch(): answer cleanly if nothing was sent yet.
            if ctx.status:
                ctx.end(1)
            else:
                ctx.send_nowait(_TIMEOUT_504)
                ctx.end(0)
        if not info.finished:
            self._finished(ctx, info)
        duration = time.monotonic() - info.start
        if app:
            self._served += 1
            self._last_duration = duration
        if self.access_log is not None:
            self.access_log.write(info.remote_addr, _text(ctx.params, b"REMOTE_USER"), info.method, info.uri,
                                  info.status, time.time() - duration, duration)

    def _finished(self, ctx: RequestContext, info: RequestInfo) -> None:
        """The hooks' ``request_finished``, once per request."""
        ctx.before_end = None
        info.status = ctx.status
        info.finished = True
        self.hooks.request_finished(info)

    # --- ping and status pages ------------------------------------------------

    def _ping(self, ctx: RequestContext) -> None:
        head = b"Status: 200 OK\r\nContent-Type: text/plain;charset=UTF-8\r\n" + _NO_CACHE + b"\r\n"
        ctx.send_nowait(head if ctx.params.get(b"REQUEST_METHOD") == b"HEAD" else head + self._ping_body)
        ctx.end(0)

    def _status(self, ctx: RequestContext) -> None:
        source = self.config.status_source
        try:
            status = source() if source is not None else self.own_status()
        except Exception:
            # The master's scoreboard could not be read: php-fpm answers 500 too.
            log.exception("status page: the pool's status is unavailable")
            ctx.send_nowait(b"Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n" + _NO_CACHE
                            + b"\r\nInternal error. Please review log file for errors.")
            ctx.end(0)
            return
        content_type, body = render_status(status, _text(ctx.params, b"QUERY_STRING"), time.time())
        head = b"Status: 200 OK\r\nContent-Type: %s\r\n%s\r\n" % (content_type.encode(), _NO_CACHE)
        ctx.send_nowait(head if ctx.params.get(b"REQUEST_METHOD") == b"HEAD" else head + body)
        ctx.end(0)

    def own_status(self) -> PoolStatus:
        """This process's figures as a one-process pool (when no master provides the pool's)."""
        queue, queue_len = listen_queue(self._listener) if self._listener is not None else (0, 0)
        self._max_queue = max(self._max_queue, queue)
        busy = len(self._running) > 0
        last = self._last
        running = last is not None and any(info is last for info in self._running.values())
        process = ProcessStatus(
            pid=os.getpid(),
            state="Running" if busy else "Idle",
            start_time=self._start_time,
            requests=self._served,
            request_duration=(time.monotonic() - last.start if running else self._last_duration) if last else 0.0,
            request_method=last.method if last else "",
            request_uri=last.uri if last else "",
            content_length=last.content_length if last else 0,
            script=last.script if last else "",
            last_request_cpu=0.0,
            last_request_memory=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
        return PoolStatus(
            pool=self.config.pool_name,
            process_manager="static",
            start_time=self._start_time,
            accepted_conn=self._accepted,
            listen_queue=queue,
            max_listen_queue=self._max_queue,
            listen_queue_len=queue_len,
            idle_processes=0 if busy else 1,
            active_processes=1 if busy else 0,
            total_processes=1,
            max_active_processes=1 if self._accepted else 0,
            max_children_reached=0,
            slow_requests=self._slow,
            processes=(process,),
        )

    # --- timeouts --------------------------------------------------------------

    async def watch(self) -> None:
        """Log slow requests, end those past their terminate timeout; runs until cancelled."""
        while True:
            await trio.sleep(self.interval)
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """One look over the requests in flight (``watch`` calls it every ``interval``)."""
        if self._listener is not None and self.config.status_path:
            self._max_queue = max(self._max_queue, listen_queue(self._listener)[0])
        slow_after, terminate_after = self._slow_after, self._terminate_after
        for ctx, info in list(self._running.items()):
            age = now - info.start
            if slow_after > 0 and age >= slow_after and ctx not in self._slow_logged:
                self._slow_logged.add(ctx)
                self._log_slow(ctx, info, age)
            if terminate_after > 0 and age >= terminate_after and not info.timed_out:
                info.timed_out = True
                log.warning('[pool %s] pid %d, script %r (request: "%s %s") execution timed out (%.6f sec), ending it',
                            self.config.pool_name, os.getpid(), info.script, info.method, info.uri, age)
                ctx.cancel()
                self._timed_out.append((info, ctx, now))
        if self._timed_out:
            self._check_stuck(now)

    def _log_slow(self, ctx: RequestContext, info: RequestInfo, age: float) -> None:
        self._slow += 1
        log.warning('[pool %s] pid %d, script %r (request: "%s %s") executing too slow (%.6f sec), logging',
                    self.config.pool_name, os.getpid(), info.script, info.method, info.uri, age)
        if self.slowlog is not None:
            thread = ctx.app_thread
            if thread is not None:
                frames = thread_frames(thread)
            elif ctx.task is not None:
                frames = task_frames(ctx.task.coro)
            else:
                frames = []
            self.slowlog.write(self.config.pool_name, info.script, info.method, info.uri, frames,
                               self.config.request_slowlog_trace_depth)
        self.hooks.slow_request(info)

    def _check_stuck(self, now: float) -> None:
        waiting = []
        for info, ctx, since in self._timed_out:
            if ctx.app_thread is None:
                continue  # the app's code returned (or never ran in a thread)
            if now - since < STUCK_GRACE:
                waiting.append((info, ctx, since))
                continue
            log.warning('[pool %s] pid %d: request "%s %s" timed out but its app code is still running; '
                        "its thread stays busy until the app returns", self.config.pool_name, os.getpid(),
                        info.method, info.uri)
            self.hooks.request_stuck(info)
        self._timed_out = waiting

    # --- files -------------------------------------------------------------------

    def reopen(self) -> None:
        """Reopen the access and slow logs (after log rotation)."""
        for f in (self.access_log, self.slowlog):
            if f is not None:
                f.reopen()

    def close(self) -> None:
        """Close the log files."""
        for f in (getattr(self, "access_log", None), getattr(self, "slowlog", None)):
            if f is not None:
                f.close()


class _Featured:
    """A handler with the pool features around each request (``PoolFeatures.wrap``)."""

    __slots__ = ("_features", "_handler", "_inner_nowait", "needs_cancel_scope", "start_nowait")

    def __init__(self, features: PoolFeatures, handler: Handler) -> None:
        self._features = features
        self._handler = handler
        self.needs_cancel_scope = getattr(handler, "needs_cancel_scope", True)
        self._inner_nowait = getattr(handler, "start_nowait", None)
        if self._inner_nowait is not None:
            # Only then: the connection asks for the attribute to choose its path.
            self.start_nowait = self._start_nowait

    async def __call__(self, ctx: RequestContext) -> None:
        features = self._features
        info = features._info(ctx)
        page = features._page(ctx)
        features._begin(ctx, info, page is None)
        try:
            if page is not None:
                page(ctx)
            else:
                if features.slowlog is not None:
                    ctx.task = trio.lowlevel.current_task()
                await self._handler(ctx)
        finally:
            features._end(ctx, info, page is None)

    def _start_nowait(self, ctx: RequestContext, done: Callable[[], None], spawn: Callable[..., object]) -> bool:
        """The handler's ``start_nowait`` with the features around it; False as it says, or for a page."""
        features = self._features
        if features._pages and features._page(ctx) is not None:
            return False  # ping and status pages take the task path (__call__)
        info = features._info(ctx)
        begun = ended = False

        def over() -> None:
            nonlocal ended
            ended = True
            # On the loop, outside any task: nothing may be raised here.
            try:
                if not begun:  # ended before start_nowait returned (an app run inline)
                    features._begin(ctx, info, True)
                features._end(ctx, info, True)
            except Exception:
                log.exception("request %d: the pool features failed as it ended", ctx.request_id)
            done()

        if not self._inner_nowait(ctx, over, spawn):
            return False
        if ended:
            return True  # over() has counted it from start to end
        # The app's thread has started, but its outcome reaches this loop only
        # after we return: the request counts as started before it can end.
        begun = True
        features._begin(ctx, info, True)
        return True

