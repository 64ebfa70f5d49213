"""What a draining worker connection does with new requests, and when it closes.

A connection drains when its worker stops gracefully, retires at
``pm.max_requests`` or is replaced by a reload. Closing it while the peer has a
request on the wire would cut that request, so the connection closes only when
nothing is in flight and the peer has had time to see the drain. The rules:

* A peer seen to multiplex (two requests in flight at once on this connection:
  our front-end, HAProxy with ``mpxs-conns``) has every new request refused
  unstarted with END_REQUEST(OVERLOADED), which such a peer sends again on
  another connection (our front-end then closes its side, ending this one).
* Any other peer is served the request it sends alone (nginx takes an
  OVERLOADED for a 502); one that arrives while another runs marks the peer
  as multiplexing and is refused.
* Closing: a peer that numbers its requests (an ID other than 1: our
  front-end, HAProxy) may send the next at any moment, so its connection
  closes once the peer has been quiet for ``DRAIN_QUIET``. So does one that
  has sent a single request so far (ID 1): a connection of our front-end
  looks like nginx's until its next request, ID 2, and closing right after the
  first answer would cut that one. A peer that sent ID 1 twice (nginx,
  cgi-fcgi: one request at a time, the next after the answer) has its
  connection closed as soon as nothing is in flight, as php-fpm does, so a
  retiring child serves it no more than ``pm.max_requests`` (nginx sends a
  request cut that way again on a new connection). A connection that has not
  had its first request yet waits for it (a web server opened it to send one).
  Lingering never lasts more than ``DRAIN_LINGER`` from the drain's start.

``DrainPolicy`` is given the figures and the clock and answers; the trio
connection carries its answers out. It does no I/O.
"""

from __future__ import annotations

import math

__all__ = ["DRAIN_QUIET", "DRAIN_LINGER", "DrainPolicy"]

#: Seconds a peer must stay silent before a draining connection with nothing
#: in flight closes. A request on the wire takes well under a millisecond on
#: loopback and a few on a LAN; a second also covers a peer on a loaded machine
#: that read the last answer late. It delays a stop (or a retiring pool
#: child's exit) by at most this much; a replacement child does not wait for it.
DRAIN_QUIET = 1.0

#: Seconds from the drain's start after which a connection closes as soon as
#: nothing is in flight, quiet peer or not: a peer that keeps sending requests
#: alone (never refused) must not hold a stopping worker for ever.
DRAIN_LINGER = 3 * DRAIN_QUIET


class DrainPolicy:
    """The drain decisions of one connection.

    Args:
        quiet: seconds of silence from the peer before closing.
        linger: seconds from the drain's start after which it closes when idle.

    Attributes:
        multiplexed: the peer was seen with two requests in flight at once.
        numbered: the peer sent a request ID other than 1.
        reuses_one: the peer sent request ID 1 more than once (one request at a time).
        draining: ``start`` was called.
    """

    __slots__ = ("quiet", "linger", "multiplexed", "numbered", "reuses_one", "draining", "_ones", "_heard", "_started")

    def __init__(self, quiet: float = DRAIN_QUIET, linger: float = DRAIN_LINGER) -> None:
        self.quiet = quiet
        self.linger = linger
        self.multiplexed = False
        self.numbered = False
        self.reuses_one = False
        self.draining = False
        self._ones = 0
        self._heard = self._started = -math.inf

    def start(self, now: float) -> None:
        """The connection starts draining; the quiet period counts from now."""
        self.draining = True
        self._heard = self._started = now

    def heard(self, now: float) -> None:
        """Bytes arrived from the peer (called while draining only)."""
        self._heard = now

    def admit(self, request_id: int, in_flight: int) -> bool:
        """A new request arrived with ``in_flight`` others: True to serve it, False to refuse it (OVERLOADED)."""
        if in_flight:
            self.multiplexed = True
        if request_id != 1:
            self.numbered = True
        else:
            self._ones += 1
            self.reuses_one = self._ones > 1
        if not self.draining:
            return True
        return not self.multiplexed

    def close_at(self, in_flight: int, served_one: bool) -> float | None:
        """When the connection should close, on the clock given to ``start``/``heard``.

        Args:
            in_flight: requests being served.
            served_one: the connection has had a request.

        Returns:
            None while it must stay open (not draining, requests in flight, a
            first request not yet come); ``-inf`` to close now; else the time
            at which to close if nothing more arrives.
        """
        if not self.draining or in_flight or not served_one:
            return None
        if self.reuses_one and not (self.multiplexed or self.numbered):
            return -math.inf  # one at a time, and its last request is answered
        return min(self._heard + self.quiet, self._started + self.linger)
