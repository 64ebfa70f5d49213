"""Choosing the upstream server for each request attempt, as nginx's ``upstream`` block does.

Sans-IO: no sockets, no tasks, time read from an injected clock. The front-end's
upstream pool drives it: ``choose`` before each attempt, ``started`` and
``finished`` around the request, then ``failed`` (connect error, reset, timeout,
garbage) or ``succeeded`` (a response arrived, whatever its status).

Rules (from nginx's ngx_http_upstream_round_robin.c and the least_conn,
ip_hash and hash modules). For the same server list, round robin, ip_hash and
consistent hash pick exactly the servers nginx picks (checked against nginx
1.22.1; the tests hold answers recorded from it):

* Methods. ``round_robin``: smooth weighted round robin (every candidate's
  current weight grows by its effective weight, the largest wins and gives back
  the sum), so weights 5,1,1 give ``a a b a c a a``, exact in every cycle.
  ``least_conn``: fewest active requests per unit of weight, ties broken by
  smooth round robin among the tied. ``ip_hash``: the first three octets of an
  IPv4 client (its /24) or the whole IPv6 address, with nginx's arithmetic;
  if that server cannot be used, rehash up to ``IP_HASH_REHASHES`` times, then
  fall back to round robin. ``hash``: consistent (ketama) hashing, nginx's
  ``hash $key consistent``: ``POINTS_PER_WEIGHT`` ring points per unit of
  weight placed as nginx places them; a key goes to the first point at or after
  crc32(key) whose server can be used.
* A server can be used for an attempt when it is not ``down``, not out for
  failures, below its ``max_conns`` and not in the attempt's ``exclude`` set
  (the servers this request already tried).
* Failures. ``max_fails`` failures within ``fail_timeout`` of the first one put
  a server out for ``fail_timeout``; failures older than that are forgotten.
  When the time is up the server gets ONE trial request (no other until its
  outcome, or until another ``fail_timeout`` passes without one). Success
  restores it; failure puts it out again. A failure also lowers the server's
  effective weight by ``weight // max_fails``; each round that considers it
  gives one unit back, so a flapping server gets less traffic.
* ``backup`` servers take requests only when no primary can be used. nginx
  forbids them with ip_hash and hash (a key must keep its server), and so do we.
* A lone server (one server, no backup) is never put out for failures, as in
  nginx: with nowhere else to go, an immediate 502 helps nobody.

Where this differs from nginx, and why:

* nginx forgets every failure when a request finds no server at all ("quick
  recovery"). We keep the servers out: while every server is dead, requests get
  an immediate 502 rather than each one waiting on a connect timeout. But a
  request whose attempt just failed and that finds every other server out for
  failures tries the one due back first (as its trial) before answering 502:
  when one server dies while another is still sitting out an earlier fault
  (a link that came back, a restart), the request is served, not failed. Only
  requests already retrying pay that attempt, and only until the servers are
  all out.
* nginx counts failures until a success arrives after the window; we forget
  failures ``fail_timeout`` after the first one, which is what nginx documents.
* ip_hash maps IPv4-mapped IPv6 clients (``::ffff:a.b.c.d``) to their IPv4
  /24, so a dual-stack listener does not split one client between servers.
  A key that is not an IP address is hashed whole; no key hashes like nginx's
  unix-socket clients (three zero bytes), so they all share one server.
"""

from __future__ import annotations

import math
import socket
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

__all__ = [
    "IP_HASH_REHASHES",
    "MAX_WEIGHT",
    "POINTS_PER_WEIGHT",
    "Balancer",
    "ServerSpec",
]

#: Ring points per unit of weight in consistent hashing: ketama's and nginx's
#: number. With 2-10 servers it keeps each server's share of keys within a few
#: percent of its weight, and adding one of N servers moves about 1/N of keys.
POINTS_PER_WEIGHT = 160

#: Rehashes ip_hash tries when a client's server cannot be used, before it falls
#: back to round robin. nginx's number: with a few servers out, some rehash finds
#: a live one long before this.
IP_HASH_REHASHES = 20

#: Largest server weight. nginx has no cap (HAProxy stops at 256), but ratios
#: finer than 1:100 between a few worker pools mean nothing, and the cap bounds
#: the consistent-hash ring at 16,000 points per server: ten servers at full
#: weight build their ring in about a third of a second.
MAX_WEIGHT = 100

_ROUND_ROBIN = "round_robin"
_LEAST_CONN = "least_conn"
_IP_HASH = "ip_hash"
_HASH = "hash"

