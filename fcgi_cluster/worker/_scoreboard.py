"""The pool's scoreboard: shared memory where children say what they are doing.

The master makes one ``Scoreboard`` per pool before forking (an anonymous
shared ``mmap``), so every child inherits the same pages. The layout is fixed
(``struct``): a header of pool counters, then one slot per possible child.

Why no locks are needed:

- A child writes only its own slot; the master writes only the header and the
  identity of a slot (pid, state "starting") before the child exists or after it
  is gone. So every byte has a single writer at any moment.
- Counters (accepted requests, finished requests, slow requests) are per-child fields
  that readers sum. A reader can see a slot half-written (the state of one
  request and the counter of the previous one): the status page and the pm
  decisions tolerate a figure that is one request old.
- The one multi-field move is the master folding a dead child's counters into
  the header before reusing its slot; it is wrapped in a sequence number
  (a seqlock: odd while moving) and readers retry, so no request is counted
  twice or lost.

Times in slots are ``time.monotonic()`` values: CLOCK_MONOTONIC is system-wide
on Linux, so one process can compare another's. Start times shown to users are
epoch seconds.
"""

from __future__ import annotations

import mmap
import socket
import struct
import time
from typing import Callable

from ._pool_config import PoolConfig
from ._status import PoolStatus, ProcessStatus, RequestHooks, RequestInfo

__all__ = ["Scoreboard", "ChildHooks", "listen_queue", "STARTING", "IDLE", "RUNNING", "FINISHING", "STUCK", "FREE"]

# Slot states. FINISHING: the child stopped accepting (pm.max_requests, reload)
# and ends when its requests are answered; it no longer counts for the pm.
FREE, STARTING, IDLE, RUNNING, FINISHING, STUCK = range(6)

# Header: seq, start time (epoch), retired accepted / requests / slow,
# max active, max children reached, max listen queue.
_HEADER = struct.Struct("=QdQQQIII4x")
_HEADER_SEQ = struct.Struct("=Q")

# A slot, in groups that are each written with one pack_into:
#   identity (master, at spawn):   pid, start time (epoch)
#   progress (child, per event):   state, in flight, accepted, requests, slow,
#                                  request start, last duration, last progress, idle since
#   request (child, per request):  content length, method, uri, script
_IDENTITY = struct.Struct("=i4xd")
_PROGRESS = struct.Struct("=BxxxIQQQdddd")
_REQUEST = struct.Struct("=q16s256s256s")
_SLOT_SIZE = _IDENTITY.size + _PROGRESS.size + _REQUEST.size
_PROGRESS_AT = _IDENTITY.size
_REQUEST_AT = _PROGRESS_AT + _PROGRESS.size

# Linux ``struct tcp_info``: 8 one-byte fields, then u32 rto, ato, snd_mss,
# rcv_mss, unacked, sacked. On a listening socket the kernel reports the
# current accept queue in tcpi_unacked and its limit (the backlog) in
# tcpi_sacked (net/ipv4/tcp.c, tcp_get_info).
_TCP_INFO = struct.Struct("=8xIIIIII")
_TCP_INFO_SIZE = 104


