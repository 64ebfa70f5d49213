"""Events: what one side of a FastCGI connection says to the other.

The same classes serve both directions. A web server (``ClientConnection``)
sends ``Request``, ``Stdin``, ``Data``, ``AbortRequest`` and ``GetValues``, and
receives ``Stdout``, ``Stderr``, ``EndRequest``, ``GetValuesResult`` and
``UnknownType``; an application (``ServerConnection``) does the reverse.

Streams (STDIN, DATA, STDOUT, STDERR) are ended on the wire by an empty record.
Events keep that rule: an event with empty ``data`` is the end of its stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ._constants import ProtocolStatus, RecordType, Role

__all__ = [
    "Event",
    "Request",
    "Stdin",
    "Data",
    "Stdout",
    "Stderr",
    "AbortRequest",
    "EndRequest",
    "GetValues",
    "GetValuesResult",
    "UnknownType",
]


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Request(Event):
    """A request begins: BEGIN_REQUEST and the whole PARAMS stream.

    Received by the application once PARAMS has ended, so ``params`` is complete.

    Args:
        request_id: 1..65535, unique among the requests in flight on the connection.
        params: the CGI variables, as bytes (FastCGI carries no encoding).
        role: RESPONDER, AUTHORIZER or FILTER.
        keep_conn: the application keeps the connection open after the request.
    """

    request_id: int
    params: Mapping[bytes, bytes]
    role: Role = Role.RESPONDER
    keep_conn: bool = True


@dataclass(frozen=True, slots=True)
class _StreamEvent(Event):
    request_id: int
    data: bytes

    #: The record type carrying this stream; set by each subclass.
    record_type = RecordType.STDIN

    @property
    def end(self) -> bool:
        """True when this event ends its stream (an empty record on the wire)."""
        return not self.data


@dataclass(frozen=True, slots=True)
class Stdin(_StreamEvent):
    """Request body bytes; empty ``data`` ends the body."""

    record_type = RecordType.STDIN


@dataclass(frozen=True, slots=True)
class Data(_StreamEvent):
    """FILTER role file data; empty ``data`` ends it."""

    record_type = RecordType.DATA


@dataclass(frozen=True, slots=True)
class Stdout(_StreamEvent):
    """Response bytes (CGI headers, blank line, body); empty ``data`` ends them."""

    record_type = RecordType.STDOUT


@dataclass(frozen=True, slots=True)
class Stderr(_StreamEvent):
    """Error-log bytes from the application; empty ``data`` ends them."""

    record_type = RecordType.STDERR


@dataclass(frozen=True, slots=True)
class AbortRequest(Event):
    """The web server gives up on a request (its client went away)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class EndRequest(Event):
    """The application has finished a request.

    Sending it also ends the STDOUT (and, if used, STDERR) stream.
    """

    request_id: int
    app_status: int = 0
    protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE


@dataclass(frozen=True, slots=True)
class GetValues(Event):
    """A management query for the application's capabilities."""

    names: tuple[bytes, ...] = (b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS")


@dataclass(frozen=True, slots=True)
class GetValuesResult(Event):
    """The answer to ``GetValues``: known names only, values as bytes."""

    values: Mapping[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnknownType(Event):
    """The application did not understand a management record of this type."""

    record_type: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed its side of the connection cleanly (between records)."""


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Returned by ``next_event()`` when more bytes must be received first.
NEED_DATA = _Sentinel("NEED_DATA")

__all__ += ["ConnectionClosed", "NEED_DATA"]