# nginx's ip_hash arithmetic (ngx_http_upstream_ip_hash_module.c): the same
# client and server list give the same server as nginx would pick.
_IP_HASH_SEED = 89
_IP_HASH_MULTIPLIER = 113
_IP_HASH_MODULUS = 6271
# What nginx hashes for clients without an IP address (unix sockets).
_PSEUDO_ADDRESS = b"\0\0\0"
_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One ``server`` line of an upstream block, with nginx's parameter defaults.

    Attributes:
        address: where the server listens (``host:port``, ``[v6]:port``,
            ``unix:/path``); opaque here except as the consistent-hash point seed.
        weight: share of requests relative to the other servers, 1 to ``MAX_WEIGHT``.
        max_fails: failures within ``fail_timeout`` that put the server out for
            ``fail_timeout``; 0 never puts it out.
        fail_timeout: seconds; both the failure-counting window and how long
            the server stays out.
        backup: take requests only when no primary server can be used.
        down: never take requests (a server kept in the list for its hash points);
            the front-end keeps no connection to it and does not check it.
        drain: take no new request, as ``down``, while its connections and
            health checks go on (a control command's ``drain``: in-flight
            requests finish, and ``up`` finds it warm).
        max_conns: most requests in flight at once; 0 for no limit.
        resolve: seconds between two resolutions of a host name address
            (``_resolve``); 0 for the upstream's ``resolve``.

    Raises:
        ValueError: a field is out of range; the message names the server and field.
    """

    address: str
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    max_conns: int = 0
    resolve: float = 0.0
    drain: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address:
            raise ValueError(f"server address must be a non-empty string, got {self.address!r}")
        name = f"server {self.address!r}"
        if not _is_int(self.weight) or not 1 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"{name}: weight must be an integer from 1 to {MAX_WEIGHT}, got {self.weight!r}")
        if not _is_int(self.max_fails) or self.max_fails < 0:
            raise ValueError(f"{name}: max_fails must be an integer >= 0, got {self.max_fails!r}")
        timeout = self.fail_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
            # 0 would make the window empty; max_fails=0 is how to turn failure counting off.
            raise ValueError(f"{name}: fail_timeout must be a number of seconds > 0, got {timeout!r}")
        if not _is_int(self.max_conns) or self.max_conns < 0:
            raise ValueError(f"{name}: max_conns must be an integer >= 0, got {self.max_conns!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Peer:
    """The live state of one server."""

    __slots__ = (
        "index",
        "weight",
        "max_fails",
        "fail_timeout",
        "down",
        "max_conns",
        "effective_weight",
        "current_weight",
        "active",
        "requests",
        "fails",
        "total_fails",
        "window_start",
        "out_until",
        "trial_until",
    )

    def __init__(self, index: int, spec: ServerSpec, count_fails: bool) -> None:
        self.index = index
        self.weight = spec.weight
        self.max_fails = spec.max_fails if count_fails else 0
        self.fail_timeout = float(spec.fail_timeout)
        self.down = spec.down or spec.drain
        self.max_conns = spec.max_conns
        self.effective_weight = spec.weight
        self.current_weight = 0
        self.active = 0
        self.requests = 0
        self.fails = 0
        self.total_fails = 0
        self.window_start = 0.0
        # None while healthy. Once out, the server stays out until this time,
        # then is on probation until a trial succeeds.
        self.out_until: float | None = None
        # While on probation: a trial is in flight and no other request goes
        # there before this time (None: the next choice is the trial).
        self.trial_until: float | None = None

    def healthy_at(self, now: float) -> bool:
        """Whether failures and ``down`` allow a request now."""
        if self.down:
            return False
        out_until = self.out_until
        if out_until is None:
            return True
        if now < out_until:
            return False
        return self.trial_until is None or now >= self.trial_until

    def usable(self, now: float, exclude: Collection[int]) -> bool:
        """Whether this attempt may go here."""
        if self.down:
            return False
        if self.out_until is not None and not self.healthy_at(now):
            return False
        if self.max_conns and self.active >= self.max_conns:
            return False
        return not (exclude and self.index in exclude)


class Balancer:
    """Picks a server for each request attempt and keeps each server's health.

    Args:
        servers: the upstream's servers; their positions are the indexes
            every other method takes and returns.
        method: one of ``METHODS``.
        clock: seconds from a monotonic clock; tests pass a fake one.

    Raises:
        TypeError: ``servers`` holds something other than ``ServerSpec``.
        ValueError: no servers, only backup servers, two servers with one
            address, an unknown method, or backup servers with ip_hash or hash.
    """

    METHODS = (_ROUND_ROBIN, _LEAST_CONN, _IP_HASH, _HASH)

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        method: str = _ROUND_ROBIN,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        servers = tuple(servers)
        if method not in self.METHODS:
            raise ValueError(f"unknown balancing method {method!r}; expected one of {', '.join(self.METHODS)}")
        if not servers:
            raise ValueError("an upstream needs at least one server")
        seen: set[str] = set()
        for spec in servers:
            if not isinstance(spec, ServerSpec):
                raise TypeError(f"servers must be ServerSpec instances, got {spec!r}")
            if spec.address in seen:
                # Two entries would share hash points and status lines; a
                # bigger weight is how to give a server more traffic.
                raise ValueError(f"server {spec.address!r} is listed twice")
            seen.add(spec.address)
            if spec.backup and method in (_IP_HASH, _HASH):
                raise ValueError(
                    f"server {spec.address!r}: backup servers cannot be used with {method}, "
                    "which must keep sending a key to the same server"
                )
        if all(spec.backup for spec in servers):
            raise ValueError("every server is a backup; at least one must be a primary")
        self.servers: tuple[ServerSpec, ...] = servers
        self.method = method
        self._clock = clock
        count_fails = len(servers) > 1
        self._peers = [_Peer(i, spec, count_fails) for i, spec in enumerate(servers)]
        self._primary = [p for p in self._peers if not servers[p.index].backup]
        self._backup = [p for p in self._peers if servers[p.index].backup]
        self._pick = {
            _ROUND_ROBIN: self._choose_round_robin,
            _LEAST_CONN: self._choose_least_conn,
            _IP_HASH: self._choose_ip_hash,
            _HASH: self._choose_hash,
        }[method]
        if method == _IP_HASH:
            # Weight slots as nginx walks them: down servers keep theirs, so
            # marking one down does not move other servers' clients.
            bounds, total = [], 0
            for p in self._primary:
                total += p.weight
                bounds.append(total)
            self._slot_bounds = bounds
            self._total_weight = total
        if method == _HASH:
            self._ring_hashes, self._ring_owners = _build_ring(servers)

    # -- choosing ---------------------------------------------------------------

    def choose(self, key: bytes | None = None, *, exclude: Collection[int] = (), retry: bool = False) -> int | None:
        """Pick the server for one attempt of a request.

        Args:
            key: for ip_hash, the client's IP address as text (``b"192.0.2.7"``);
                for hash, the hash key. Ignored by the other methods.
            exclude: indexes of servers this request already tried.
            retry: an earlier attempt of this request failed; with no usable
                server left, the one out for failures due back first is tried
                rather than none.

        Returns:
            The index of the server to use, or None when no server can be used
            (all down, out for failures, at ``max_conns`` or excluded): answer
            502 at once.
        """
        now = self._clock()
        peer = self._pick(key, now, exclude)
        if peer is None and self._backup:
            if self.method == _LEAST_CONN:
                peer = _least_conn(self._backup, now, exclude)
            else:
                peer = _smooth_round_robin(self._backup, now, exclude)
        if peer is None and retry:
            peer = _last_resort(self._peers, exclude)
        if peer is None:
            return None
        if peer.out_until is not None:
            # This is the trial request: nothing else goes there until its
            # outcome, or until a whole fail_timeout passes without one.
            peer.trial_until = now + peer.fail_timeout
        return peer.index

    def _choose_round_robin(self, key: bytes | None, now: float, exclude: Collection[int]) -> _Peer | None:
        return _smooth_round_robin(self._primary, now, exclude)

    def _choose_least_conn(self, key: bytes | None, now: float, exclude: Collection[int]) -> _Peer | None:
        return _least_conn(self._primary, now, exclude)

    def _choose_ip_hash(self, key: bytes | None, now: float, exclude: Collection[int]) -> _Peer | None:
        address = _ip_hash_address(key)
        bounds = self._slot_bounds
        total = self._total_weight
        primary = self._primary
        h = _IP_HASH_SEED
        for _ in range(1 + IP_HASH_REHASHES):
            # Each rehash runs the address through the hash again, as nginx does.
            for byte in address:
                h = (h * _IP_HASH_MULTIPLIER + byte) % _IP_HASH_MODULUS
            peer = primary[bisect_right(bounds, h % total)]
            if peer.usable(now, exclude):
                return peer
        return _smooth_round_robin(primary, now, exclude)

    def _choose_hash(self, key: bytes | None, now: float, exclude: Collection[int]) -> _Peer | None:
        hashes = self._ring_hashes
        owners = self._ring_owners
        peers = self._peers
        count = len(hashes)
        start = bisect_left(hashes, zlib.crc32(key or b""))
        everyone = (1 << len(peers)) - 1
        rejected = 0
        # Walk the ring clockwise to the first point whose server can be used;
        # stop once every server has been turned down.
        for step in range(count):
            owner = owners[(start + step) % count]
            bit = 1 << owner
            if rejected & bit:
                continue
            peer = peers[owner]
            if peer.usable(now, exclude):
                return peer
            rejected |= bit
            if rejected == everyone:
                break
        return None

    # -- reports from the caller ----------------------------------------------

    def started(self, index: int) -> None:
        """Count a request sent to server ``index`` (for least_conn and max_conns)."""
        peer = self._peers[index]
        peer.active += 1
        peer.requests += 1

    def finished(self, index: int) -> None:
        """Count the end of a request that ``started`` counted, whatever its outcome.

        Raises:
            RuntimeError: more ``finished`` than ``started`` calls for this server.
        """
        peer = self._peers[index]
        if peer.active <= 0:
            raise RuntimeError(f"finished() without started() for server {self.servers[index].address!r}")
        peer.active -= 1

    def failed(self, index: int) -> None:
        """Record a failed attempt on server ``index``: connect error, reset, timeout, garbage.

        The ``max_fails``-th failure within ``fail_timeout`` of the first puts
        the server out for ``fail_timeout``; a failure while it is out or on
        trial puts it out for another ``fail_timeout`` from now.
        """
        peer = self._peers[index]
        now = self._clock()
        peer.total_fails += 1
        max_fails = peer.max_fails
        if max_fails:
            peer.effective_weight = max(0, peer.effective_weight - peer.weight // max_fails)
        if peer.out_until is not None:
            peer.fails += 1
            peer.out_until = now + peer.fail_timeout
            peer.trial_until = None
            return
        if peer.fails == 0 or now - peer.window_start > peer.fail_timeout:
            peer.fails = 0
            peer.window_start = now
        peer.fails += 1
        if max_fails and peer.fails >= max_fails:
            peer.out_until = now + peer.fail_timeout
            peer.trial_until = None

    def succeeded(self, index: int) -> None:
        """Record a response from server ``index``, whatever its status.

        After the server's trial request this restores it. While it is out,
        a success of a request sent before it went out changes nothing.
        """
        peer = self._peers[index]
        if peer.out_until is not None and peer.trial_until is not None:
            peer.out_until = None
            peer.trial_until = None
            peer.fails = 0

    def carry_state(self, previous: Balancer) -> None:
        """Go on from ``previous`` for the servers both have (a reload, a control command).

        Request and failure totals, the smooth round-robin position
        (``current_weight``), a weight still lowered by recent failures and a
        server out for failures (or on trial) carry over, so a reload neither
        sends the next requests to the servers first in the list nor hands a
        failing server its full share again. Requests in flight stay counted by
        the balancer that sent them (their outcome is reported there).
        """
        old = {spec.address: peer for spec, peer in zip(previous.servers, previous._peers)}
        for spec, peer in zip(self.servers, self._peers):
            before = old.get(spec.address)
            if before is None:
                continue
            peer.requests = before.requests
            peer.total_fails = before.total_fails
            peer.current_weight = before.current_weight
            if before.effective_weight < before.weight:
                peer.effective_weight = min(before.effective_weight, peer.weight)
            if peer.max_fails:
                peer.fails = before.fails
                peer.window_start = before.window_start
                peer.out_until = before.out_until
                peer.trial_until = before.trial_until

    # -- inspection -----------------------------------------------------------

    def is_available(self, index: int) -> bool:
        """Whether server ``index`` may take a request now, as far as health goes.

        False for a ``down`` server, one out for failures and one whose trial
        request is in flight. A server at its ``max_conns`` is busy, not
        unavailable: this returns True for it.
        """
        return self._peers[index].healthy_at(self._clock())

    def snapshot(self) -> list[dict[str, object]]:
        """Every server's state, in index order, for status pages and logs.

        Returns:
            One dict per server: ``address``, ``weight``, ``effective_weight``,
            ``current_weight``, ``backup``, ``down``, ``max_conns``, ``active``
            (requests in flight), ``requests`` (started so far), ``fails``
            (within the current window), ``total_fails``, ``available``
            (``is_available``) and ``retry_in`` (seconds until it may be
            tried again; 0.0 when available).
        """
        now = self._clock()
        report = []
        for spec, peer in zip(self.servers, self._peers):
            fails = peer.fails
            if peer.out_until is None and fails and now - peer.window_start > peer.fail_timeout:
                fails = 0
            available = peer.healthy_at(now)
            retry_in = 0.0
            if not available and not peer.down:
                retry_in = max(peer.out_until or 0.0, peer.trial_until or 0.0) - now
            report.append(
                {
                    "address": spec.address,
                    "weight": spec.weight,
                    "effective_weight": peer.effective_weight,
                    "current_weight": peer.current_weight,
                    "backup": spec.backup,
                    "down": spec.down,
                    "max_conns": spec.max_conns,
                    "active": peer.active,
                    "requests": peer.requests,
                    "fails": fails,
                    "total_fails": peer.total_fails,
                    "available": available,
                    "retry_in": retry_in,
                }
            )
        return report


def _smooth_round_robin(peers: list[_Peer], now: float, exclude: Collection[int]) -> _Peer | None:
    """nginx's smooth weighted round robin over the usable ``peers``."""
    best = None
    total = 0
    for peer in peers:
        if not peer.usable(now, exclude):
            continue
        weight = peer.effective_weight
        peer.current_weight += weight
        total += weight
        if weight < peer.weight:
            peer.effective_weight = weight + 1
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    if best is not None:
        best.current_weight -= total
    return best


