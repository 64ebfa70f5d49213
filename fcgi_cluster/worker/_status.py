"""Pool status as php-fpm reports it, and the hooks a process manager uses to count requests.

``PoolStatus`` / ``ProcessStatus`` are filled by whoever knows the pool (the
master's scoreboard, or a lone worker about itself) and rendered by
``render_status`` in php-fpm's formats. ``RequestHooks`` is called by the worker
for every connection and request; the default does nothing.

The formats follow php-fpm 8.2's status page field for field (names, order,
units: ``request duration`` in microseconds, ``start time`` as local
``%d/%b/%Y:%H:%M:%S %z`` in text and html, epoch seconds in json and xml),
chosen by the query string as php-fpm does: ``html``, ``xml``, ``json``,
``openmetrics``, else text; ``full`` adds one block per process.

OpenMetrics: php-fpm's metric names with the prefix ``fcgi_cluster_`` instead
of ``phpfpm_`` (``fcgi_cluster_accepted_connections``, ...), each sample
labelled with ``pool``. Two corrections where php-fpm's output is not valid
OpenMetrics: counter samples carry the ``_total`` suffix the format requires,
and high-water marks (``max_listen_queue``, ``max_active_processes``) and
``start_since`` are gauges, not counters (a counter must only grow from a
reset, and these are not reset-aware totals). With ``full``, per-process
samples labelled ``pid`` follow (php-fpm has none).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

__all__ = ["PoolStatus", "ProcessStatus", "RequestHooks", "RequestInfo", "listen_queue", "render_status"]

#: The prefix of every OpenMetrics name (php-fpm's is ``phpfpm_``).
METRIC_PREFIX = "fcgi_cluster_"

TEXT = "text/plain;charset=UTF-8"
JSON = "application/json"
XML = "text/xml;charset=UTF-8"
HTML = "text/html"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One child's row of ``?full``."""

    pid: int
    state: str  # "Idle" or "Running"
    start_time: float  # epoch seconds
    requests: int  # requests served since the child started
    request_duration: float  # seconds, of the running (or last) request
    request_method: str
    request_uri: str  # as the web server sent it, query string included
    content_length: int
    script: str
    last_request_cpu: float  # percent
    last_request_memory: int  # bytes
    #: REMOTE_USER of the request, "" when none (php-fpm's "user").
    user: str = ""


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
    """What the worker knows of a request when it starts (and, once it ends, its status)."""

    method: str
    uri: str
    content_length: int
    script: str
    start: float  # time.monotonic()
    #: REMOTE_ADDR as the web server sent it.
    remote_addr: str = ""
    #: The HTTP status the app answered with; 0 until its headers passed.
    status: int = 0
    #: True once the request passed request_terminate_timeout.
    timed_out: bool = False
    #: True once ``RequestHooks.request_finished`` was called for it.
    finished: bool = False


class RequestHooks:
    """Called by the worker (in its trio thread) as it serves; override what you need.

    Every call happens on the worker's hot path: keep overrides to a few
    counter updates.
    """

    def connection_accepted(self) -> None:
        """A connection was accepted (and allowed)."""

    def requests_left(self) -> int | None:
        """How many more requests this process will start before it stops (None: no end).

        The worker accepts a connection only while fewer connections wait for
        their first request than this: a process about to stop never accepts
        one it would not serve.
        """
        return None

    def request_started(self, info: RequestInfo) -> None:
        """A request's params are complete and it is about to run."""

    def request_finished(self, info: RequestInfo) -> None:
        """A request ended (answered, failed, aborted or timed out); always follows ``request_started``."""

    def slow_request(self, info: RequestInfo) -> None:
        """A request ran past ``request_slowlog_timeout``."""

    def request_stuck(self, info: RequestInfo) -> None:
        """A request past ``request_terminate_timeout`` was answered, but its app code runs on.

        A WSGI app's thread cannot be interrupted: it keeps its thread until
        the app returns. A process manager should replace this process once
        its other requests are done (php-fpm kills the child).
        """


# --------------------------------------------------------------------------
# The listen queue, as php-fpm reads it (Linux TCP_INFO of the listening socket)
# --------------------------------------------------------------------------

# struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
# unacked, sacked. For a listening socket the kernel puts the accept queue's
# current length in tcpi_unacked and its limit in tcpi_sacked.
_TCP_INFO_QUEUE = struct.Struct("=24xII")


