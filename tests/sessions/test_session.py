"""The lazy per-request Session over a store: ids, strict mode, locking, lazy write, cookies."""

from __future__ import annotations

import re
import threading

import pytest

from fcgi_cluster.sessions import LockTimeout, Session, SessionSettings, StoreError
from fcgi_cluster.sessions._session import new_session_id, session_id_from_cookies, valid_session_id

from ._memory_store import MemoryStore

SETTINGS = SessionSettings(gc_probability=0)
KNOWN = "k" * 32


def session(store, cookie=None, **changes) -> Session:
    settings = SessionSettings(**{**{"gc_probability": 0}, **changes})
    return Session(store, settings, cookie)


@pytest.fixture
def store():
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'
    return store


def test_ids_have_at_least_128_bits_from_the_configured_alphabet():
    for bits, alphabet in ((4, "[0-9a-f]"), (5, "[0-9a-v]"), (6, "[0-9a-zA-Z,-]")):
        settings = SessionSettings(sid_length=32, sid_bits_per_character=bits)
        ids = {new_session_id(settings) for _ in range(200)}
        assert len(ids) == 200
        assert all(re.fullmatch(f"{alphabet}{{32}}", sid) for sid in ids)
        assert all(valid_session_id(sid) for sid in ids)


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        (f"PHPSESSID={KNOWN}", KNOWN),
        (f'a=1; PHPSESSID="{KNOWN}"; b=2', KNOWN),
        (f"PHPSESSID={KNOWN}; PHPSESSID={'z' * 32}", KNOWN),  # the first wins, as in PHP
        (f"XPHPSESSID={KNOWN}", None),
        ("PHPSESSID=../../etc/passwd", None),
        ("PHPSESSID=" + "a" * 21, None),
        ("PHPSESSID=" + "a" * 257, None),
        ("PHPSESSID=" + "a" * 10_000, None),
        ("PHPSESSID=abcdefghijklmnopqrstuvwxyzé", None),
        ("PHPSESSID=abcdefghijklmnopqrstuvwxyz\x00", None),
        ("PHPSESSID=abcdefghijklmnopqrstuvwx%20", None),
        ("PHPSESSID=" + "ab_cd" * 6, None),
        ("PHPSESSID=a,b-" + "c" * 20, "a,b-" + "c" * 20),
        ("PHPSESSID=; PHPSESSID=" + KNOWN, None),
    ],
)
def test_id_from_cookie_header(header, expected):
    assert session_id_from_cookies(header, "PHPSESSID") == expected


