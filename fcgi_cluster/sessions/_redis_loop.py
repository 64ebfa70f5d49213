"""The ``redis`` store on a worker's trio loop: pipelined, for sessions loaded and saved there.

``LoopRedisStore`` has the store methods a session's load and save use
(``lock_and_read``, ``read``, ``write``, ``write_and_release``, ``touch``,
``touch_and_release``, ``release_lock``, ``destroy``, ``gc``) as coroutines, with
the same keys, commands and Lua scripts as ``RedisStore`` (so phpredis still
shares every session), and the same errors (``StoreError``, ``LockTimeout``).

Why on the loop: a blocking client costs each request two round trips from its
app thread, each a send and a receive system call plus redis-py's machinery, and
a thread blocked on Redis makes the pool grow. Here every request of the process
shares one connection per server: a command is queued and the caller parks; a
writer task sends everything queued in one ``send`` (the commands of all the
requests that ran since it last woke), and a reader task matches replies to
callers in order (Redis answers a connection's commands in order). Under load a
system call carries many requests' commands or replies.

Resource handling: one connection per server, opened on first use (AUTH and
SELECT first), kept until it fails or the store is closed; its reader and writer
run in the nursery given to the store. A failed connection (reset, closed,
garbage, no reply in time) fails the commands waiting on it and is dropped; the
next command opens a new one.

Error handling: as ``RedisStore``: a command lost with a connection is retried
once on a new one (a connection Redis closed while idle); a timeout or a reply
that is not RESP is not retried. A caller cancelled while its command is out leaves the connection in
step (its reply is read and dropped); a lock it took meanwhile is released when
that reply arrives, so an aborted request does not leave its session locked.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any, Callable

import hiredis
import outcome
import trio

from ._redis_scripts import (
    LOCK_READ_SCRIPT,
    LOCK_SUFFIX,
    RELEASE_SCRIPT,
    TOUCH_RELEASE_SCRIPT,
    WRITE_RELEASE_SCRIPT,
    failure_reason,
    greeting_words,
    lock_value,
    pick_server,
    server_greeting,
)
from ._redis_lease import LEASE, LEASE_TOUCH_RELEASE_SCRIPT, LEASE_WRITE_RELEASE_SCRIPT, RENEW_SCRIPT, lapsed_save
from ._save_path import RedisServer
from ._store import LockTimeout, LockToken, StoreError

__all__ = ["LoopRedisStore"]

#: Bytes asked of the socket per read: the replies of many small sessions at once,
#: and under glibc's mmap threshold, so a read's buffer is a plain allocation.
RECV_SIZE = 64 * 1024


class _Lost(Exception):
    """The connection failed before this command's reply came (retried once)."""