def listen_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting to be accepted, the queue's length) of a listening TCP socket.

    Returns (0, 0) where the kernel does not tell (unix sockets, non-Linux).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return (0, 0)
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return (0, 0)
    if len(raw) < _TCP_INFO_QUEUE.size:
        return (0, 0)
    unacked, sacked = _TCP_INFO_QUEUE.unpack_from(raw)
    return (unacked, sacked)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _local_time(epoch: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(epoch))


def _pool_fields(status: PoolStatus, now: float, *, local: bool) -> list[tuple[str, object]]:
    return [
        ("pool", status.pool),
        ("process manager", status.process_manager),
        ("start time", _local_time(status.start_time) if local else int(status.start_time)),
        ("start since", max(0, int(now - status.start_time))),
        ("accepted conn", status.accepted_conn),
        ("listen queue", status.listen_queue),
        ("max listen queue", status.max_listen_queue),
        ("listen queue len", status.listen_queue_len),
        ("idle processes", status.idle_processes),
        ("active processes", status.active_processes),
        ("total processes", status.total_processes),
        ("max active processes", status.max_active_processes),
        ("max children reached", status.max_children_reached),
        ("slow requests", status.slow_requests),
    ]


def _process_fields(proc: ProcessStatus, now: float, *, local: bool) -> list[tuple[str, object]]:
    return [
        ("pid", proc.pid),
        ("state", proc.state),
        ("start time", _local_time(proc.start_time) if local else int(proc.start_time)),
        ("start since", max(0, int(now - proc.start_time))),
        ("requests", proc.requests),
        ("request duration", int(proc.request_duration * 1_000_000)),  # microseconds, as php-fpm
        ("request method", proc.request_method or "-"),
        ("request uri", proc.request_uri or "-"),
        ("content length", proc.content_length),
        ("user", proc.user or "-"),
        ("script", proc.script or "-"),
        ("last request cpu", round(proc.last_request_cpu, 2)),
        ("last request memory", proc.last_request_memory),
    ]


def _text(status: PoolStatus, now: float, full: bool) -> str:
    # php-fpm pads every "name:" to 22 columns.
    lines = [f"{name + ':':<22}{value}" for name, value in _pool_fields(status, now, local=True)]
    out = "\n".join(lines) + "\n"
    if full:
        for proc in status.processes:
            out += "\n************************\n"
            for name, value in _process_fields(proc, now, local=True):
                if name == "request uri":
                    name = "request URI"
                elif name == "last request cpu":
                    value = f"{value:.2f}"
                out += f"{name + ':':<22}{value}\n"
    return out


def _json(status: PoolStatus, now: float, full: bool) -> str:
    doc: dict[str, object] = dict(_pool_fields(status, now, local=False))
    if full:
        doc["processes"] = [dict(_process_fields(p, now, local=False)) for p in status.processes]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _xml(status: PoolStatus, now: float, full: bool) -> str:
    def tag(name: str) -> str:
        return name.replace(" ", "-")

    out = ['<?xml version="1.0" ?>\n<status>\n']
    out += [f"<{tag(n)}>{escape(str(v))}</{tag(n)}>\n" for n, v in _pool_fields(status, now, local=False)]
    if full:
        out.append("<processes>\n")
        for proc in status.processes:
            fields = _process_fields(proc, now, local=False)
            out.append("<process>" + "".join(f"<{tag(n)}>{escape(str(_cpu(n, v)))}</{tag(n)}>" for n, v in fields) + "</process>\n")
        out.append("</processes>\n")
    out.append("</status>")
    return "".join(out)


def _cpu(name: str, value: object) -> object:
    return f"{value:.2f}" if name == "last request cpu" else value


def _html(status: PoolStatus, now: float, full: bool) -> str:
    out = [
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        "<head><title>fcgi-cluster status page</title></head>\n<body>\n<table>\n"
    ]
    out += [f"<tr><th>{n}</th><td>{escape(str(v))}</td></tr>\n" for n, v in _pool_fields(status, now, local=True)]
    out.append("</table>\n")
    if full:
        names = [n for n, _ in _process_fields(ProcessStatus(0, "", 0, 0, 0, "", "", 0, "", 0, 0), now, local=True)]
        out.append('<table border="1">\n<tr>' + "".join(f"<th>{n}</th>" for n in names) + "</tr>\n")
        for proc in status.processes:
            cells = "".join(f"<td>{escape(str(_cpu(n, v)))}</td>" for n, v in _process_fields(proc, now, local=True))
            out.append(f"<tr>{cells}</tr>\n")
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out)


