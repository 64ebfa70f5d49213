"""A slow consumer of one answer never holds up the other requests on its connection.

The worker here is the in-process fake (our real ServerConnection over
loopback TCP); it writes a large answer at full speed while the test's
consumer reads none of it, and sends a neighbour's answer behind it.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from fcgi_cluster.client import Buffering, ResponseOverflow, open_connection
from fcgi_cluster.client._buffer import SpillFile
from fcgi_cluster.protocol import AbortRequest, EndRequest, Stdout
from tests.client._fake_worker import Peer, fake_worker, ok

PARAMS = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/"}

#: A body no socket buffer holds: past the memory bound, into the file.
BIG = os.urandom(3 * 1024 * 1024 + 12345)


def tagged(tag: str) -> dict[str, str]:
    return {**PARAMS, "TAG": tag}


def big_then_small(big: bytes):
    """A worker: the first request gets ``big`` in 32 KiB records, the second a small answer after it."""

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        first = await peer.next_request()
        assert first is not None
        rid = first[0].request_id
        await peer.send(Stdout(rid, ok(b"")))
        second = await peer.next_request()
        assert second is not None
        for at in range(0, len(big), 32768):
            await peer.send(Stdout(rid, big[at:at + 32768]))
        await peer.send(EndRequest(rid))
        await peer.respond(second[0].request_id, ok(b"small"))

    return handler


def endless_then_small(aborts: list[int]):
    """A worker: the first request's answer goes on until the client aborts it; then the second is answered.

    The answer is what a worker that streams sends (an export, a feed): it
    has no end of its own, so only ABORT_REQUEST stops it.
    """

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        first = await peer.next_request()
        assert first is not None
        rid = first[0].request_id
        await peer.send(Stdout(rid, ok(b"")))
        second = await peer.next_request()
        assert second is not None
        aborted = trio.Event()

        async def watch() -> None:
            while True:
                event = await peer.next_event()
                if isinstance(event, AbortRequest):
                    aborts.append(event.request_id)
                    aborted.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.move_on_after(15):
                while not aborted.is_set():
                    await peer.send(Stdout(rid, b"z" * 32768))
            await peer.send(EndRequest(rid))
            await peer.respond(second[0].request_id, ok(b"small"))
            await aborted.wait()

    return handler


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


async def test_a_consumer_that_reads_nothing_does_not_stall_its_neighbour() -> None:
    async with fake_worker(big_then_small(BIG)) as address, open_connection(address) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big")) as big:
                # Nothing of the big answer is read, yet the small one, sent
                # behind all of it on the same connection, arrives.
                small = await conn.request(tagged("small"))
                assert small.body == b"small"
                state = big._state
                assert state.finished
                assert state.buffered <= Buffering().memory
                assert state.spill is not None and state.spill.pending > len(BIG) // 2
                got = b"".join([chunk async for chunk in big])
    assert hashlib.sha256(got).digest() == hashlib.sha256(BIG).digest()


async def test_the_temporary_file_lives_as_long_as_the_answer(tmp_path) -> None:
    before = open_fds()
    buffering = Buffering(memory=64 * 1024, temp_path=str(tmp_path))
    async with fake_worker(big_then_small(BIG)) as address, open_connection(address, buffering=buffering) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big")) as big:
                await conn.request(tagged("small"))
                spill = big._state.spill
                assert spill is not None
                fd = spill._fd
                assert fd in open_fds() - before
                # Unlinked from the start: nothing in the directory, the
                # descriptor points at a deleted file in it.
                assert list(tmp_path.iterdir()) == []
                assert os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
                await big.__anext__()  # read a little, then give up
            assert big._state.spill is None
            assert fd not in open_fds() or os.readlink(f"/proc/self/fd/{fd}").find(str(tmp_path)) < 0


async def test_past_the_file_bound_that_request_alone_is_aborted() -> None:
    aborts: list[int] = []
    buffering = Buffering(memory=64 * 1024, max_file=512 * 1024)
    async with fake_worker(endless_then_small(aborts)) as address, open_connection(address) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big"), buffering=buffering) as big:
                assert (await conn.request(tagged("small"))).body == b"small"
                with pytest.raises(ResponseOverflow, match="max_temp_file_size"):
                    async for _ in big:
                        pass
                assert big._state.spill is None  # dropped at once, not when the block ends
            while not aborts:
                await trio.sleep(0.01)
        assert aborts == [1]
        assert conn.is_usable


async def test_without_a_file_the_memory_bound_aborts() -> None:
    aborts: list[int] = []
    async with fake_worker(endless_then_small(aborts)) as address, open_connection(address) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big"), buffering=Buffering(memory=100_000, max_file=0)) as big:
                assert (await conn.request(tagged("small"))).body == b"small"
                with pytest.raises(ResponseOverflow, match="no temporary file"):
                    async for _ in big:
                        pass
            while not aborts:
                await trio.sleep(0.01)
        assert aborts == [1]


async def test_wait_mode_holds_the_reader_instead_of_spilling() -> None:
    """``Buffering.wait``, for a connection the request has alone: the worker is slowed, nothing spills."""
    sent = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal sent
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        rid = got[0].request_id
        await peer.send(Stdout(rid, ok(b"")))
        for at in range(0, len(BIG), 32768):
            await peer.send(Stdout(rid, BIG[at:at + 32768]))
            sent = at + 32768
        await peer.send(EndRequest(rid))

    buffering = Buffering(memory=64 * 1024, wait=True)
    async with fake_worker(handler) as address, open_connection(address, buffering=buffering) as conn:
        with trio.fail_after(20):
            async with conn.stream(PARAMS) as response:
                await trio.sleep(0.3)
                # The worker could send only what the socket buffers and our
                # memory bound hold.
                assert sent < len(BIG) // 2
                assert response._state.spill is None
                got = b"".join([chunk async for chunk in response])
    assert got == BIG


async def test_a_callback_sees_records_read_together_once() -> None:
    """A caller without a task (the front-end's callback answers) is called once per read, not per record."""
    calls: list[tuple[int, bool]] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        rid = got[0].request_id
        await peer.send(Stdout(rid, ok(b"a")), Stdout(rid, b"b"), Stdout(rid, b"c"), EndRequest(rid))
        await trio.sleep_forever()

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            response = conn.start_request(PARAMS)
            state = response._state
            done = trio.Event()

            def callback() -> None:
                calls.append((len(state.chunks), state.finished))
                if state.finished:
                    done.set()

            state.callback = callback
            await done.wait()
            assert calls == [(3, True)]
            assert response.head_ready()
            assert response.take_ready() == b"a"
            response.close()


def test_spill_file_reads_back_in_order_and_empties(tmp_path) -> None:
    spill = SpillFile(str(tmp_path))
    try:
        spill.write(b"x" * 100_000)
        spill.write(b"yz")
        assert spill.pending == 100_002
        first = spill.read(65536)
        assert first == b"x" * 65536
        assert spill.read(30_000) + spill.read() == b"x" * (100_000 - 65536) + b"yz"
        assert spill.pending == 0 and spill.size == 0  # written over from the start once drained
        assert spill.read() == b""
        spill.write(b"again")
        assert spill.read() == b"again"
    finally:
        spill.close()
    spill.close()  # twice is harmless


def test_a_drained_spill_file_keeps_small_pages_and_gives_large_ones_back(tmp_path) -> None:
    from fcgi_cluster.client._buffer import SPILL_KEEP

    spill = SpillFile(str(tmp_path))
    try:
        spill.write(b"a" * 1000)
        assert spill.read() == b"a" * 1000
        assert os.fstat(spill._fd).st_size == 1000  # kept, written over next
        spill.write(b"b" * 10)
        assert os.fstat(spill._fd).st_size == 1000 and spill.read() == b"b" * 10
        spill.write(b"c" * (SPILL_KEEP + 1))
        while spill.pending:
            spill.read()
        assert os.fstat(spill._fd).st_size == 0  # past SPILL_KEEP: disk given back
    finally:
        spill.close()


async def test_a_consumer_that_keeps_up_gets_a_large_answer_without_a_file() -> None:
    """The reader lets the caller take its turn before spilling: a caller that keeps up never meets the disk."""
    async with fake_worker(big_then_small(BIG)) as address, open_connection(address) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big")) as big:
                small = conn.start_request(tagged("small"))
                got = bytearray()
                async for chunk in big:
                    got += chunk
                    assert big._state.spill is None
                small.close()
    assert bytes(got) == BIG


async def test_an_answer_borrows_from_the_pool_before_the_file_and_gives_it_back() -> None:
    from fcgi_cluster.client._buffer import MemoryPool

    pool = MemoryPool(limit=1024 * 1024, per_request=512 * 1024)
    buffering = Buffering(memory=64 * 1024, pool=pool)
    async with fake_worker(big_then_small(BIG)) as address, open_connection(address, buffering=buffering) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big")) as big:
                await conn.request(tagged("small"))
                state = big._state
                # Its own 64 KiB, then at most per_request borrowed, then the file.
                assert 512 * 1024 - 65536 <= state.borrowed <= 512 * 1024 == pool.used
                assert state.buffered <= 64 * 1024 + 512 * 1024 + 65536
                assert state.spill is not None and state.spill.pending
                got = bytearray()
                async for chunk in big:
                    got += chunk
                # Read to the end: everything borrowed is back.
                assert pool.used == 0 and state.borrowed == 0
    assert bytes(got) == BIG
    async with fake_worker(big_then_small(BIG)) as address, open_connection(address, buffering=buffering) as conn:
        with trio.fail_after(20):
            async with conn.stream(tagged("big")):
                await conn.request(tagged("small"))
                assert pool.used == 512 * 1024
            # Given up without reading: given back all the same.
            assert pool.used == 0
