"""The leaky bucket of limit_req, limit_conn's counts and the log throttle, on a clock the test sets."""

from __future__ import annotations

import math

import pytest

from fcgi_cluster.frontend.edge._limits import Concurrency, LogThrottle, RequestRate, request_key


def served_at_once(zone: RequestRate, count: int, now: float, burst: int, delay: float = 0.0) -> list[float | None]:
    return [zone.take(b"k", now, burst, delay) for _ in range(count)]


def test_a_burst_of_requests_at_one_instant_passes_rate_plus_burst_and_refuses_the_rest() -> None:
    zone = RequestRate(rate=10, max_keys=100)
    results = served_at_once(zone, 10, now=100.0, burst=5)
    # nginx: the first is served, the burst waits its turn (0.1 s apart at 10 r/s), the rest are refused.
    assert results[:6] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert results[6:] == [None] * 4


def test_nodelay_serves_the_burst_at_once_and_refuses_the_same_number() -> None:
    zone = RequestRate(rate=10, max_keys=100)
    results = served_at_once(zone, 10, now=5.0, burst=5, delay=math.inf)
    assert results == [0.0] * 6 + [None] * 4


def test_delay_serves_that_many_at_once_then_delays_the_rest_of_the_burst() -> None:
    zone = RequestRate(rate=10, max_keys=100)
    results = served_at_once(zone, 8, now=5.0, burst=5, delay=3)
    assert results[:4] == [0.0] * 4
    assert results[4:6] == pytest.approx([0.1, 0.2])
    assert results[6:] == [None, None]


def test_the_bucket_drains_at_the_rate() -> None:
    zone = RequestRate(rate=2, max_keys=100)  # one request every 0.5 s
    assert zone.take(b"k", 0.0, burst=0) == 0.0
    assert zone.take(b"k", 0.2, burst=0) is None  # too soon; not counted
    assert zone.take(b"k", 0.5, burst=0) == 0.0
    assert zone.take(b"k", 0.9, burst=0) is None
    assert zone.take(b"k", 1.0, burst=0) == 0.0
    # Idle for long: the excess never goes below empty, so no credit is saved up.
    assert zone.take(b"k", 100.0, burst=0) == 0.0
    assert zone.take(b"k", 100.0, burst=0) is None


def test_a_refused_request_is_not_counted() -> None:
    zone = RequestRate(rate=1, max_keys=100)
    assert zone.take(b"k", 0.0, burst=1, delay=math.inf) == 0.0
    assert zone.take(b"k", 0.0, burst=1, delay=math.inf) == 0.0
    for _ in range(50):
        assert zone.take(b"k", 0.5, burst=1, delay=math.inf) is None
    # Had the refusals counted, the bucket would still be full at 1.5 s.
    assert zone.take(b"k", 1.5, burst=1, delay=math.inf) == 0.0


def test_keys_have_buckets_of_their_own() -> None:
    zone = RequestRate(rate=1, max_keys=100)
    assert zone.take(b"a", 0.0, burst=0) == 0.0
    assert zone.take(b"a", 0.0, burst=0) is None
    assert zone.take(b"b", 0.0, burst=0) == 0.0


def test_memory_is_bounded_by_max_keys_forgetting_the_least_recently_seen() -> None:
    zone = RequestRate(rate=1, max_keys=3)
    for key in (b"a", b"b", b"c"):
        zone.take(key, 0.0, burst=0)
    zone.take(b"a", 0.0, burst=0)  # a is now the most recently seen
    zone.take(b"d", 0.0, burst=0)  # b goes
    assert len(zone) == 3
    assert zone.take(b"a", 0.0, burst=0) is None  # remembered: still full
    assert zone.take(b"b", 0.0, burst=0) == 0.0  # forgotten: a new bucket
    for number in range(1000):
        zone.take(b"%d" % number, 1.0, burst=0)
    assert len(zone) == 3


def test_concurrency_counts_requests_in_progress_per_key() -> None:
    counts = Concurrency()
    assert counts.enter(b"a", 2) and counts.enter(b"a", 2)
    assert not counts.enter(b"a", 2)
    assert counts.enter(b"b", 2)
    counts.leave(b"a")
    assert counts.enter(b"a", 2)
    for key in (b"a", b"a", b"b"):
        counts.leave(key)
    assert len(counts) == 0  # no key is kept once its requests end


def test_log_throttle_lets_one_line_a_second_and_counts_the_rest() -> None:
    throttle = LogThrottle(1.0)
    assert throttle.allow(10.0) == 0
    assert [throttle.allow(10.0 + i / 100) for i in range(1, 50)] == [None] * 49
    assert throttle.allow(11.0) == 49
    assert throttle.allow(11.5) is None
    assert throttle.allow(12.0) == 1


def test_request_keys_from_the_address_a_header_or_a_cookie() -> None:
    headers = [(b"Host", b"x"), (b"X-Api-Key", b"k1"), (b"Cookie", b"a=1; session=s9; b=2")]
    assert request_key("$remote_addr", b"10.0.0.7", headers) == b"10.0.0.7"
    assert request_key("$http_x_api_key", b"10.0.0.7", headers) == b"k1"
    assert request_key("$cookie_session", b"10.0.0.7", headers) == b"s9"
    assert request_key("$cookie_sess", b"10.0.0.7", headers) == b""  # not a prefix match
    assert request_key("$http_x_other", b"10.0.0.7", headers) == b""


def test_a_long_key_is_kept_as_a_short_digest_of_itself() -> None:
    long_a = [(b"x-api-key", b"a" * 30000)]
    long_b = [(b"x-api-key", b"a" * 29999 + b"b")]
    key_a = request_key("$http_x_api_key", b"", long_a)
    assert len(key_a) == 16 and key_a == request_key("$http_x_api_key", b"", long_a)
    assert key_a != request_key("$http_x_api_key", b"", long_b)
    assert request_key("$http_x_api_key", b"", [(b"x-api-key", b"k" * 64)]) == b"k" * 64


def test_nginx_integer_units_a_rate_per_minute_is_rounded_down_as_nginx_rounds_it() -> None:
    # nginx keeps "1r/m" as 16 thousandths of a request per second, so a key
    # may come back after 62.5 s, not 60 s.
    zone = RequestRate(rate=1 / 60, max_keys=10)
    assert zone.rate == 16
    assert zone.take(b"k", 0.0, burst=0) == 0.0
    assert zone.take(b"k", 61.0, burst=0) is None
    assert zone.take(b"k", 62.5, burst=0) == 0.0


def test_a_clock_read_behind_the_last_update_drains_nothing() -> None:
    zone = RequestRate(rate=10, max_keys=10)
    assert zone.take(b"k", 10.0, burst=1, delay=math.inf) == 0.0
    assert zone.take(b"k", 9.5, burst=1, delay=math.inf) == 0.0  # excess 1: not drained by going back
    assert zone.take(b"k", 9.5, burst=1, delay=math.inf) is None
