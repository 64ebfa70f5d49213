"""The response cache's rules (sans-IO), its store, and its [route.cache] settings."""

from __future__ import annotations

import dataclasses
import email.utils
import os
import pathlib

import pytest
import trio

from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend._config import ConfigError
from fcgi_cluster.frontend._http import RequestHead
from fcgi_cluster.frontend.edge._cache import RouteCache, purge, route_caches
from fcgi_cluster.frontend.edge._cache_config import CacheConfig, parse_key
from fcgi_cluster.frontend.edge._cache_policy import (
    bypassed, freshness, not_modified, request_key, stale_on_failure, stale_on_status, stored_headers, variant_key, vary_names,
)  # fmt: skip
from fcgi_cluster.frontend.edge._cache_store import DiskStore, Entry, MemoryStore

NOW = 1_800_000_000.0


def head(target: bytes = b"/a?x=1", headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET") -> RequestHead:
    path, _, query = target.partition(b"?")
    return RequestHead(method, target, path, query, b"1.1", headers or [(b"host", b"Example.COM:8080")], None, False,
                       False, True)


def config(**changes: object) -> CacheConfig:
    return dataclasses.replace(CacheConfig(), **changes)


# -- keys -------------------------------------------------------------------------


def test_the_default_key_is_scheme_host_without_port_and_the_uri_as_sent() -> None:
    assert request_key(CacheConfig(), head(b"/a%20b?x=%00"), b"https") == b"httpsexample.com/a%20b?x=%00"
    assert request_key(CacheConfig(), head(b"/p", [(b"host", b"[::1]:80")]), b"http") == b"http[::1]/p"


def test_a_key_made_of_parts() -> None:
    cfg = config(key=parse_key("$request_method|$uri|$args|$arg_lang|$cookie_sid|$http_x_tenant|${host}!"))
    request = head(b"/p?lang=fr&z=1", [(b"host", b"h"), (b"cookie", b"a=1; sid=S9"), (b"x-tenant", b"t1")])
    assert request_key(cfg, request, b"http") == b"GET|/p|lang=fr&z=1|fr|S9|t1|h!"
    # HEAD shares GET's entry even when the method is in the key.
    assert request_key(cfg, request._replace(method=b"HEAD"), b"http") == request_key(cfg, request, b"http")


@pytest.mark.parametrize("bad", ["", "$nope", "$scheme$bogus_x", 3])
def test_a_bad_key_template_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_key(bad)


# -- bypass -------------------------------------------------------------------------


def test_bypass_needs_a_present_value_that_is_not_empty_nor_0() -> None:
    cfg = config(bypass=(("cookie", "nocache"), ("header", "x-fresh"), ("arg", "nc")))
    assert not bypassed(cfg, head(headers=[(b"cookie", b"nocache=0")]))
    assert not bypassed(cfg, head(headers=[(b"cookie", b"nocache=")]))
    assert bypassed(cfg, head(headers=[(b"cookie", b"a=b; nocache=yes")]))
    assert bypassed(cfg, head(headers=[(b"x-fresh", b"1")]))
    assert bypassed(cfg, head(b"/a?nc=1"))
    assert not bypassed(cfg, head(b"/a?nc=0"))
    assert not bypassed(CacheConfig(), head(b"/a?nc=1"))


# -- freshness ------------------------------------------------------------------------


def test_x_accel_expires_wins_then_cache_control_then_expires_then_valid() -> None:
    cfg = config(valid=((200, 10.0),))
    assert freshness(cfg, 200, [], NOW) == 10.0
    assert freshness(cfg, 404, [], NOW) is None
    assert freshness(cfg, 200, [(b"Cache-Control", b"public, max-age=30")], NOW) == 30
    assert freshness(cfg, 200, [(b"Cache-Control", b"max-age=30, s-maxage=90")], NOW) == 90
    assert freshness(cfg, 200, [(b"X-Accel-Expires", b"5"), (b"Cache-Control", b"no-store")], NOW) == 5
    assert freshness(cfg, 200, [(b"X-Accel-Expires", b"@%d" % (NOW + 40))], NOW) == 40
    assert freshness(cfg, 200, [(b"X-Accel-Expires", b"0")], NOW) is None
    later = email.utils.formatdate(NOW + 120, usegmt=True).encode()
    assert freshness(cfg, 200, [(b"Expires", later)], NOW) == pytest.approx(120)
    assert freshness(cfg, 200, [(b"Expires", b"0")], NOW) is None  # an invalid date is in the past


@pytest.mark.parametrize("value", [b"no-store", b"no-cache", b"private", b"max-age=0", b"Private, max-age=60"])
def test_cache_control_that_forbids(value: bytes) -> None:
    assert freshness(config(valid=((0, 60.0),)), 200, [(b"cache-control", value)], NOW) is None


@pytest.mark.parametrize("status", [206, 304, 412, 416])
def test_answers_to_one_clients_range_or_condition_are_never_cached(status: int) -> None:
    assert freshness(config(valid=((0, 60.0),)), status, [(b"Cache-Control", b"max-age=60")], NOW) is None


def test_set_cookie_and_vary_star_are_not_cached_unless_ignored() -> None:
    cfg = config(valid=((0, 60.0),))
    assert freshness(cfg, 200, [(b"Set-Cookie", b"s=1")], NOW) is None
    assert freshness(cfg, 200, [(b"Vary", b"*")], NOW) is None
    ignoring = config(valid=((0, 60.0),), ignore_headers=frozenset({"set-cookie", "vary", "cache-control"}))
    assert freshness(ignoring, 200, [(b"Set-Cookie", b"s=1"), (b"Vary", b"*"), (b"Cache-Control", b"no-store")], NOW) == 60
    # ... and the cookie is never stored for others.
    assert stored_headers([(b"Set-Cookie", b"s=1"), (b"X-Accel-Expires", b"9"), (b"A", b"b")]) == ((b"A", b"b"),)


def test_vary_names_and_variant_keys() -> None:
    assert vary_names([(b"Vary", b"Accept-Encoding, accept-language"), (b"vary", b"Cookie")]) == (
        b"accept-encoding", b"accept-language", b"cookie")
    assert vary_names([(b"Vary", b"x, *")]) is None
    names = (b"accept-language",)
    en = variant_key(b"k", names, [(b"accept-language", b"en")])
    assert en != variant_key(b"k", names, [(b"accept-language", b"fr")])
    assert en == variant_key(b"k", names, [(b"accept-language", b"en"), (b"x", b"y")])


def test_stale_rules() -> None:
    cfg = config(use_stale=frozenset({"error", "http_503"}))
    assert stale_on_failure(cfg, 502) and stale_on_failure(cfg, 503) and not stale_on_failure(cfg, 504)
    assert stale_on_failure(config(use_stale=frozenset({"timeout"})), 504)
    assert stale_on_status(cfg, 503) and not stale_on_status(cfg, 500)
    assert not stale_on_status(CacheConfig(), 503)


def test_a_cached_200_answers_a_matching_condition_with_304() -> None:
    tagged = ((b"ETag", b'W/"v1"'), (b"Last-Modified", b"Tue, 01 Dec 2026 10:00:00 GMT"))
    assert not_modified([(b"if-none-match", b'"v0", "v1"')], 200, tagged)
    assert not_modified([(b"if-none-match", b"*")], 200, tagged)
    assert not not_modified([(b"if-none-match", b'"v2"'), (b"if-modified-since", b"Wed, 02 Dec 2026 10:00:00 GMT")], 200, tagged)
    assert not_modified([(b"if-modified-since", b"Wed, 02 Dec 2026 10:00:00 GMT")], 200, tagged)
    assert not not_modified([(b"if-modified-since", b"Mon, 30 Nov 2026 10:00:00 GMT")], 200, tagged)
    assert not not_modified([(b"if-modified-since", b"garbage")], 200, tagged)
    assert not not_modified([(b"if-none-match", b'"v1"')], 404, tagged)
    assert not not_modified([], 200, tagged)


# -- the store ---------------------------------------------------------------------------


def entry(key: bytes, body: bytes = b"x", expires: float = NOW + 10) -> Entry:
    return Entry(key, 200, ((b"Content-Type", b"text/plain"),), body, len(body), NOW, expires, used=NOW)


def test_memory_drops_the_least_recently_used_past_its_bound() -> None:
    store = MemoryStore(max_size=3 * entry(b"a", b"x" * 100).size())
    for key in (b"a", b"b", b"c"):
        store.put(entry(key, b"x" * 100))
    store.get(b"a")
    store.put(entry(b"d", b"x" * 100))
    assert sorted(store.keys()) == [b"a", b"c", b"d"]
    assert store.used <= store.max_size
    store.put(entry(b"huge", b"x" * 10_000))  # larger than the whole bound: not kept
    assert store.get(b"huge") is None and len(store) == 3


def test_disk_entries_round_trip_and_damaged_files_are_dropped(tmp_path: pathlib.Path) -> None:
    disk = DiskStore(str(tmp_path / "c"), max_disk=10_000_000)
    key = b"http\x00odd\r\nkey" + b"k" * 9000
    written = entry(key, b"body bytes")
    assert disk.write(written, b"body bytes")
    read = disk.read(key, body_up_to=1024)
    assert read is not None and (read.key, read.status, read.body, read.headers) == (key, 200, b"body bytes", written.headers)
    assert disk.read(key, body_up_to=3).body is None  # type: ignore[union-attr]
    assert b"".join(disk.body(disk.read(key, 3))) == b"body bytes"  # type: ignore[arg-type]
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp-")]
    pathlib.Path(disk.file_of(key)).write_bytes(b"FCGICACHE1\n\x00\x00\x00\x05{bad")
    assert disk.read(key, 1024) is None and not os.path.exists(disk.file_of(key))


def test_the_directory_is_trimmed_to_its_bound_oldest_first(tmp_path: pathlib.Path) -> None:
    disk = DiskStore(str(tmp_path / "c"), max_disk=20_000)
    for number in range(10):
        disk.write(entry(b"k%d" % number, b"x" * 3000), b"x" * 3000)
        os.utime(disk.file_of(b"k%d" % number), ns=(number * 10**9, number * 10**9))
    total = sum(st.st_size for _, st in disk.files())
    assert total <= 20_000
    assert disk.read(b"k9", 0) is not None and disk.read(b"k0", 0) is None


def test_two_processes_writing_one_directory_keep_it_near_its_bound(tmp_path: pathlib.Path) -> None:
    first, second = DiskStore(str(tmp_path / "c"), 100_000), DiskStore(str(tmp_path / "c"), 100_000)
    for number in range(200):
        store = first if number % 2 else second
        store.write(entry(b"k%d" % number, b"x" * 2000), b"x" * 2000)
    total = sum(st.st_size for _, st in first.files())
    assert 50_000 < total <= 100_000 * 12 // 10


def test_a_fill_lock_file_is_held_once_and_taken_over_from_a_gone_or_old_holder(tmp_path: pathlib.Path) -> None:
    import subprocess
    import time
    import sys

    first, second = DiskStore(str(tmp_path / "c"), 100_000), DiskStore(str(tmp_path / "c"), 100_000)
    assert first.lock(b"k", 30) and first.locked(b"k")
    assert not second.lock(b"k", 30)  # held by a live process (this one)
    assert second.lock(b"other", 30)  # another key is free
    first.unlock(b"k")
    assert not first.locked(b"k") and second.lock(b"k", 30)
    # A holder that is gone: its lock is taken over at once.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = second._lock_file(b"k")
    pathlib.Path(lock_file).write_text(gone.stdout)
    assert first.lock(b"k", 30)
    # A live holder's lock older than the bound (nginx's cache_lock_age) is taken over too.
    pathlib.Path(lock_file).write_text("1\n")
    assert not second.lock(b"k", 30)
    os.utime(lock_file, (time.time() - 60, time.time() - 60))
    assert second.lock(b"k", 30)
    # Entry files and their scans never see the lock files.
    assert first.files() == [] and first.clear() == 0 and second.locked(b"k")


async def test_a_route_cache_with_vary_purge_and_a_reload(tmp_path: pathlib.Path) -> None:
    cfg = config(path=str(tmp_path / "c"), memory_entry_size=4)
    cache = RouteCache(cfg, None)
    vary = ((b"Vary", b"Accept-Language"),)
    cache.store(b"k", [(b"accept-language", b"en")], 200, vary, b"english", 60, NOW)
    cache.store(b"k", [(b"accept-language", b"fr")], 200, vary, b"french", 60, NOW)
    found = cache.lookup(b"k", [(b"accept-language", b"fr")], NOW + 1)
    assert found is not None and b"".join(cache.body(found)) == b"french"
    # Another process's view of the same directory sees the entries; a purge here reaches it.
    other = RouteCache(cfg, None)
    assert b"".join(other.body(other.lookup(b"k", [(b"accept-language", b"en")], NOW + 1))) == b"english"  # type: ignore[arg-type]
    assert cache.purge(b"k") == 3  # the marker and both variants
    assert other.lookup(b"k", [(b"accept-language", b"en")], NOW + 1) is None
    # Expired entries stay for use_stale until inactive passes.
    cache.store(b"old", [], 200, (), b"o", 1, NOW)
    assert cache.lookup(b"old", [], NOW + 100) is not None
    assert cache.lookup(b"old", [], NOW + 100 + cfg.inactive + 1) is None
    # A reload keeps the cache of an unchanged route only.
    routes = parse_config('[upstream.a]\nservers = ["127.0.0.1:1"]\n[[route]]\nprefix = "/c/"\nupstream = "a"\n'
                          '[route.cache]\nvalid = { 200 = "1s" }\n[[route]]\nprefix = "/"\nupstream = "a"\n').routes
    async with trio.open_nursery() as nursery:
        caches = route_caches(routes, nursery)
        assert caches[1] is None and caches[0] is not None
        assert route_caches(routes, nursery, caches, routes)[0] is caches[0]
        changed = [dataclasses.replace(routes[0], cache=config(lock=True)), routes[1]]
        assert route_caches(changed, nursery, caches, routes)[0] is not caches[0]
        assert purge(routes, caches, "/c/").startswith("purged route /c/")
        with pytest.raises(LookupError):
            purge(routes[1:], caches[1:], "/c/")


# -- settings -----------------------------------------------------------------------------


BASE = '[upstream.a]\nservers = ["127.0.0.1:1"]\n[[route]]\nprefix = "/"\nupstream = "a"\n[route.cache]\n'


@pytest.mark.parametrize("line, message", [
    ('valid = { 200 = "soon" }', 'cluster.toml:7: route[0].cache.valid: status 200:'),
    ('valid = { 999 = "1s" }', 'cluster.toml:7: route[0].cache.valid: bad status'),
    ('use_stale = ["error", "sometimes"]', "cluster.toml:7: route[0].cache.use_stale:"),
    ('bypass = ["query:x"]', 'cluster.toml:7: route[0].cache.bypass: bad entry "query:x"'),
    ('ignore_headers = ["Location"]', 'cluster.toml:7: route[0].cache.ignore_headers: cannot ignore "Location"'),
    ('key = "$scheme$nothing"', "cluster.toml:7: route[0].cache.key: unknown variable $nothing"),
    ('lokc = true', 'cluster.toml:7: route[0].cache.lokc: unknown key; expected one of: key, valid,'),
    ('background_update = true', 'cluster.toml:7: route[0].cache.background_update: needs use_stale to hold "updating"'),
    ('path = "/proc/1/nope/cache"', "cluster.toml:7: route[0].cache.path: not writable"),
    ('min_uses = 0', "cluster.toml:7: route[0].cache.min_uses:"),
    ('min_uses = "2"', "cluster.toml:7: route[0].cache.min_uses:"),
])
def test_bad_settings_name_file_line_and_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + line + "\n", "cluster.toml")
    assert str(info.value).startswith(message), str(info.value)


