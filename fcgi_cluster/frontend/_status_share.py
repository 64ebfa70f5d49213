"""The status of every front-end process, for the one that serves the control listener.

With ``processes = N`` each child counts its own requests. Every child but
the one serving the control listener writes its ``status`` report to a file
beside the server-state file every ``PUBLISH_SECONDS``; that one reads them
(``gather``) and ``merge`` sums them with its own: per server the counters,
in-flight requests and connections add up, and every process has its row.

Each row says how old its figures are: ``age`` (seconds since the report was
written; 0 for the process answering) and ``stale``, true past
``STALE_SECONDS`` (three missed publishes: a child stuck, or stopped), so an
operator sees the entries not to trust. A stale report still counts (its
counters are the last known; dropping them would make totals go back); one
older than ``GONE_SECONDS`` is a dead child's leftover: skipped.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
import typing

import trio

from .edge._cache import merge_cache_reports

__all__ = ["StatusShare", "merge", "GONE_SECONDS", "PUBLISH_SECONDS", "STALE_SECONDS"]

log = logging.getLogger("fcgi_cluster.frontend")

#: Seconds between two reports of a child: the dashboard refreshes every 2 s.
PUBLISH_SECONDS = 1.0
#: A report older than this is marked stale: three publishes missed.
STALE_SECONDS = 3 * PUBLISH_SECONDS
#: A report older than this is a dead child's: left out.
GONE_SECONDS = 60.0

_SUMMED = ("requests", "failures", "retries", "in_flight", "connections")


class StatusShare:
    """Where the processes' reports go: files named ``PREFIX.status.PID``.

    Args:
        prefix: the server-state file's path.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _path(self, pid: int) -> str:
        return f"{self.prefix}.status.{pid}"

    async def publish(self, report: typing.Callable[[], dict[str, object]]) -> None:
        """Write ``report()`` every ``PUBLISH_SECONDS`` until cancelled; the file is removed then."""
        path = self._path(os.getpid())
        try:
            while True:
                temporary = f"{path}.tmp"
                try:
                    with open(temporary, "w", encoding="utf-8") as file:
                        json.dump(report(), file)
                    os.replace(temporary, path)
                except OSError as exc:
                    log.warning("cannot write the status report %s: %s", path, exc)
                await trio.sleep(PUBLISH_SECONDS)
        finally:
            self.remove(os.getpid())

    def remove(self, pid: int) -> None:
        """Remove a process's report (it ended)."""
        try:
            os.unlink(self._path(pid))
        except OSError:
            pass

    def gather(self) -> list[dict[str, typing.Any]]:
        """The other processes' reports, each process row with its ``age`` and ``stale``."""
        reports = []
        now = time.time()
        for path in glob.glob(glob.escape(self.prefix) + ".status.*"):
            if path.endswith(".tmp") or path == self._path(os.getpid()):
                continue
            try:
                age = max(0.0, now - os.path.getmtime(path))
                if age > GONE_SECONDS:
                    continue
                with open(path, encoding="utf-8") as file:
                    report = json.load(file)
                report["process"].update(age=round(age, 1), stale=age > STALE_SECONDS)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # gone meanwhile, or half of one
            reports.append(report)
        return reports


def merge(own: dict[str, typing.Any], others: list[dict[str, typing.Any]]) -> dict[str, typing.Any]:
    """``own`` report with the ``others`` added: servers' counters summed, a row per process.

    Server states are ``own``'s: every process applies the same commands.
    """
    merged = json.loads(json.dumps(own))
    merged["processes"] = [merged["process"], *(other["process"] for other in others)]
    servers = {(up["name"], s["address"]): s for up in merged["upstreams"] for s in up["servers"]}
    for other in others:
        for up in other["upstreams"]:
            for entry in up["servers"]:
                mine = servers.get((up["name"], entry["address"]))
                if mine is None:
                    continue  # between a command and its SIGUSR2: a server only that one has
                for key in _SUMMED:
                    mine[key] += entry[key]
                for kind, count in entry["failures_by_kind"].items():
                    mine["failures_by_kind"][kind] += count
                latency = mine["latency"]
                latency["counts"] = [a + b for a, b in zip(latency["counts"], entry["latency"]["counts"])]
                latency["sum"] += entry["latency"]["sum"]
    merged["caches"] = merge_cache_reports(merged.get("caches", []), [other.get("caches", []) for other in others])
    return merged
