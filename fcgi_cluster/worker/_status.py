"""Pool status as php-fpm reports it, and the hooks a process manager uses to count requests.

``PoolStatus`` / ``ProcessStatus`` are filled by whoever knows the pool (the
master's scoreboard, or a lone worker about itself) and rendered by
``render_status`` in php-fpm's formats. ``RequestHooks`` is called by the worker
for every connection and request; the default does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStatus", "ProcessStatus", "RequestHooks", "RequestInfo"]


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One child's row of ``?full``."""

    pid: int
    state: str  # "Idle" or "Running"
    start_time: float  # epoch seconds
    requests: int  # requests served since the child started
    request_duration: float  # seconds, of the running (or last) request
    request_method: str
    request_uri: str
    content_length: int
    script: str
    last_request_cpu: float  # percent
    last_request_memory: int  # bytes


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """php-fpm's status fields for one pool."""

    pool: str
    process_manager: str  # static / dynamic / ondemand
    start_time: float  # epoch seconds
    accepted_conn: int
    listen_queue: int
    max_listen_queue: int
    listen_queue_len: int
    idle_processes: int
    active_processes: int
    total_processes: int
    max_active_processes: int
    max_children_reached: int
    slow_requests: int
    processes: tuple[ProcessStatus, ...] = ()


@dataclass(slots=True)
class RequestInfo:
    """What the worker knows of a request when it starts."""

    method: str
    uri: str
    content_length: int
    script: str
    start: float  # time.monotonic()


class RequestHooks:
    """Called by the worker (in its trio thread) as it serves; override what you need."""

    def connection_accepted(self) -> None:
        """A connection was accepted (and allowed)."""

    def request_started(self, info: RequestInfo) -> None:
        """A request's params are complete and it is about to run."""

    def request_finished(self, info: RequestInfo) -> None:
        """A request ended (answered, failed or aborted)."""

    def slow_request(self, info: RequestInfo) -> None:
        """A request ran past ``request_slowlog_timeout``."""
