"""Settings of one worker process, with units and reasons in the defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol import DEFAULT_MAX_BUFFER_SIZE, DEFAULT_MAX_PARAMS_SIZE, DEFAULT_MAX_REQUESTS
from ._status import PoolStatus, RequestHooks

SECONDS = 1.0
KiB = 1024


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker process serves FastCGI.

    Attributes:
        max_requests: requests in flight per connection (FCGI_MAX_REQS).
        max_conns: connections served at once (FCGI_MAX_CONNS); further ones
            wait in the listen backlog.
        threads: threads running sync (WSGI) app code at once. Sync code must
            not block the event loop; this bounds how much of it runs in parallel.
            0 runs WSGI apps on the event loop's thread, one request at a
            time, as a php-fpm child does: cheapest for apps that never block
            long; run more processes (pm children) for concurrency.
        inline_quick: with threads, run a WSGI app whose calls prove short
            and small on the event loop's thread (``_inline``); False: always
            in threads.
        backlog: the listen queue length (php-fpm's default).
        graceful_timeout: on SIGTERM/SIGINT, how long in-flight requests may
            run to completion before they are cancelled.
        max_params_size: PARAMS bytes per request.
        max_buffer_size: PARAMS bytes held per connection.
        input_buffer: request-body bytes buffered per request before the
            connection stops reading (FastCGI has no flow control of its own).
        output_buffer: response bytes queued per connection before the app
            waits for the peer to read (backpressure).
        root_path: SCRIPT_NAME of the app when the web server does not split
            the path itself (it sends no PATH_INFO).
        allowed_clients: None = everyone; else the peer addresses allowed
            (listen.allowed_clients); others are closed at once and logged.
        ping_path / ping_response: answered by the worker itself (ping.path).
        status_path: php-fpm's status page (pm.status_path), from ``status_source``.
        status_source: returns the pool's status; None = this process alone.
        request_terminate_timeout: 0 = none; else a request running longer ends.
        request_slowlog_timeout / slowlog: write the stack of slower requests
            (None: only the warning and the ``slow_request`` hook).
        request_slowlog_trace_depth: stack frames per slow log entry.
        access_log: a file for one line per request with its duration; None = off.
        pool_name: the pool's name in the slow log, warnings and this
            process's own status page.
        hooks: told of connections and requests (the pool's scoreboard).
        processes: processes serving the listen address (a pool's
            pm.max_children), advertised to web servers as
            FCGI_CLUSTER_PROCESSES so that they open a connection per process.
        session: session settings injected into the app (``fcgi_cluster.sessions``); None = off.
        session_check: connect to the session store at start, so that a store
            that is down or a wrong password stops the worker before it serves.
            Pool children use False: their master checked the store once, and a
            child started while the store is down answers 503 until it returns
            instead of failing and being restarted in a loop.
    """

    max_requests: int = DEFAULT_MAX_REQUESTS
    max_conns: int = 1024
    threads: int = 16
    inline_quick: bool = True
    backlog: int = 511
    graceful_timeout: float = 30 * SECONDS
    max_params_size: int = DEFAULT_MAX_PARAMS_SIZE
    max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE
    input_buffer: int = 256 * KiB
    output_buffer: int = 256 * KiB
    root_path: str = ""
    allowed_clients: tuple[str, ...] | None = None
    ping_path: str | None = None
    ping_response: str = "pong"
    status_path: str | None = None
    status_source: Callable[[], PoolStatus] | None = None
    request_terminate_timeout: float = 0.0
    request_slowlog_timeout: float = 0.0
    slowlog: str | None = None
    request_slowlog_trace_depth: int = 20
    access_log: str | None = None
    pool_name: str = "www"
    hooks: RequestHooks = field(default_factory=RequestHooks)
    processes: int | None = 1
    session: Any = None
    session_check: bool = True