def listen_queue(sock: socket.socket, backlog: int) -> tuple[int, int]:
    """(connections waiting to be accepted, queue limit) of a listening socket.

    TCP sockets on Linux: both from ``TCP_INFO`` (tcpi_unacked, tcpi_sacked).
    Unix sockets have no such query: (0, the configured backlog), as php-fpm
    shows for them.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
            *_, unacked, sacked = _TCP_INFO.unpack_from(raw)
            return unacked, sacked
        except (OSError, struct.error):
            pass
    return 0, backlog


class Scoreboard:
    """Shared memory of one pool generation: a header and ``slots`` child slots.

    Args:
        slots: how many children may exist at once (running plus finishing).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.mem = mmap.mmap(-1, _HEADER.size + slots * _SLOT_SIZE)
        _HEADER.pack_into(self.mem, 0, 0, time.time(), 0, 0, 0, 0, 0, 0)

    def close(self) -> None:
        """Unmap it (the master, once no child of this generation is left)."""
        self.mem.close()

    def _at(self, slot: int) -> int:
        return _HEADER.size + slot * _SLOT_SIZE

    # --- the master's writes --------------------------------------------------

    def free_slot(self) -> int | None:
        """A slot no child uses, or None when all are taken."""
        for slot in range(self.slots):
            if _IDENTITY.unpack_from(self.mem, self._at(slot))[0] == 0:
                return slot
        return None

    def reserve(self, slot: int) -> None:
        """Take ``slot`` for a child about to be forked (before the fork, so the
        child never races the master on it)."""
        at = self._at(slot)
        _IDENTITY.pack_into(self.mem, at, -1, time.time())
        now = time.monotonic()
        _PROGRESS.pack_into(self.mem, at + _PROGRESS_AT, STARTING, 0, 0, 0, 0, 0.0, 0.0, now, now)

    def set_pid(self, slot: int, pid: int) -> None:
        """Record the forked child's pid in its reserved slot."""
        at = self._at(slot)
        _IDENTITY.pack_into(self.mem, at, pid, _IDENTITY.unpack_from(self.mem, at)[1])

    def release(self, slot: int) -> None:
        """Fold a dead child's counters into the pool's and free its slot."""
        at = self._at(slot)
        _, in_flight, accepted, requests, slow, *_ = _PROGRESS.unpack_from(self.mem, at + _PROGRESS_AT)
        seq, start, r_acc, r_req, r_slow, max_active, reached, max_queue = _HEADER.unpack_from(self.mem, 0)
        _HEADER_SEQ.pack_into(self.mem, 0, seq + 1)  # odd: moving
        _PROGRESS.pack_into(self.mem, at + _PROGRESS_AT, FREE, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
        _HEADER.pack_into(self.mem, 0, seq + 1, start, r_acc + accepted, r_req + requests, r_slow + slow,
                          max_active, reached, max_queue)
        _IDENTITY.pack_into(self.mem, at, 0, 0.0)
        _HEADER_SEQ.pack_into(self.mem, 0, seq + 2)

    def note(self, *, active: int | None = None, max_children_reached: bool = False, queue: int | None = None) -> None:
        """Update the pool maxima the master tracks (max active, max children reached, max queue)."""
        seq, start, r_acc, r_req, r_slow, max_active, reached, max_queue = _HEADER.unpack_from(self.mem, 0)
        if active is not None:
            max_active = max(max_active, active)
        if queue is not None:
            max_queue = max(max_queue, queue)
        reached += int(max_children_reached)
        _HEADER.pack_into(self.mem, 0, seq, start, r_acc, r_req, r_slow, max_active, reached, max_queue)

    # --- reading ----------------------------------------------------------------

    def slot_state(self, slot: int) -> tuple[int, int, int, float, float, float]:
        """(pid, state, in flight, request start, last progress, idle since) of one slot."""
        at = self._at(slot)
        pid = _IDENTITY.unpack_from(self.mem, at)[0]
        state, in_flight, _, _, _, req_start, _, progress, idle_since = _PROGRESS.unpack_from(self.mem, at + _PROGRESS_AT)
        return pid, state, in_flight, req_start, progress, idle_since

    def requests_of(self, slot: int) -> int:
        """Requests the child in ``slot`` has finished."""
        return _PROGRESS.unpack_from(self.mem, self._at(slot) + _PROGRESS_AT)[3]

    def status(self, pool: PoolConfig, listen_socket: socket.socket | None) -> PoolStatus:
        """The whole pool's status, as php-fpm's status page reports it.

        Where each figure comes from:

        - accepted conn, slow requests: the header's counters of dead children
          plus every slot's own (requests accepted, as php-fpm counts them,
          status and ping requests included; requests past
          ``request_slowlog_timeout``).
        - idle / active / total processes: slots with a child, active = at least
          one request in flight (a child multiplexes; idle = none).
        - listen queue: connections in the kernel's accept queue now
          (TCP_INFO ``tcpi_unacked`` of the listening socket); listen queue
          len: its limit (``tcpi_sacked``, the backlog); max listen queue: the
          largest queue the master has seen (sampled each maintenance tick) or
          this reading, whichever is larger.
        - max active processes, max children reached: kept by the master.
        """
        mem = self.mem
        while True:
            seq = _HEADER_SEQ.unpack_from(mem, 0)[0]
            _, start, accepted, _, slow, max_active, reached, max_queue = _HEADER.unpack_from(mem, 0)
            rows = []
            idle = active = 0
            for slot in range(self.slots):
                at = self._at(slot)
                pid, started = _IDENTITY.unpack_from(mem, at)
                state, in_flight, acc, requests, slw, req_start, duration, _, _ = _PROGRESS.unpack_from(mem, at + _PROGRESS_AT)
                accepted += acc
                slow += slw
                if pid <= 0 or state == FREE:
                    continue
                length, method, uri, script = _REQUEST.unpack_from(mem, at + _REQUEST_AT)
                running = in_flight > 0
                if running:
                    active += 1
                    duration = time.monotonic() - req_start
                else:
                    idle += 1
                rows.append(ProcessStatus(
                    pid=pid, state="Running" if running else "Idle", start_time=started, requests=requests,
                    request_duration=duration, request_method=_text(method), request_uri=_text(uri),
                    content_length=length, script=_text(script), last_request_cpu=0.0, last_request_memory=0,
                ))
            if seq % 2 == 0 and _HEADER_SEQ.unpack_from(mem, 0)[0] == seq:
                break
        queue, queue_len = listen_queue(listen_socket, pool.listen_backlog) if listen_socket is not None else (0, pool.listen_backlog)
        return PoolStatus(
            pool=pool.name, process_manager=pool.pm, start_time=start, accepted_conn=accepted,
            listen_queue=queue, max_listen_queue=max(max_queue, queue), listen_queue_len=queue_len,
            idle_processes=idle, active_processes=active, total_processes=idle + active,
            max_active_processes=max(max_active, active), max_children_reached=reached,
            slow_requests=slow, processes=tuple(rows),
        )


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class ChildHooks(RequestHooks):
    """A child's request hooks: keep its scoreboard slot current.

    Called in the child's trio thread for every connection and request, so each
    call is a few integer updates and one ``pack_into`` (no dicts, no formatting).

    Args:
        scoreboard: the pool's scoreboard (inherited from the master).
        slot: this child's slot.
        max_requests: ``pm.max_requests``; after that many finished requests
            ``on_retire`` is called once (0 = never).
    """

    def __init__(self, scoreboard: Scoreboard, slot: int, max_requests: int = 0) -> None:
        self.mem = scoreboard.mem
        self.at = scoreboard._at(slot)
        self.max_requests = max_requests
        #: Called once when the child has served ``max_requests`` (set by the child's main).
        self.on_retire: Callable[[], None] | None = None
        self.in_flight = 0
        self.accepted = 0
        self.requests = 0
        self.slow = 0
        self.state = STARTING
        #: The requests in flight, oldest first (a dict as an ordered set). A
        #: child multiplexes, but its status row has room for one request: it
        #: shows the oldest, so a long-running request stays in view (its
        #: duration is what an operator looks for) behind the short ones
        #: served beside it, the status request itself included.
        self._open: dict[int, RequestInfo] = {}
        self.req_start = 0.0
        self.duration = 0.0
        self.progress = time.monotonic()
        self.idle_since = self.progress

    def requests_left(self) -> int | None:
        return self.max_requests - self.accepted if self.max_requests else None

    def _write(self) -> None:
        _PROGRESS.pack_into(self.mem, self.at + _PROGRESS_AT, self.state, self.in_flight, self.accepted,
                            self.requests, self.slow, self.req_start, self.duration, self.progress, self.idle_since)

    def ready(self) -> None:
        """The child is serving: it counts as an idle process from now on."""
        self.state = IDLE
        self._write()

    def finishing(self) -> None:
        """The child stopped accepting and will exit when its requests are answered."""
        self.state = FINISHING
        self._write()

    def slow_request(self, info: RequestInfo) -> None:
        self.slow += 1
        self._write()

    def request_stuck(self, info: RequestInfo) -> None:
        """A request could not be ended at ``request_terminate_timeout``: the master kills this child."""
        self.state = STUCK
        self._write()

    def request_started(self, info: RequestInfo) -> None:
        # php-fpm's "accepted conn" counts requests (it increments it as each
        # request's headers are read), not connections: with kept-alive and
        # multiplexed connections only requests say how busy the pool is. A
        # process without a master counts the same way (PoolFeatures.own_status).
        self.accepted += 1
        if self.in_flight == 0:
            self.progress = info.start
        self.in_flight += 1
        if self.state == IDLE:
            self.state = RUNNING
        self._open[id(info)] = info
        if len(self._open) == 1:
            self._show(info)
        self._write()

    def _show(self, info: RequestInfo) -> None:
        """Put ``info`` in this child's status row (as the request it is running)."""
        self.req_start = info.start
        _REQUEST.pack_into(self.mem, self.at + _REQUEST_AT, info.content_length,
                           info.method.encode(), info.uri.encode("utf-8", "replace"),
                           info.script.encode("utf-8", "replace"))

    def request_finished(self, info: RequestInfo) -> None:
        now = time.monotonic()
        self.in_flight -= 1
        self.requests += 1
        self.duration = now - info.start
        self.progress = now
        shown = next(iter(self._open), None)
        self._open.pop(id(info), None)
        if shown == id(info) and self._open:
            self._show(next(iter(self._open.values())))
        if self.in_flight == 0:
            self.idle_since = now
            if self.state == RUNNING:
                self.state = IDLE
        self._write()
        if self.requests == self.max_requests and self.on_retire is not None:
            self.on_retire()


def pid_of(scoreboard: Scoreboard, slot: int) -> int:
    """The pid recorded in ``slot`` (0 = free)."""
    return _IDENTITY.unpack_from(scoreboard.mem, scoreboard._at(slot))[0]