class _Script:
    """A Lua script run with EVALSHA, and EVAL when the server does not have it yet."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


_LOCK_READ = _Script(LOCK_READ_SCRIPT)
_WRITE_RELEASE = _Script(WRITE_RELEASE_SCRIPT)
_TOUCH_RELEASE = _Script(TOUCH_RELEASE_SCRIPT)
_RELEASE = _Script(RELEASE_SCRIPT)
_RENEW = _Script(RENEW_SCRIPT)
_LEASE_WRITE_RELEASE = _Script(LEASE_WRITE_RELEASE_SCRIPT)
_LEASE_TOUCH_RELEASE = _Script(LEASE_TOUCH_RELEASE_SCRIPT)


class _Waiter:
    """A command whose reply is due: the task parked for it (None once it gave up)."""

    __slots__ = ("task", "deadline", "on_orphan")

    def __init__(self, task: Any, deadline: float, on_orphan: Callable[[Any], None] | None) -> None:
        self.task = task
        self.deadline = deadline
        self.on_orphan = on_orphan


class _Pipeline:
    """One connection: commands written in batches by a writer task, replies matched in order."""

    def __init__(self, sock: trio.socket.SocketType, where: str) -> None:
        self.sock = sock
        self.where = where
        self.out: list[bytes] = []
        self.waiters: deque[_Waiter] = deque()
        self.writer: Any = None  # the writer task while it waits for commands
        self.failure: str | None = None
        self.scope = trio.CancelScope()  # both tasks'; cancelled when the connection fails
        self.read_scope = trio.CancelScope()

    def submit(self, packed: bytes, deadline: float, task: Any, on_orphan: Callable[[Any], None] | None = None) -> _Waiter:
        """Queue a command; its reply goes to ``task`` (None: dropped)."""
        if self.failure is not None:
            raise _Lost(self.failure)
        waiter = _Waiter(task, deadline, on_orphan)
        if not self.waiters:
            self.read_scope.deadline = deadline
        self.waiters.append(waiter)
        self.out.append(packed)
        writer = self.writer
        if writer is not None:
            self.writer = None
            trio.lowlevel.reschedule(writer)
        return waiter

    async def call(self, packed: bytes, timeout: float, on_orphan: Callable[[Any], None] | None = None) -> Any:
        """Send one command and wait for its reply (an error reply is returned, not raised).

        Raises:
            _Lost: the connection failed first.
            StoreError: no reply within ``timeout`` (the connection is dropped).
        """
        waiter = self.submit(packed, trio.current_time() + timeout, trio.lowlevel.current_task(), on_orphan)

        def abort(_: Any) -> trio.lowlevel.Abort:
            waiter.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """The reader and the writer, until the connection fails or the store closes."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    await self._read_loop()
        finally:
            self.fail(self.failure or "connection closed")
            self.sock.close()

    def fail(self, reason: str, *, retry: bool = True) -> None:
        """Drop the connection: every command waiting on it fails with ``reason``.

        ``retry``: whether they may be sent again on a new connection (``_Lost``)
        or fail for good (``StoreError``: the server did not answer in time, or
        sent what is not RESP).
        """
        if self.failure is None:
            self.failure = reason
        self.scope.cancel()
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if waiter.task is not None:
                error = _Lost(reason) if retry else StoreError(reason)
                trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    async def _write_loop(self) -> None:
        sock = self.sock
        fd = sock.fileno()
        while True:
            if not self.out:
                self.writer = trio.lowlevel.current_task()

                def abort(_: Any) -> trio.lowlevel.Abort:
                    self.writer = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            data = b"".join(self.out)
            self.out.clear()
            try:
                # The socket nearly always takes the whole batch: written at
                # once, without the checkpoint of trio's send; the rest waits.
                try:
                    view = memoryview(data)[os.write(fd, data):]
                except BlockingIOError:
                    view = memoryview(data)
                while view:
                    view = view[await sock.send(view):]
            except OSError as exc:
                self.fail(f"redis {self.where}: connection failed: {exc.strerror or exc}")
                return

    async def _read_loop(self) -> None:
        fd = self.sock.fileno()
        reader = hiredis.Reader()
        waiters = self.waiters
        while True:
            self.read_scope = scope = trio.CancelScope(deadline=waiters[0].deadline if waiters else math.inf)
            with scope:
                try:
                    # As sock.recv, without its checkpoint after a read.
                    await trio.lowlevel.wait_readable(fd)
                    try:
                        data = os.read(fd, RECV_SIZE)
                    except BlockingIOError:
                        continue  # a wakeup with nothing to read: wait again
                except OSError as exc:
                    self.fail(f"redis {self.where}: connection failed: {exc.strerror or exc}")
                    return
            if scope.cancelled_caught:
                self.fail(f"redis {self.where}: timed out", retry=False)
                return
            if not data:
                self.fail(f"redis {self.where}: connection closed by the server")
                return
            reader.feed(data)
            while True:
                try:
                    reply = reader.gets()
                except hiredis.ProtocolError as exc:
                    self.fail(f"redis {self.where}: protocol error: {exc}", retry=False)
                    return
                if reply is False:
                    break
                if not waiters:
                    self.fail(f"redis {self.where}: protocol error: a reply nothing asked for", retry=False)
                    return
                waiter = waiters.popleft()
                if waiter.task is not None:
                    trio.lowlevel.reschedule(waiter.task, outcome.Value(reply))
                elif waiter.on_orphan is not None:
                    waiter.on_orphan(reply)


def _reply_error(where: str, reply: hiredis.ReplyError) -> StoreError:
    # The blocking store's wording (wrong password, ACL, ...): it reads the reply's text.
    # A protected-mode DENIED comes unprompted, before any command: read as the first reply.
    text = str(reply)
    said = greeting_words(text) if text.startswith("DENIED") else None
    return StoreError(f"redis {where}: {failure_reason(reply, said)}")


async def _lost_error(where: str, exc: _Lost) -> StoreError:
    """The error of a command lost with its connection: in the server's words when it said any.

    A server that refuses a connection (protected mode, maxclients) says why and
    closes; a client whose command is on its way meanwhile sees only a reset.
    """
    said = None
    if "connection" in str(exc):
        said = await trio.to_thread.run_sync(server_greeting, where)
    return StoreError(f"redis {where}: {failure_reason(exc, said)}" if said is not None else str(exc))


