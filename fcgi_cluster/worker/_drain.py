"""What a draining worker connection does with new requests, and when it closes.

A connection drains when its worker stops gracefully, retires at
``pm.max_requests`` or is replaced by a reload. The rules, by the kind of peer:

* A peer that sends one request at a time (nginx, php-fpm's clients) is served
  the request it sends: nginx takes an OVERLOADED answer for a 502. Its
  connection closes as soon as nothing is in flight (and it has had its first
  request: a web server opened it to send one).
* A peer seen to multiplex (two requests in flight at once on this connection,
  our front-end, HAProxy with ``mpxs-conns``) may have a request on the wire at
  any moment, and closing would cut it. Every new request is refused unstarted
  with END_REQUEST(OVERLOADED), which such a peer sends again on another
  connection, and the connection closes once nothing is in flight and the peer
  has been quiet for ``DRAIN_QUIET`` (our front-end closes its side itself
  after its first OVERLOADED, which ends the connection sooner).

``DrainPolicy`` is given the figures and the clock and answers; the trio
connection carries its answers out. It does no I/O.
"""

from __future__ import annotations

import math

__all__ = ["DRAIN_QUIET", "DrainPolicy"]

#: Seconds a multiplexing peer must stay silent before a draining connection
#: with nothing in flight closes. A request on the wire takes well under a
#: millisecond on loopback and a few on a LAN; a second also covers a peer on
#: a loaded machine that read the last OVERLOADED late. It delays a stop (or a
#: retiring pool child's exit) by at most this much; a replacement child does
#: not wait for it.
DRAIN_QUIET = 1.0


class DrainPolicy:
    """The drain decisions of one connection.

    Args:
        quiet: seconds of silence from a multiplexing peer before closing.

    Attributes:
        multiplexed: the peer was seen with two requests in flight at once.
        draining: ``start`` was called.
    """

    __slots__ = ("quiet", "multiplexed", "draining", "_heard")

    def __init__(self, quiet: float = DRAIN_QUIET) -> None:
        self.quiet = quiet
        self.multiplexed = False
        self.draining = False
        self._heard = -math.inf

    def start(self, now: float) -> None:
        """The connection starts draining; the quiet period counts from now."""
        self.draining = True
        self._heard = now

    def heard(self, now: float) -> None:
        """Bytes arrived from the peer (called while draining only)."""
        self._heard = now

    def admit(self, in_flight: int) -> bool:
        """A new request arrived with ``in_flight`` others: True to serve it, False to refuse it (OVERLOADED)."""
        if in_flight:
            self.multiplexed = True
        return not self.draining or not self.multiplexed

    def close_at(self, in_flight: int, served_one: bool) -> float | None:
        """When the connection should close, on the clock given to ``start``/``heard``.

        Args:
            in_flight: requests being served.
            served_one: the connection has had a request.

        Returns:
            None while it must stay open (not draining, requests in flight, a
            first request not yet come); ``-inf`` to close now; else the time
            at which the peer will have been quiet long enough.
        """
        if not self.draining or in_flight:
            return None
        if self.multiplexed:
            return self._heard + self.quiet
        return -math.inf if served_one else None
