"""Request-rate and concurrency limits per client key (nginx's limit_req and limit_conn), sans-IO.

``RequestRate`` is nginx's leaky bucket (``ngx_http_limit_req_lookup``), one
per key: each request adds one to the key's *excess*, which drains at ``rate``
requests per second, never below 0. A request that would take the excess past
``burst`` is refused and not counted. One that is let through waits
``(excess - delay) / rate`` seconds when its excess is over ``delay`` (nginx:
``delay`` 0 by default, so every request past the rate waits its turn;
``nodelay`` makes ``delay`` the whole burst). So with rate 10r/s and burst 5,
ten requests at once see one served now, five served 0.1 s apart (or at once
with nodelay), and four refused.

Memory is bounded: a zone remembers ``max_keys`` keys, the least recently
seen forgotten first (a forgotten key starts again with an empty bucket, which
is what its bucket would have drained to unless it was seen within
``burst / rate`` seconds). State is per front-end process: with
``processes = N`` a client spread over N processes may get up to N times the
rate.

``Concurrency`` counts one key's requests in progress (``limit_conn``); its
keys exist only while they have one, so it is bounded by the connections.

``LogThrottle`` keeps a flood of refusals from flooding the error log: one
line per interval, saying how many were not logged.

The key of a request (``request_key``) is nginx's variable: ``$remote_addr``,
``$http_NAME`` (a header; "_" in NAME matches "-"), ``$cookie_NAME``. A
request whose key is empty is not limited, as nginx; a key over ``MAX_KEY``
bytes is kept as its digest, so memory stays bounded whatever clients send.
"""

from __future__ import annotations

import collections
import hashlib
import math

__all__ = ["Concurrency", "LogThrottle", "RequestRate", "request_key"]


class RequestRate:
    """The buckets of one ``[limit_req_zone.NAME]``: excess per key, drained at ``rate``.

    nginx's arithmetic, in its units: the rate in thousandths of a request
    per second (``"60r/m"`` is 1000, ``"1r/m"`` 16), the excess in thousandths
    of a request, time in whole milliseconds, integer division; so a zone
    here refuses and delays exactly the requests nginx's would.

    Args:
        rate: requests per second per key.
        max_keys: keys remembered; past it the least recently seen goes.
    """

    __slots__ = ("rate", "max_keys", "_buckets")

    def __init__(self, rate: float, max_keys: int) -> None:
        #: Thousandths of a request per second (at least 1).
        self.rate = max(1, int(rate * 1000))
        self.max_keys = max_keys
        #: key -> [excess in thousandths of a request, milliseconds of the last update]; oldest first.
        self._buckets: collections.OrderedDict[bytes, list[int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes, now: float, burst: int, delay: float = 0) -> float | None:
        """Account one request of ``key`` at ``now`` (seconds, monotonic).

        Args:
            burst: excess allowed past the rate, in requests.
            delay: excess served without waiting, in requests (``math.inf``: nodelay).

        Returns:
            None when refused (not counted), else the seconds the request
            should wait before it is served (0.0: at once).
        """
        now_ms = int(now * 1000)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = [0, now_ms]
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
            return 0.0
        buckets.move_to_end(key)
        elapsed = now_ms - bucket[1]
        # As nginx: a clock read before the last update (another task's)
        # drains nothing; one far before it (a clock jump) counts as 1 ms.
        if elapsed < -60000:
            elapsed = 1
        elif elapsed < 0:
            elapsed = 0
        excess = max(0, bucket[0] - self.rate * elapsed // 1000 + 1000)
        if excess > burst * 1000:
            return None
        bucket[0] = excess
        if elapsed:
            bucket[1] = now_ms
        if excess <= delay * 1000:
            return 0.0
        return (excess - int(delay * 1000)) * 1000 // self.rate / 1000


class Concurrency:
    """The counts of one ``[limit_conn_zone.NAME]``: requests in progress per key."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def enter(self, key: bytes, most: int) -> bool:
        """One more request of ``key``; False (not counted) when it has ``most`` already."""
        count = self._counts.get(key, 0)
        if count >= most:
            return False
        self._counts[key] = count + 1
        return True

    def leave(self, key: bytes) -> None:
        """A request of ``key`` that ``enter`` counted has ended."""
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]


class LogThrottle:
    """At most one log line per ``interval`` seconds.

    Args:
        interval: seconds between two lines.
    """

    __slots__ = ("interval", "_next", "_skipped")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = -math.inf
        self._skipped = 0

    def allow(self, now: float) -> int | None:
        """None when this line must not be written; else how many were not since the last."""
        if now < self._next:
            self._skipped += 1
            return None
        self._next = now + self.interval
        skipped, self._skipped = self._skipped, 0
        return skipped


def _cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key.lower() == b"cookie":
            for pair in value.split(b";"):
                found, sep, content = pair.strip().partition(b"=")
                if sep and found == name:
                    return content
    return b""


#: Keys longer than this are kept as a digest, so that a client sending a
#: 30 KB header cannot make each remembered key cost 30 KB.
MAX_KEY = 64


def request_key(spec: str, remote_addr: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The value of a zone's ``key`` for one request (b"" when the request has none).

    Args:
        spec: "$remote_addr", "$http_NAME" or "$cookie_NAME" (checked by the schema).
        remote_addr: the client's address, as REMOTE_ADDR.
        headers: the request's header fields.

    Returns:
        The value, or a 16-byte digest of it when it is over ``MAX_KEY`` bytes.
    """
    if spec == "$remote_addr":
        return remote_addr
    if spec.startswith("$http_"):
        wanted = spec[6:].lower().replace("_", "-").encode("latin-1")
        key = b", ".join(value for name, value in headers if name.lower().replace(b"_", b"-") == wanted)
    else:
        key = _cookie(headers, spec[8:].encode("latin-1"))
    return key if len(key) <= MAX_KEY else hashlib.blake2b(key, digest_size=16).digest()
