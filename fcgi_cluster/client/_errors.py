"""The client's errors: one hierarchy, named for what went wrong and whose fault it was.

Whether a request may be retried on another worker follows from the class:
``ConnectError`` and ``RequestRefused`` mean the application never ran the
request; after ``ConnectionLost`` or ``UpstreamProtocolError`` it may have.
"""

from __future__ import annotations

from ..protocol import ProtocolStatus

__all__ = [
    "FastCGIError", "ConnectError", "ConnectionLost", "PeerUnresponsive", "UpstreamProtocolError", "RequestRefused",
    "ResponseOverflow",
]


class FastCGIError(Exception):
    """A FastCGI request or connection failed. Catch this to handle every client error."""


class ConnectError(FastCGIError):
    """No connection to the worker: refused, unreachable, or not accepted in time.

    The request never reached an application, so it is safe to try another worker.
    """


class ConnectionLost(FastCGIError):
    """The connection ended before the request did.

    The worker closed or reset it, or this side closed it. The application may
    have run the request, so only idempotent requests should be retried.
    """


class PeerUnresponsive(ConnectionLost):
    """The connection was given up because the worker stopped answering.

    Its host is unreachable (keepalive probes or ``TCP_USER_TIMEOUT`` ran out,
    no route), it took none of our data within the send timeout, or it did
    not answer a ping. Unlike a worker that closed its connection, a new
    connection to the same worker is unlikely to fare better: try another.
    """


class UpstreamProtocolError(FastCGIError):
    """The worker broke FastCGI, or sent a CGI response this client cannot read.

    When FastCGI framing broke (the ``__cause__`` is the core's
    ``RemoteProtocolError``), the whole connection is dead. When only one
    response's CGI header block was bad, that request failed and the
    connection stays usable.
    """


class RequestRefused(FastCGIError):
    """The worker ended the request without running it (END_REQUEST not COMPLETE).

    Attributes:
        protocol_status: CANT_MPX_CONN, OVERLOADED or UNKNOWN_ROLE.
    """

    def __init__(self, message: str, protocol_status: ProtocolStatus) -> None:
        super().__init__(message)
        self.protocol_status = protocol_status


class ResponseOverflow(FastCGIError):
    """The answer outgrew what its connection may hold for a reader that is too slow.

    Its ``Buffering`` bounds (memory, then the temporary file) were reached
    before the caller read it, or the file could not be written. That request
    alone was aborted (ABORT_REQUEST); the connection serves on. Not the
    worker's fault, and not worth retrying: the answer was already under way.
    """