def _least_conn(peers: list[_Peer], now: float, exclude: Collection[int]) -> _Peer | None:
    """The usable peer with the fewest active requests per weight; ties by smooth round robin."""
    best = None
    tied: list[_Peer] = []
    for peer in peers:
        if not peer.usable(now, exclude):
            continue
        if best is None:
            best = peer
            tied = [peer]
            continue
        # active/weight compared without division, as nginx does.
        mine = peer.active * best.weight
        theirs = best.active * peer.weight
        if mine < theirs:
            best = peer
            tied = [peer]
        elif mine == theirs:
            tied.append(peer)
    if len(tied) > 1:
        # The tied peers are all usable, so no exclusions are needed here.
        return _smooth_round_robin(tied, now, ())
    return best


def _last_resort(peers: list[_Peer], exclude: Collection[int]) -> _Peer | None:
    """For a retry that found no usable server: the one out for failures that is due back first."""
    best = None
    for peer in peers:
        if peer.out_until is None or peer.down or peer.index in exclude:
            continue
        if peer.max_conns and peer.active >= peer.max_conns:
            continue
        if best is None or peer.out_until < best.out_until:
            best = peer
    return best


def _ip_hash_address(key: bytes | None) -> bytes:
    """The bytes ip_hash hashes: an IPv4 /24, a whole IPv6 address, or the key itself."""
    if not key:
        return _PSEUDO_ADDRESS
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return key
    try:
        return socket.inet_pton(socket.AF_INET, text)[:3]
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return key
    if packed.startswith(_V4_MAPPED_PREFIX):
        return packed[12:15]
    return packed