# (php-fpm's name without "phpfpm_", type, help, field)
_METRICS = (
    ("start_since", "gauge", "The number of seconds since the pool has started.", "start since"),
    ("accepted_connections", "counter", "The number of requests accepted by the pool.", "accepted conn"),
    ("listen_queue", "gauge", "The number of requests in the queue of pending connections.", "listen queue"),
    ("max_listen_queue", "gauge", "The maximum number of requests in the queue of pending connections since the pool has started.", "max listen queue"),
    ("listen_queue_length", "gauge", "The size of the socket queue of pending connections.", "listen queue len"),
    ("idle_processes", "gauge", "The number of idle processes.", "idle processes"),
    ("active_processes", "gauge", "The number of active processes.", "active processes"),
    ("total_processes", "gauge", "The number of idle + active processes.", "total processes"),
    ("max_active_processes", "gauge", "The maximum number of active processes since the pool has started.", "max active processes"),
    ("max_children_reached", "counter", "The number of times the process limit has been reached, when pm tries to start more children (works only for pm 'dynamic' and 'ondemand').", "max children reached"),
    ("slow_requests", "counter", "The number of requests that exceeded your 'request_slowlog_timeout' value.", "slow requests"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _openmetrics(status: PoolStatus, now: float, full: bool) -> str:
    pool = f'pool="{_label(status.pool)}"'
    fields = dict(_pool_fields(status, now, local=False))
    out = [
        f"# TYPE {METRIC_PREFIX}up gauge\n",
        f"# HELP {METRIC_PREFIX}up Could pool {_label(status.pool)} using a {status.process_manager} PM be reached?\n",
        f"{METRIC_PREFIX}up{{{pool}}} 1\n",
    ]
    for name, kind, help_text, field_name in _METRICS:
        sample = f"{METRIC_PREFIX}{name}_total" if kind == "counter" else f"{METRIC_PREFIX}{name}"
        out.append(f"# TYPE {METRIC_PREFIX}{name} {kind}\n# HELP {METRIC_PREFIX}{name} {help_text}\n")
        out.append(f"{sample}{{{pool}}} {fields[field_name]}\n")
    if full and status.processes:
        per_process = (
            ("process_requests", "counter", "The number of requests the process has served.", lambda p: p.requests),
            ("process_active", "gauge", "1 while the process is serving a request, else 0.", lambda p: int(p.state != "Idle")),
            ("process_request_duration_seconds", "gauge", "The duration of the running (or last) request.",
             lambda p: f"{p.request_duration:.6f}"),
            ("process_last_request_memory_bytes", "gauge", "The memory of the process after its last request.",
             lambda p: p.last_request_memory),
        )
        for name, kind, help_text, get in per_process:
            sample = f"{METRIC_PREFIX}{name}_total" if kind == "counter" else f"{METRIC_PREFIX}{name}"
            out.append(f"# TYPE {METRIC_PREFIX}{name} {kind}\n# HELP {METRIC_PREFIX}{name} {help_text}\n")
            for proc in status.processes:
                out.append(f'{sample}{{{pool},pid="{proc.pid}"}} {get(proc)}\n')
    out.append("# EOF\n")
    return "".join(out)


# query name -> (content type, renderer), in php-fpm's order of precedence
_FORMATS = (
    ("html", HTML, _html),
    ("xml", XML, _xml),
    ("json", JSON, _json),
    ("openmetrics", OPENMETRICS, _openmetrics),
)


def render_status(status: PoolStatus, query: str, now: float) -> tuple[str, bytes]:
    """The status page for ``status`` in the format the query string asks for.

    Args:
        status: the pool's figures.
        query: the request's QUERY_STRING: ``json``, ``xml``, ``html`` or
            ``openmetrics`` pick the format (text otherwise), ``full`` adds
            the per-process rows; other names are ignored, as php-fpm does.
        now: the current time (epoch seconds), for the "start since" fields.

    Returns:
        (content type, body).
    """
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    full = "full" in names
    for name, content_type, render in _FORMATS:
        if name in names:
            return content_type, render(status, now, full).encode("utf-8")
    return TEXT, _text(status, now, full).encode("utf-8")
