"""Errors of the FastCGI core: whose fault it was, and what status to give."""

from __future__ import annotations


class ProtocolError(Exception):
    """The FastCGI conversation went wrong; the connection is unusable.

    Not raised directly: catch it to handle both subclasses.

    Attributes:
        error_status_hint: the HTTP status a front-end should answer with
            (502 when the worker broke the protocol, 500 for local misuse).
    """

    def __init__(self, msg: str, error_status_hint: int = 502) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """This side misused the API (sent an event that the protocol forbids now)."""

    def __init__(self, msg: str, error_status_hint: int = 500) -> None:
        super().__init__(msg, error_status_hint)


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol or exceed a limit."""
