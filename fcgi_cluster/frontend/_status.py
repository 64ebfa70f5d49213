"""The front-end's status: per upstream and server, and per process; as JSON and OpenMetrics.

``status(server)`` reads what already exists (the balancers' counters, the
servers' connections, the accept count) and puts it in one dict; nothing is
counted for it on the request path beyond the balancer's own integers.
``openmetrics(report)`` writes that dict in the OpenMetrics text format
Prometheus scrapes.
"""

from __future__ import annotations

import os
import time
import typing

from ._counters import LATENCY_BOUNDS
from .edge._cache import cache_report

__all__ = ["status", "openmetrics", "OPENMETRICS_TYPE"]

#: The Content-Type of ``openmetrics``'s text.
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def status(server: typing.Any, states: typing.Any) -> dict[str, object]:
    """One front-end process's status.

    Args:
        server: the ``FrontendServer``.
        states: its ``ServerStates`` (what control commands set).
    """
    site = server.site
    # A request keeps the site it began with: a drained server's requests in
    # flight are counted by the balancer of the site before the drain.
    active: dict[tuple[str, str], int] = {}
    for old in server.sites():
        for name, upstream in old.upstreams.items():
            for entry in upstream.balancer.snapshot():
                key = (name, entry["address"])
                active[key] = active.get(key, 0) + entry["active"]  # type: ignore[operator]
    upstreams = []
    for name, upstream in site.upstreams.items():
        servers = []
        for entry, conn in zip(upstream.balancer.snapshot(), upstream.servers):
            address = entry["address"]
            state = states.state_of(name, address)
            if state == "up" and (not entry["available"] or upstream.servers.index(conn) in upstream.unhealthy):
                state = "failing"
            servers.append({
                "address": address,
                "state": state,
                "since": states.since_of(name, address),
                "weight": entry["weight"],
                "backup": entry["backup"],
                "requests": entry["requests"],
                "failures": entry["total_fails"],
                "failures_by_kind": conn.counters.failures(),
                "retries": conn.counters.retries,
                "latency": {"bounds": list(LATENCY_BOUNDS), "counts": list(conn.counters.latency),
                            "sum": round(conn.counters.latency_sum, 6)},
                "in_flight": active.get((name, address), 0),
                "connections": conn.connection_count,
                "multiplexed": conn.multiplexed,
                "max_reqs": conn.max_reqs,
                "retry_in": round(float(entry["retry_in"]), 3),  # type: ignore[arg-type]
            })
        upstreams.append({"name": name, "balance": upstream.config.balance, "servers": servers})
    frontend = site.frontend
    process = {
        "pid": os.getpid(),
        "clients": frontend.max_connections - server.connections.value,
        "accepted": server.accepted,
        "requests": site.requests,
        "requests_in_flight": server.active_requests,
        # How old these figures are when read: 0 here, set by ``_status_share.gather`` for a sibling's.
        "age": 0.0,
        "stale": False,
    }
    # "processes": every front-end process's row (``_status_share.merge`` adds the others').
    caches = cache_report(site.routes, site.caches)
    return {"time": time.time(), "process": process, "processes": [process], "upstreams": upstreams, "caches": caches}


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics(report: dict[str, typing.Any]) -> str:
    """``status``'s report in the OpenMetrics text format (ends with ``# EOF``)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, object], object]]) -> None:
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"# HELP {name} {help_text}")
        for suffix, labels, value in samples:
            text = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
            lines.append(f"{name}{suffix}{{{text}}} {value}")

    processes = report["processes"]
    family("fcgi_cluster_clients", "gauge", "Client connections open.",
           [("", {"pid": p["pid"]}, p["clients"]) for p in processes])
    family("fcgi_cluster_accepted", "counter", "Client connections accepted.",
           [("_total", {"pid": p["pid"]}, p["accepted"]) for p in processes])
    family("fcgi_cluster_requests", "counter", "Requests begun.",
           [("_total", {"pid": p["pid"]}, p["requests"]) for p in processes])
    family("fcgi_cluster_status_age_seconds", "gauge", "Age of the process's figures (stale past a few publishes).",
           [("", {"pid": p["pid"]}, p["age"]) for p in processes])
    servers = [(up["name"], s) for up in report["upstreams"] for s in up["servers"]]

    def labels(up: str, entry: dict[str, object]) -> dict[str, object]:
        return {"upstream": up, "server": entry["address"]}

    family("fcgi_cluster_server_requests", "counter", "Requests sent to the server.",
           [("_total", labels(up, s), s["requests"]) for up, s in servers])
    family("fcgi_cluster_server_failures", "counter", "Failed attempts on the server.",
           [("_total", labels(up, s), s["failures"]) for up, s in servers])
    family("fcgi_cluster_server_failures_by_kind", "counter", "Failed attempts on the server, by kind.",
           [("_total", {**labels(up, s), "kind": kind}, count)
            for up, s in servers for kind, count in s["failures_by_kind"].items()])
    family("fcgi_cluster_server_retries", "counter", "Failed attempts tried again on another server.",
           [("_total", labels(up, s), s["retries"]) for up, s in servers])
    histogram: list[tuple[str, dict[str, object], object]] = []
    for up, s in servers:
        latency = s["latency"]
        total = 0
        for bound, count in zip([*latency["bounds"], "+Inf"], latency["counts"]):
            total += count
            histogram.append(("_bucket", {**labels(up, s), "le": bound if bound == "+Inf" else f"{bound:g}"}, total))
        histogram.append(("_count", labels(up, s), total))
        histogram.append(("_sum", labels(up, s), latency["sum"]))
    family("fcgi_cluster_server_latency_seconds", "histogram", "Time from a request's start to its answer's end.",
           histogram)
    family("fcgi_cluster_server_in_flight", "gauge", "Requests in flight on the server.",
           [("", labels(up, s), s["in_flight"]) for up, s in servers])
    family("fcgi_cluster_server_connections", "gauge", "Connections open to the server.",
           [("", labels(up, s), s["connections"]) for up, s in servers])
    family("fcgi_cluster_server_weight", "gauge", "The server's weight.",
           [("", labels(up, s), s["weight"]) for up, s in servers])
    family("fcgi_cluster_server_state", "stateset", "The server's state.",
           [("", {**labels(up, s), "fcgi_cluster_server_state": state}, int(s["state"] == state))
            for up, s in servers for state in ("up", "drain", "down", "failing")])
    caches = report.get("caches", [])
    family("fcgi_cluster_cache_answers", "counter", "Requests to a cached route, by X-Cache-Status.",
           [("_total", {"route": c["route"], "status": word}, n) for c in caches for word, n in c["answers"].items()])
    family("fcgi_cluster_cache_entries", "gauge", "Entries of a cached route held in memory.",
           [("", {"route": c["route"]}, c["entries"]) for c in caches])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
