"""Bytes to and from one client socket: reads with timeouts, writes with ``send_timeout``, lingering close.

Plain TCP and unix connections are read and written through their descriptor
directly when that cannot block (a kept-alive client's next request, and a
whole small answer, nearly always can); TLS goes through the trio stream.
"""

from __future__ import annotations

import os
import socket

import trio

from ._deadlines import Deadlines

__all__ = ["ClientGone", "ClientIO", "RECEIVE_SIZE"]

#: Bytes asked of a client socket per receive.
RECEIVE_SIZE = 64 * 1024

#: After closing our side with a request body unread: how long in all, and
#: how long between two reads, the client's remaining bytes are read and
#: dropped (nginx's lingering_time and lingering_timeout).
LINGERING_TIME = 30.0
LINGERING_TIMEOUT = 5.0


class ClientGone(Exception):
    """The client closed or reset its connection (or took nothing for ``send_timeout``)."""


class ClientIO:
    """One client's socket.

    Args:
        stream: what is read and written (a TLS stream over ``transport``, or ``transport``).
        transport: the socket stream under it, closed at the end.
        deadlines: keeps the deadline of ``receive_next``.
        send_timeout: how long a send may wait for a client that reads nothing.
    """

    __slots__ = ("stream", "transport", "fd", "timed_out", "_deadlines", "_send_timeout")

    def __init__(self, stream: trio.abc.Stream, transport: trio.SocketStream, deadlines: Deadlines,
                 send_timeout: float) -> None:
        self.stream = stream
        self.transport = transport
        #: The descriptor for direct reads and writes; -1 for TLS.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        #: Set when the wait of ``receive_next`` ran out.
        self.timed_out = False
        self._deadlines = deadlines
        self._send_timeout = send_timeout

    def read_expired(self) -> None:
        """``Deadlines``: the wait in ``receive_next`` ran out; wake it (it returns None)."""
        self.timed_out = True
        trio.lowlevel.notify_closing(self.fd)

    async def receive_next(self, timeout: float) -> bytes | None:
        """``receive`` for request heads, the hot path: its deadline is kept by ``Deadlines``."""
        fd = self.fd
        if fd < 0:
            return await self.receive(timeout)
        deadlines = self._deadlines
        self.timed_out = False
        deadlines.watch_read(self, trio.current_time() + timeout)
        try:
            while True:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    if self.timed_out:
                        return None
                    raise ClientGone() from None
                except OSError as exc:
                    raise ClientGone() from exc
                try:
                    return os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    continue  # a wakeup with nothing to read: wait on
                except OSError as exc:
                    raise ClientGone() from exc
        finally:
            # Always, cancelled or not: the descriptor may be reused by the
            # next connection once this one closes.
            deadlines.forget_read(self)

    @staticmethod
    async def read_ready(fd: int) -> bytes | None:
        """What the client socket holds now, or None when reading would block.

        Yields to the scheduler after a read, as trio's own receive does, so
        that a client pipelining requests that need no worker (static files,
        errors) cannot starve the others.

        Raises:
            ClientGone: the connection was reset.
        """
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise ClientGone() from exc
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def receive(self, timeout: float) -> bytes | None:
        """The next bytes from the client (b"" at EOF), or None after ``timeout`` seconds of silence.

        Raises:
            ClientGone: the connection was reset.
        """
        fd = self.fd
        if fd >= 0:
            # A body's next bytes are often there already: reading first
            # spares the whole wait (a cancel scope and two epoll changes).
            data = await self.read_ready(fd)
            if data is not None:
                return data
            with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (trio.ClosedResourceError, OSError) as exc:
                    raise ClientGone() from exc
                try:
                    return os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    pass  # a wakeup with nothing to read: wait again below
                except OSError as exc:
                    raise ClientGone() from exc
            if scope.cancelled_caught:
                return None
        with trio.move_on_after(timeout):
            try:
                return await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone() from exc
        return None

    async def send(self, data: bytes) -> None:
        """Send to the client; a client that takes nothing for ``send_timeout`` is gone.

        Raises:
            ClientGone: the connection was reset, or the send timed out.
        """
        if not data:
            return
        fd = self.fd
        if fd >= 0:
            # The socket buffer nearly always has room for a whole answer:
            # write it straight away, and only wait (through trio) for the rest.
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ClientGone() from exc
            if sent == len(data):
                return
            data = data[sent:]
        with trio.move_on_after(self._send_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone() from exc
        if scope.cancelled_caught:
            raise ClientGone()

    def write_now(self, data: bytes) -> int:
        """Write what the socket takes without waiting: the bytes written (-1: the client is gone)."""
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    async def linger(self) -> None:
        """Close our side, then read and drop what the client still sends (nginx's lingering close).

        Closing with unread bytes in the socket makes the kernel answer with a
        reset, which can destroy the response the client has not read yet (a
        413 or an early answer to an upload). Bounded as nginx's
        ``lingering_time`` and ``lingering_timeout``.
        """
        try:
            self.stream.socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
        except OSError:
            return
        with trio.move_on_after(LINGERING_TIME):
            try:
                while await self.receive(LINGERING_TIMEOUT):
                    pass
            except ClientGone:
                pass
