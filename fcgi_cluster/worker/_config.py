"""Settings of one worker process, with units and reasons in the defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import DEFAULT_MAX_BUFFER_SIZE, DEFAULT_MAX_PARAMS_SIZE, DEFAULT_MAX_REQUESTS

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
    """

    max_requests: int = DEFAULT_MAX_REQUESTS
    max_conns: int = 1024
    threads: int = 16
    backlog: int = 511
    graceful_timeout: float = 30 * SECONDS
    max_params_size: int = DEFAULT_MAX_PARAMS_SIZE
    max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE
    input_buffer: int = 256 * KiB
    output_buffer: int = 256 * KiB
    root_path: str = ""
