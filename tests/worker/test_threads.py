"""The app thread pool: when it grows, and the load measure it grows by."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from fcgi_cluster.worker._threads import ThreadPool, process_busy_time, waits_for_loop

PATIENCE = 0.01


def test_process_busy_time_counts_running_threads_not_sleeping_ones() -> None:
    first = process_busy_time()
    if first is None:
        pytest.skip("this kernel keeps no per-thread schedstat (/proc/self/task/*/schedstat)")
    spin_until = time.perf_counter() + 0.2
    while time.perf_counter() < spin_until:
        pass
    spun = process_busy_time()
    time.sleep(0.2)
    slept = process_busy_time()
    assert spun - first >= 0.15
    assert slept - spun < 0.05


async def _blocked_then_queued(pool: ThreadPool, wait: float) -> tuple[bool, int, threading.Event]:
    """A job blocked on an event, then a second job: did the second start within ``wait``?"""
    release = threading.Event()
    second = threading.Event()
    pool.start(release.wait)
    await trio.sleep(PATIENCE)  # the first job holds its thread
    pool.start(second.set)
    deadline = trio.current_time() + wait
    while not second.is_set() and trio.current_time() < deadline:
        await trio.sleep(PATIENCE / 2)
    return second.is_set(), pool.threads, release


async def test_a_blocked_thread_gets_a_second_one_when_the_process_leaves_the_cpu_idle() -> None:
    pool = ThreadPool(4, patience=PATIENCE, busy_time=lambda: 0.0)  # nothing ever ran: idle
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.watch)
        started, threads, release = await _blocked_then_queued(pool, wait=1.0)
        release.set()
        nursery.cancel_scope.cancel()
    pool.close()
    assert started and threads == 2


async def test_a_stalled_thread_gets_no_second_one_while_the_process_is_busy() -> None:
    # Busy time growing as fast as the clock: the process's threads always ran or
    # waited for a CPU, so the first job is slow to run, not blocked.
    pool = ThreadPool(4, patience=PATIENCE, busy_time=time.monotonic)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.watch)
        started, threads, release = await _blocked_then_queued(pool, wait=20 * PATIENCE)
        release.set()
        with trio.fail_after(5):
            while pool._jobs:  # the one thread takes the second job once free
                await trio.sleep(PATIENCE / 2)
        nursery.cancel_scope.cancel()
    pool.close()
    assert not started and threads == 1


async def test_a_thread_waiting_for_the_loop_gets_a_second_one_even_while_the_process_is_busy() -> None:
    # Waiting for a body's next bytes or for room for output is waiting on the
    # network, however busy the loop is: queued work must not wait behind it.
    pool = ThreadPool(4, patience=PATIENCE, busy_time=time.monotonic)
    release = threading.Event()
    second = threading.Event()

    def waits() -> None:
        with waits_for_loop:
            release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.watch)
        pool.start(waits)
        await trio.sleep(PATIENCE)
        pool.start(second.set)
        with trio.fail_after(1):
            while not second.is_set():
                await trio.sleep(PATIENCE / 2)
        release.set()
        nursery.cancel_scope.cancel()
    pool.close()
    assert pool.threads == 2


async def test_a_burst_of_short_jobs_runs_on_one_thread() -> None:
    # Before, a job queued while the thread was busy and nothing had finished for
    # ``patience`` (a first burst, a burst after a pause) woke one more thread each.
    pool = ThreadPool(16, patience=PATIENCE)
    done = []

    def job(number: int) -> None:
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        done.append(number)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.watch)
        for burst in range(3):
            for number in range(100):
                pool.start(job, number)
            with trio.fail_after(10):
                while len(done) < 100 * (burst + 1):
                    await trio.sleep(PATIENCE / 2)
            await trio.sleep(5 * PATIENCE)  # a pause longer than the patience
        nursery.cancel_scope.cancel()
    pool.close()
    assert len(done) == 300 and pool.threads == 1


async def test_results_a_thread_hands_over_together_wake_the_loop_once_and_arrive_in_order() -> None:
    from fcgi_cluster.worker._threads import Handoff, _Deliveries

    deliveries = _Deliveries.current()
    token = deliveries._token
    calls = []

    class CountingToken:
        def run_sync_soon(self, fn, *args):
            calls.append(fn)
            token.run_sync_soon(fn, *args)

    deliveries._token = CountingToken()  # type: ignore[assignment]
    try:
        handoffs = [Handoff() for _ in range(50)]
        received: list[tuple[int, int]] = []

        async def receive(index: int) -> None:
            received.append((index, await handoffs[index].receive()))

        def deliver_all() -> None:
            # One thread's turn: every result before the loop runs again.
            for index, handoff in enumerate(handoffs):
                handoff.deliver(index * 10)

        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(receive, index)
            await trio.testing.wait_all_tasks_blocked()
            await trio.to_thread.run_sync(deliver_all)
    finally:
        deliveries._token = token  # type: ignore[assignment]
    assert sorted(received) == [(index, index * 10) for index in range(50)]
    # The loop could not run the first flush while the thread held on:
    # far fewer wake-ups than values (one when nothing interleaves).
    assert 1 <= len(calls) < 10
