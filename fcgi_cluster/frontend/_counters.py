"""What the status page counts per worker server beyond the balancer: failures by kind, retries, latency.

One ``ServerCounters`` per ``Server`` (so it lives as long as the server's
connections, over reloads and control commands). Counting is integer
increments on it and, for latency, one ``bisect`` into ``LATENCY_BOUNDS``:
no allocation, no lock, on the request path.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["FAILURE_KINDS", "LATENCY_BOUNDS", "ServerCounters"]

#: Upper bounds (seconds) of the latency histogram's buckets, a last one
#: for anything slower: Prometheus' default buckets, which span a fast
#: worker on the same host (5 ms) to a slow report (10 s).
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The kinds of failed attempts, as the proxy tells them apart.
FAILURE_KINDS = ("connect", "timeout", "refused", "busy", "protocol", "aborted")


class ServerCounters:
    """A server's failures by kind, retries, and the latency of its answers."""

    __slots__ = ("connect", "timeout", "refused", "busy", "protocol", "aborted", "retries", "latency", "latency_sum")

    def __init__(self) -> None:
        self.connect = self.timeout = self.refused = self.busy = self.protocol = self.aborted = 0
        #: Attempts here that failed and were tried again on another server.
        self.retries = 0
        #: Answers per bucket: latency[i] counts those up to LATENCY_BOUNDS[i] (the last, above all).
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        """One answer that took ``seconds`` from its request's start to its end."""
        self.latency[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds

    def failures(self) -> dict[str, int]:
        """Failures by kind."""
        return {kind: getattr(self, kind) for kind in FAILURE_KINDS}