def _ring_seed(address: str) -> int:
    """crc32 of ``host \\0 port``, nginx's base for a server's ring points.

    nginx splits the configured address at its last colon when only digits
    follow, and treats ``unix:`` addresses as a host with no port.
    """
    raw = address.encode("utf-8")
    host, port = raw, b""
    if raw[:5].lower() == b"unix:":
        host = raw[5:]
    else:
        head, sep, tail = raw.rpartition(b":")
        if sep and tail.isdigit():
            host, port = head, tail
    return zlib.crc32(host + b"\0" + port)


def _build_ring(servers: Sequence[ServerSpec]) -> tuple[array, array]:
    """The consistent-hash ring: sorted point hashes and the server index owning each.

    Each server gets ``POINTS_PER_WEIGHT * weight`` points, chained as nginx
    chains them: point n is crc32 of ``host \\0 port`` followed by point n-1
    (little-endian, 0 for the first). Down servers keep their points, so
    marking one down moves only its own keys.
    """
    points: list[tuple[int, int]] = []
    for index, spec in enumerate(servers):
        seed = _ring_seed(spec.address)
        previous = 0
        for _ in range(POINTS_PER_WEIGHT * spec.weight):
            previous = zlib.crc32(previous.to_bytes(4, "little"), seed)
            points.append((previous, index))
    # On equal hashes the lower index keeps the point (nginx keeps whichever
    # its qsort leaves first); the order must not depend on anything else.
    points.sort()
    hashes = array("L")
    owners = array("H")
    last = -1
    for point_hash, index in points:
        if point_hash != last:
            hashes.append(point_hash)
            owners.append(index)
            last = point_hash
    return hashes, owners