def test_settings_read_with_a_relative_path(tmp_path: pathlib.Path) -> None:
    text = BASE + 'valid = { 200 = "10s", any = "1m" }\nuse_stale = ["updating"]\nbackground_update = true\npath = "cache"\n'
    (tmp_path / "cluster.toml").write_text(text)
    from fcgi_cluster.frontend._config import load_config

    cfg = load_config(str(tmp_path / "cluster.toml")).routes[0].cache
    assert cfg.valid == ((200, 10.0), (0, 60.0)) and cfg.path == str(tmp_path / "cache") and cfg.background_update
    assert cfg.min_uses == 1
    assert parse_config(BASE + "min_uses = 4\n", "cluster.toml").routes[0].cache.min_uses == 4
    static = '[[route]]\nprefix = "/"\nstatic = "."\n[route.cache]\nlock = true\n'
    with pytest.raises(ConfigError, match="route.0..cache: only used by upstream routes"):
        parse_config(static, str(tmp_path / "x.toml"))


async def test_a_fill_ends_once_and_never_ends_a_newer_one() -> None:
    cache = RouteCache(CacheConfig(), None)
    first = cache.begin_fill(b"k")
    assert first is not None and cache.begin_fill(b"k") is None
    cache.end_fill(b"k", first)
    assert first.is_set() and b"k" not in cache.filling
    second = cache.begin_fill(b"k")
    assert second is not None
    cache.end_fill(b"k", first)  # the first fill's second end: the newer one stays
    assert cache.filling[b"k"] is second and not second.is_set()


def test_min_uses_counts_per_key_and_forgets_after_inactive() -> None:
    cache = RouteCache(CacheConfig(min_uses=2, inactive=10.0), None)
    assert not cache.used_enough(b"k", 0.0)
    assert not cache.used_enough(b"other", 1.0)
    assert not cache.used_enough(b"k", 20.0)  # more than inactive since the last: counted anew
    assert cache.used_enough(b"k", 21.0)
    assert b"k" not in cache.uses and b"other" in cache.uses
    assert RouteCache(CacheConfig(), None).used_enough(b"k", 0.0)
