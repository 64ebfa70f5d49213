"""A WSGI app proven quick runs on the loop's thread even with app threads (``worker._inline``)."""

from __future__ import annotations

import threading
import time

import trio

from fcgi_cluster.worker._inline import PROMOTE_AFTER, QUICK_CALL, SMALL_ANSWER, THREAD_WALL, InlinePolicy

from fcgi_cluster.worker import WorkerConfig
from fcgi_cluster.worker._pool_config import parse_pool_config

from ._harness import params, serving


def test_promotion_needs_a_streak_of_quick_small_calls():
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(QUICK_CALL / 10, 100)
    assert not policy.inline
    policy.ran_in_thread(QUICK_CALL * 2, 100)  # one slow call starts the streak again
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(QUICK_CALL / 10, 100)
    assert not policy.inline
    policy.ran_in_thread(QUICK_CALL / 10, -1)  # a streamed answer breaks it too
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(QUICK_CALL / 10, SMALL_ANSWER - 1)
    assert not policy.inline
    policy.ran_in_thread(QUICK_CALL / 10, SMALL_ANSWER - 1)
    assert policy.inline


def test_a_thread_call_quick_in_cpu_counts_as_quick_though_it_waited_for_the_gil():
    slow, cpu = QUICK_CALL * 3, QUICK_CALL / 10
    gil = slow - cpu  # the other threads ran all the while: a wait for the GIL
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(slow, 100, cpu=cpu, others=gil)
    policy.ran_in_thread(THREAD_WALL, 100, cpu=cpu, others=THREAD_WALL)  # waited too long
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(slow, 100, cpu=cpu, others=gil)
    policy.ran_in_thread(slow, 100, cpu=QUICK_CALL, others=gil)  # worked too long
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_in_thread(slow, 100, cpu=cpu, others=gil)
    policy.ran_in_thread(slow, 100, cpu=cpu, others=gil / 2)  # nobody ran for half of it: I/O
    assert not policy.inline
    for _ in range(PROMOTE_AFTER):
        policy.ran_in_thread(slow, 100, cpu=cpu, others=gil)
    assert policy.inline


def test_once_an_inline_call_blocks_thread_calls_are_judged_by_the_wall_clock_alone():
    slow, cpu = QUICK_CALL * 3, QUICK_CALL / 10
    for threads_busy, credited in ((True, True), (False, False)):
        policy = InlinePolicy()
        for _ in range(PROMOTE_AFTER):
            policy.ran_in_thread(0.0, 10)
        began = policy.clock()
        time.sleep(QUICK_CALL * 2)  # blocks (a voluntary switch)
        policy.ran_inline_since(began, 10, threads_busy)
        assert not policy.inline
        for _ in range(policy.needed):
            policy.ran_in_thread(slow, 10, cpu=cpu, others=slow)  # all of it looks like GIL waits
        # A busy pool may explain the switch (a wait for the GIL): the credit stays.
        assert policy.inline is credited


async def test_an_app_that_waits_on_io_in_its_threads_is_never_promoted():
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []

    def app(environ, start_response):
        ran_on.append(threading.get_ident() == loop_thread)
        time.sleep(QUICK_CALL * 2.5)  # a short query: little CPU, and the process idle meanwhile
        start_response("200 OK", [])
        return [b"ok"]

    async with serving(app) as web:
        for _ in range(PROMOTE_AFTER + 8):
            assert (await web.request(params("/"))).body == b"ok"
    assert ran_on == [False] * (PROMOTE_AFTER + 8)


def test_a_slow_or_large_inline_call_demotes_and_the_next_promotion_needs_more():
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER):
        policy.ran_in_thread(0.0, 10)
    policy.ran_inline(QUICK_CALL / 10, 10)
    assert policy.inline
    policy.ran_inline(QUICK_CALL * 5, 10)
    assert not policy.inline and policy.needed == 4 * PROMOTE_AFTER
    for _ in range(4 * PROMOTE_AFTER):
        policy.ran_in_thread(0.0, 10)
    assert policy.inline
    policy.ran_inline(0.0, SMALL_ANSWER)
    assert not policy.inline and policy.needed == 16 * PROMOTE_AFTER