def test_untouched_session_costs_no_store_call(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s.save()
    assert store.calls == []
    assert s.cookie() is None
    assert not s.loaded


@pytest.mark.parametrize("cookie", ["PHPSESSID=garbage!", "PHPSESSID=" + "x" * 10_000, "PHPSESSID=ääääääääääääääääääääääää"])
def test_bad_cookie_gives_a_new_session_without_asking_the_store(store, cookie):
    s = session(store, cookie)
    assert s.get("n") is None
    assert s.is_new
    assert all(sid != cookie.partition("=")[2] for _, sid in store.calls)
    assert store.calls == []
    s["n"] = 1
    s.save()
    assert store.names() == ["write"]
    assert store.data[s.id] == b'{"n":1}'
    assert s.cookie().startswith(f"PHPSESSID={s.id}; Path=/; HttpOnly; SameSite=Lax")


def test_known_session_is_locked_read_and_written(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    assert s["n"] == 1
    assert store.names() == ["acquire_lock", "read"]
    assert KNOWN in store.locks
    s["n"] += 1
    s.save()
    assert store.names() == ["acquire_lock", "read", "write", "release_lock"]
    assert store.data[KNOWN] == b'{"n":2}'
    assert store.ttl[KNOWN] == 1440
    assert KNOWN not in store.locks
    assert s.cookie() is None  # same id: the browser has it already
    assert s["n"] == 2  # still readable after save
    with pytest.raises(RuntimeError, match="already saved"):
        s["n"] = 3


def test_lazy_write_only_touches_unchanged_data(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    assert s["n"] == 1
    s.save()
    assert store.names()[-2:] == ["touch", "release_lock"]


def test_nested_change_is_seen(store):
    store.data[KNOWN] = b'{"cart":[]}'
    s = session(store, f"PHPSESSID={KNOWN}")
    s["cart"].append("pen")
    s.save()
    assert store.data[KNOWN] == b'{"cart":["pen"]}'


def test_without_lazy_write_unchanged_data_is_rewritten(store):
    s = session(store, f"PHPSESSID={KNOWN}", lazy_write=False)
    s.get("n")
    s.save()
    assert "write" in store.names() and "touch" not in store.names()


def test_strict_mode_replaces_an_unknown_id(store):
    unknown = "u" * 32
    s = session(store, f"PHPSESSID={unknown}")
    s["n"] = 5
    assert s.id != unknown and s.is_new
    assert unknown not in store.locks  # its lock was let go at once
    s.save()
    assert unknown not in store.data and store.data[s.id] == b'{"n":5}'
    assert s.cookie().startswith(f"PHPSESSID={s.id};")


def test_without_strict_mode_an_unknown_id_is_adopted(store):
    unknown = "u" * 32
    s = session(store, f"PHPSESSID={unknown}", use_strict_mode=False)
    s["n"] = 5
    s.save()
    assert s.id == unknown and store.data[unknown] == b'{"n":5}'


def test_new_session_left_empty_is_not_stored_and_gets_no_cookie(store):
    s = session(store)
    assert s.get("n") is None
    s.save()
    assert store.calls == [] and s.cookie() is None


def test_regenerate_keeps_data_and_destroys_the_old_id(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    new = s.regenerate()
    assert new != KNOWN and s.id == new
    s.save()
    assert KNOWN not in store.data
    assert store.data[new] == b'{"n":1}'
    assert KNOWN not in store.locks
    assert s.cookie().startswith(f"PHPSESSID={new};")


def test_regenerate_after_headers_sent_is_refused(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s.load()
    s.headers_sent = True
    with pytest.raises(RuntimeError, match="headers"):
        s.regenerate()


def test_invalidate_destroys_and_deletes_the_cookie(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s.invalidate()
    assert len(s) == 0 and s.id != KNOWN
    s.save()
    assert KNOWN not in store.data
    assert s.cookie().startswith("PHPSESSID=deleted; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0")


def test_invalidate_then_new_data_moves_to_a_new_id(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s.invalidate()
    s["user"] = "guest"
    s.save()
    assert KNOWN not in store.data and store.data[s.id] == b'{"user":"guest"}'


def test_cookie_attributes_follow_the_settings(store):
    s = session(store, None, cookie_lifetime=3600, cookie_path="/app", cookie_domain="example.org",
                cookie_secure=True, cookie_httponly=False, cookie_samesite="None", name="SID")
    s["x"] = 1
    cookie = s.cookie()
    assert cookie.startswith(f"SID={s.id}; Expires=")
    assert "; Max-Age=3600; Path=/app; Domain=example.org; Secure; SameSite=None" in cookie
    assert "HttpOnly" not in cookie


def test_cookie_lifetime_slides_on_every_use(store):
    s = session(store, f"PHPSESSID={KNOWN}", cookie_lifetime=60)
    s.get("n")
    assert "Max-Age=60" in s.cookie()


def test_lock_timeout_reaches_the_app_and_holds_nothing(store):
    store.locks[KNOWN] = (b"other", float("inf"))
    s = session(store, f"PHPSESSID={KNOWN}", lock_wait=0.05, lock_retry_interval=0.01)
    with pytest.raises(LockTimeout):
        s.get("n")
    assert store.locks[KNOWN][0] == b"other"


def test_without_locking_no_lock_calls(store):
    s = session(store, f"PHPSESSID={KNOWN}", lock=False)
    s["n"] = 9
    s.save()
    assert store.names() == ["read", "write"]


def test_lock_serializes_two_requests_of_one_session(store):
    # Two threads increment the same session 50 times each: with the lock, none is lost.
    def worker():
        for _ in range(50):
            s = session(store, f"PHPSESSID={KNOWN}")
            s["n"] = s["n"] + 1
            s.save()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.data[KNOWN] == b'{"n":101}'


def test_store_down_fails_by_default(store):
    store.down = True
    s = session(store, f"PHPSESSID={KNOWN}")
    with pytest.raises(StoreError):
        s.get("n")
    assert s.unavailable and s.cookie() is None


def test_store_down_with_proceed_gives_an_empty_unsaved_session(store):
    store.down = True
    s = session(store, f"PHPSESSID={KNOWN}", on_store_error="proceed")
    assert s.get("n") is None
    s["n"] = 1
    s.save()
    assert not s.unavailable and s.failure is not None
    assert s.cookie() is None
    assert store.names() == ["acquire_lock"]


def test_store_failing_at_save_releases_the_lock_attempt(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s["n"] = 2
    store.down = True
    with pytest.raises(StoreError):
        s.save()
    assert s.unavailable
    assert store.names()[-2:] == ["write", "release_lock"]


def test_abort_releases_the_lock_and_drops_changes(store):
    s = session(store, f"PHPSESSID={KNOWN}")
    s["n"] = 50
    s.abort()
    assert store.data[KNOWN] == b'{"n":1}' and KNOWN not in store.locks


def test_php_format_session(store):
    store.data[KNOWN] = b'user|s:5:"alice";'
    s = session(store, f"PHPSESSID={KNOWN}", serialize_handler="php")
    assert s["user"] == "alice"
    s["user"] = "bob"
    s.save()
    assert store.data[KNOWN] == b'user|s:3:"bob";'


def test_garbage_collection_runs_with_its_probability(store):
    s = session(store, f"PHPSESSID={KNOWN}", gc_probability=1, gc_divisor=1)
    s.get("n")
    s.save()
    assert "gc" in store.names()


async def test_async_mode_needs_aload(store):
    import trio

    s = Session(store, SETTINGS, f"PHPSESSID={KNOWN}", async_mode=True, run_sync=trio.to_thread.run_sync)
    with pytest.raises(RuntimeError, match="aload"):
        s.get("n")
    await s.aload()
    s["n"] = 7
    await s.asave()
    assert store.data[KNOWN] == b'{"n":7}'


def test_package_exports_resolve_are_documented_and_sorted():
    import fcgi_cluster.sessions as package

    assert package.__all__ == sorted(package.__all__, key=str.lower) or package.__all__ == sorted(package.__all__)
    for name in package.__all__:
        obj = getattr(package, name)
        if callable(obj) and not isinstance(obj, (str, bytes)):
            assert obj.__doc__, name
    ours = {"ASGISessionMiddleware", "ClusterSessionInterface", "SESSION_KEY", "STORE_KEY", "SerializationError",
            "Session", "SessionConfigError", "SessionSettings", "WSGISessionMiddleware", "open_session_store",
            "parse_session_settings", "php_serialize", "php_unserialize", "session_middleware"}
    assert ours <= set(package.__all__)


class OneTripStore(MemoryStore):
    """A MemoryStore whose two ends of a locked request are one call each, as redis' are."""

    def lock_and_read(self, sid, *, expire, wait, retry_interval):
        self._call("lock_and_read", sid)
        calls = len(self.calls)
        token = self.acquire_lock(sid, expire=expire, wait=wait, retry_interval=retry_interval)
        data = self.data.get(sid)
        del self.calls[calls:]  # one call, not three
        return token, data

    def write_and_release(self, sid, data, ttl, token):
        self._call("write_and_release", sid)
        self.data[sid], self.ttl[sid] = data, ttl
        self._drop_lock(sid, token)

    def touch_and_release(self, sid, ttl, token):
        self._call("touch_and_release", sid)
        if sid in self.data:
            self.ttl[sid] = ttl
        self._drop_lock(sid, token)

    def _drop_lock(self, sid, token):
        with self._mutex:
            if self.locks.get(sid, (None,))[0] == token:
                del self.locks[sid]


@pytest.fixture
def one_trip():
    store = OneTripStore()
    store.data[KNOWN] = b'{"n":1}'
    return store


def test_a_locked_session_costs_one_store_call_at_each_end(one_trip):
    s = session(one_trip, f"PHPSESSID={KNOWN}")
    s["n"] += 1
    s.save()
    assert one_trip.names() == ["lock_and_read", "write_and_release"]
    assert one_trip.data[KNOWN] == b'{"n":2}' and one_trip.ttl[KNOWN] == 1440
    assert KNOWN not in one_trip.locks


def test_an_unchanged_session_is_touched_and_released_in_one_call(one_trip):
    s = session(one_trip, f"PHPSESSID={KNOWN}")
    assert s["n"] == 1
    s.save()
    assert one_trip.names() == ["lock_and_read", "touch_and_release"]
    assert KNOWN not in one_trip.locks


def test_regenerate_keeps_the_old_lock_until_the_old_id_is_destroyed(one_trip):
    """A request waiting on the old id must not read its data before it is gone."""
    s = session(one_trip, f"PHPSESSID={KNOWN}")
    new = s.regenerate()
    s.save()
    assert one_trip.names() == ["lock_and_read", "write", "destroy", "release_lock"]
    assert KNOWN not in one_trip.data and one_trip.data[new] == b'{"n":1}'
    assert KNOWN not in one_trip.locks


def test_a_failed_save_and_release_still_tries_to_release(one_trip):
    s = session(one_trip, f"PHPSESSID={KNOWN}")
    s["n"] += 1
    one_trip.down = True
    with pytest.raises(StoreError):
        s.save()
    assert one_trip.names() == ["lock_and_read", "write_and_release", "release_lock"]
    assert s.unavailable


def test_lock_and_read_without_locking_is_a_plain_read(one_trip):
    s = session(one_trip, f"PHPSESSID={KNOWN}", lock=False)
    s["n"] += 1
    s.save()
    assert one_trip.names() == ["read", "write"]