class _LoopServer:
    """One Redis server of a loop store: its address, credentials and connection."""

    def __init__(self, server: RedisServer, default_timeout: float, nursery: trio.Nursery) -> None:
        self.server = server
        self.where = server.describe()
        self.prefix = server.prefix
        self.connect_timeout = server.timeout if server.timeout is not None else default_timeout
        self.timeout = server.read_timeout if server.read_timeout is not None else self.connect_timeout
        self.nursery = nursery
        self.pipeline: _Pipeline | None = None
        self.connecting = trio.Lock()

    async def _open(self) -> _Pipeline:
        async with self.connecting:
            pipeline = self.pipeline
            if pipeline is not None and pipeline.failure is None:
                return pipeline
            server = self.server
            try:
                with trio.fail_after(self.connect_timeout):
                    if server.unix_path is not None:
                        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        address: Any = server.unix_path
                    else:
                        infos = await trio.socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
                        family, kind, proto, _, address = infos[0]
                        sock = trio.socket.socket(family, kind, proto)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    try:
                        await sock.connect(address)
                    except BaseException:
                        sock.close()
                        raise
            except trio.TooSlowError:
                raise StoreError(f"redis {self.where}: timed out") from None
            except OSError as exc:
                reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else \
                    f"connection failed: {exc.strerror or exc}"
                raise StoreError(f"redis {self.where}: {reason}") from None
            pipeline = _Pipeline(sock, self.where)
            self.nursery.start_soon(pipeline.run)
            hello: list[tuple[Any, ...]] = []
            if server.password is not None:
                hello.append(("AUTH", server.password) if server.username is None
                             else ("AUTH", server.username, server.password))
            if server.database:
                hello.append(("SELECT", server.database))
            try:
                for command in hello:
                    reply = await pipeline.call(hiredis.pack_command(command), self.connect_timeout)
                    if isinstance(reply, hiredis.ReplyError):
                        raise _reply_error(self.where, reply)
            except _Lost as exc:
                pipeline.fail(str(exc))
                raise await _lost_error(self.where, exc) from None
            except BaseException:
                pipeline.fail("connection closed")
                raise
            self.pipeline = pipeline
            return pipeline

    async def call(self, command: Sequence[Any], on_orphan: Callable[[Any], None] | None = None) -> Any:
        """Run ``command``; its reply (an error reply raises ``StoreError``).

        Raises:
            StoreError: the server cannot be used, or answered an error.
        """
        packed = hiredis.pack_command(tuple(command))
        for attempt in (1, 2):
            pipeline = self.pipeline
            if pipeline is None or pipeline.failure is not None:
                pipeline = await self._open()
            try:
                reply = await pipeline.call(packed, self.timeout, on_orphan)
            except _Lost as exc:
                if attempt == 2:
                    raise await _lost_error(self.where, exc) from None
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise _reply_error(self.where, reply)
            return reply
        raise AssertionError("unreachable")

    async def script(self, script: _Script, keys: Sequence[str], args: Sequence[Any],
                     on_orphan: Callable[[Any], None] | None = None) -> Any:
        """EVALSHA ``script``; EVAL when the server does not know it (which also loads it)."""
        try:
            return await self.call(("EVALSHA", script.sha, len(keys), *keys, *args), on_orphan)
        except StoreError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
        return await self.call(("EVAL", script.text, len(keys), *keys, *args), on_orphan)

    def release_soon(self, lock_key: str, token: LockToken) -> None:
        """Queue the lock's release, waiting for nothing (from the reader: no await)."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.failure is not None:
            return  # the lock expires by itself
        command = ("EVALSHA", _RELEASE.sha, 1, lock_key, token)
        pipeline.submit(hiredis.pack_command(command), math.inf, None)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.fail("the store was closed")


class LoopRedisStore:
    """The session methods of a ``RedisStore`` as coroutines, on the running trio loop.

    Args:
        servers: the save_path's servers (TCP or unix socket; not TLS, not Sentinel).
        default_timeout: connect and command timeout where the save_path sets none.
        nursery: where the connections' reader and writer tasks run; it must
            outlive the requests that use the store.
    """

    def __init__(self, servers: Sequence[RedisServer], default_timeout: float, nursery: trio.Nursery) -> None:
        self._servers = [_LoopServer(server, default_timeout, nursery) for server in servers]
        self._weights = [server.weight for server in servers]
        self._single = self._servers[0] if len(self._servers) == 1 else None
        self._nursery = nursery
        #: Leased locks held (``_redis_lease``): (server, lock key, token) -> renew until (trio time).
        self._leases: dict[tuple[_LoopServer, str, LockToken], float] = {}
        self._renewing = False
        #: Ends the renewals on close(), so the nursery can finish.
        self._renew_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"LoopRedisStore({', '.join(server.where for server in self._servers)})"

    def _server(self, sid: str) -> _LoopServer:
        return self._single or self._servers[pick_server(sid, self._weights)]

    async def lock_and_read(
        self, sid: str, *, expire: float, wait: float, retry_interval: float
    ) -> tuple[LockToken, bytes | None]:
        """``RedisStore.lock_and_read``: the lock (phpredis' SET NX PX) and the data, one round trip a try.

        Raises:
            LockTimeout: someone else held the lock for all of ``wait``.
            StoreError: Redis cannot be used.
        """
        server = self._server(sid)
        key = server.prefix + sid
        lock_key = key + LOCK_SUFFIX
        token = lock_value()
        leased = expire > LEASE
        args = (token, max(1, int(min(expire, LEASE) * 1000)))

        def orphaned(reply: Any) -> None:
            # The caller gave up while the lock was being taken: let it go.
            if isinstance(reply, list):
                server.release_soon(lock_key, token)

        deadline = trio.current_time() + wait
        while True:
            reply = await server.script(_LOCK_READ, (key, lock_key), args, orphaned)
            if reply != 0:
                if leased:
                    self._hold(server, lock_key, token, expire)
                return token, reply[0] if reply else None
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise LockTimeout(f"session {sid} is locked by another request (waited {wait:g}s)")
            await trio.sleep(min(retry_interval, remaining))

    async def read(self, sid: str) -> bytes | None:
        """``GET <prefix><sid>``."""
        server = self._server(sid)
        return await server.call(("GET", server.prefix + sid))

    async def write(self, sid: str, data: bytes, ttl: int) -> None:
        """``SETEX <prefix><sid> ttl data``."""
        server = self._server(sid)
        await server.call(("SETEX", server.prefix + sid, max(1, int(ttl)), data))

    async def touch(self, sid: str, ttl: int) -> None:
        """``EXPIRE <prefix><sid> ttl``."""
        server = self._server(sid)
        await server.call(("EXPIRE", server.prefix + sid, max(1, int(ttl))))

    async def destroy(self, sid: str) -> None:
        """``DEL <prefix><sid>``."""
        server = self._server(sid)
        await server.call(("DEL", server.prefix + sid))

    async def gc(self, max_lifetime: int) -> int:
        """Nothing to do: Redis expires session keys itself."""
        return 0

    def _hold(self, server: _LoopServer, lock_key: str, token: LockToken, expire: float) -> None:
        self._leases[(server, lock_key, token)] = trio.current_time() + expire
        if not self._renewing:
            self._renewing = True
            self._nursery.start_soon(self._renew_loop)

    async def _renew_loop(self) -> None:
        # As _redis_lease.Leases, on the loop: every lease/3, a compare-and-PEXPIRE
        # per held lock; one past lock_expire or lost is kept (its save must
        # check) but no longer renewed (-inf).
        with self._renew_scope:
            await self._renew_rounds()

    async def _renew_rounds(self) -> None:
        leases = self._leases
        while True:
            await trio.sleep(LEASE / 3)
            now = trio.current_time()
            for key, until in list(leases.items()):
                if now >= until:
                    if key in leases:
                        leases[key] = -math.inf
                    continue
                server, lock_key, token = key
                try:
                    renewed = await server.script(_RENEW, (lock_key,), (token, int(LEASE * 1000)))
                except StoreError:
                    continue  # Redis away for now: next round
                if not renewed and key in leases:
                    leases[key] = -math.inf

    async def release_lock(self, sid: str, token: LockToken) -> None:
        """phpredis' compare-and-delete script."""
        server = self._server(sid)
        lock_key = server.prefix + sid + LOCK_SUFFIX
        self._leases.pop((server, lock_key, token), None)
        await server.script(_RELEASE, (lock_key,), (token,))

    async def _save_and_release(self, sid: str, plain: _Script, leased: _Script, args: tuple[Any, ...],
                                token: LockToken) -> None:
        server = self._server(sid)
        key = server.prefix + sid
        was_leased = self._leases.pop((server, key + LOCK_SUFFIX, token), None) is not None
        reply = await server.script(leased if was_leased else plain, (key, key + LOCK_SUFFIX), (token, *args))
        if reply == -1:
            raise StoreError(lapsed_save(server.where, sid))

    async def write_and_release(self, sid: str, data: bytes, ttl: int, token: LockToken) -> None:
        """``SETEX`` and the lock's release in one round trip, as ``RedisStore``'s."""
        await self._save_and_release(sid, _WRITE_RELEASE, _LEASE_WRITE_RELEASE, (max(1, int(ttl)), data), token)

    async def touch_and_release(self, sid: str, ttl: int, token: LockToken) -> None:
        """``EXPIRE`` and the lock's release in one round trip, as ``RedisStore``'s."""
        await self._save_and_release(sid, _TOUCH_RELEASE, _LEASE_TOUCH_RELEASE, (max(1, int(ttl)),), token)

    def close(self) -> None:
        """Drop every connection (commands waiting fail with ``StoreError``)."""
        self._renew_scope.cancel()
        for server in self._servers:
            server.close()