async def test_quick_app_moves_to_the_loop_thread_and_back_to_threads_when_a_call_is_slow():
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []
    slow = {"next": False}

    def app(environ, start_response):
        ran_on.append(threading.get_ident() == loop_thread)
        if slow["next"]:
            slow["next"] = False
            time.sleep(QUICK_CALL * 5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["QUERY_STRING"].encode()]

    async with serving(app) as web:
        for i in range(PROMOTE_AFTER + 3):
            answer = await web.request(params(f"/?n={i}"))
            assert answer.body == f"n={i}".encode() and answer.end.app_status == 0
        assert ran_on[:PROMOTE_AFTER] == [False] * PROMOTE_AFTER
        assert ran_on[PROMOTE_AFTER:] == [True] * 3
        slow["next"] = True
        answer = await web.request(params("/?slow"))
        assert answer.body == b"slow" and ran_on[-1] is True
        answer = await web.request(params("/?after"))
        assert answer.body == b"after" and ran_on[-1] is False  # back in a thread


async def test_with_inline_off_every_call_runs_in_a_thread():
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []

    def app(environ, start_response):
        ran_on.append(threading.get_ident() == loop_thread)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async with serving(app, config=WorkerConfig(threads=8, inline_quick=False)) as web:
        for _ in range(PROMOTE_AFTER + 3):
            assert (await web.request(params("/"))).body == b"ok"
    assert ran_on == [False] * (PROMOTE_AFTER + 3)


def test_the_pool_key_threads_inline_reaches_the_worker_config():
    text = "[www]\nlisten = 127.0.0.1:9000\napp = workers.hello:app\nthreads.inline = no\n"
    pool = parse_pool_config(text, "/etc/pool.conf").pools[0]
    assert pool.worker_config().inline_quick is False
    assert parse_pool_config(text.replace("no", "yes"), "/etc/pool.conf").pools[0].worker_config().inline_quick


async def test_after_promotion_a_request_whose_body_is_still_coming_goes_to_a_thread():
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []

    def app(environ, start_response):
        ran_on.append(threading.get_ident() == loop_thread)
        body = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [body]

    async with serving(app) as web:
        for _ in range(PROMOTE_AFTER + 1):
            await web.request(params("/"))
        assert ran_on[-1] is True
        rid = await web.start(params("/", method="POST", CONTENT_LENGTH="4"), end_body=False)
        await web.send_body(rid, b"ab")
        await web.send_body(rid, b"cd")
        await web.send_body(rid, b"")
        with trio.fail_after(10):
            await web.answers[rid].done.wait()
    assert web.answers[rid].body == b"abcd" and ran_on[-1] is False


async def test_an_inline_app_that_raises_gives_a_500_and_the_next_request_is_served():
    fail = {"now": False}

    def app(environ, start_response):
        if fail["now"]:
            fail["now"] = False
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return [b"ok"]

    async with serving(app) as web:
        for _ in range(PROMOTE_AFTER + 1):
            await web.request(params("/"))
        fail["now"] = True
        answer = await web.request(params("/"))
        assert answer.status == 500 and b"boom" not in answer.stdout
        answer = await web.request(params("/"))
        assert answer.body == b"ok"


def test_an_inline_call_slow_from_blocking_or_from_work_demotes():
    for stall in (lambda: time.sleep(QUICK_CALL * 3), lambda: _spin(QUICK_CALL * 3)):
        policy = InlinePolicy()
        for _ in range(PROMOTE_AFTER):
            policy.ran_in_thread(0.0, 10)
        began = policy.clock()
        assert policy.inline
        stall()
        policy.ran_inline_since(began, 10)
        assert not policy.inline


def test_a_quick_inline_call_keeps_the_app_inline():
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER):
        policy.ran_in_thread(0.0, 10)
    for _ in range(20):
        policy.ran_inline_since(policy.clock(), 10)
    assert policy.inline


def test_short_calls_that_were_only_preempted_keep_the_app_inline():
    # Each call works 0.3 ms and is made to look preempted (its wall clock
    # started 3 ms ago). The CPU reading must be exact: getrusage's per-thread
    # figure moves in scheduler ticks and read such calls as 3-4 ms of CPU.
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER):
        policy.ran_in_thread(0.0, 10)
    # The switch count is set out of reach: this test is about the CPU reading
    # (other threads of the test process, wanting the GIL, can make one).
    for _ in range(300):
        wall, cpu, switches = policy.clock()
        _spin(0.0003)
        policy.ran_inline_since((wall - QUICK_CALL * 1.5, cpu, switches + 10**9), 10)
        assert policy.inline


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
