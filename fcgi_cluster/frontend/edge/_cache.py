"""A route's response cache: its entries (memory over a shared directory), its fill locks, and purges.

``RouteCache`` is what a cached route's requests share in one process. It
keeps the entries (``_cache_store``), resolves ``Vary`` (a marker entry under
the key names the request headers; each variant has a key of its own), and
knows which keys are being filled now (``filling``: one event per key, which
the filler sets when its answer is stored), for ``lock`` and
``use_stale = ["updating"]``. With ``lock`` and a ``path``, the processes
sharing the directory share the fill locks too (a lock file per key being
filled, ``DiskStore.lock``): a request whose key another process fills waits
for that fill as for one of its own process.

``route_caches`` makes a site's caches, taking over a previous site's cache
when the route (its path match and cache settings) is unchanged, so a reload
keeps what was cached. ``purge`` is the control channel's ``purge`` command.
"""

from __future__ import annotations

import collections
import logging
import typing

import trio

from .._server_states import ControlError
from ._cache_config import CacheConfig
from ._cache_policy import BYPASS, EXPIRED, HIT, MISS, STALE, UPDATING, variant_key, vary_names
from ._cache_store import DiskStore, Entry, MemoryStore

__all__ = ["RouteCache", "route_caches", "purge", "purge_command", "PURGE_USAGE", "cache_report", "merge_cache_reports"]

log = logging.getLogger("fcgi_cluster.frontend")

PURGE_USAGE = "purge ROUTE | purge KEY | purge KEY_PREFIX*"
#: The X-Cache-Status words, each counted per route.
WORDS = (HIT, MISS, EXPIRED, STALE, UPDATING, BYPASS)
#: Keys whose requests are counted for ``min_uses`` at most, per route and process (the least recent go).
MAX_COUNTED = 10_000
#: How often a request waiting on another process's fill looks whether it ended (seconds).
LOCK_POLL = 0.02


class RouteCache:
    """The entries, fill locks and settings of one cached route, in one process.

    Args:
        config: the route's ``CacheConfig``.
        nursery: where background updates run.
    """

    def __init__(self, config: CacheConfig, nursery: trio.Nursery | None) -> None:
        self.config = config
        self.nursery = nursery
        self.memory = MemoryStore(config.max_size)
        self.disk = DiskStore(config.path, config.max_disk) if config.path else None
        #: Keys being filled now, each with the event set once its answer is stored (or not).
        self.filling: dict[bytes, trio.Event] = {}
        #: Requests answered, by X-Cache-Status word (the status page's).
        self.answers: dict[bytes, int] = dict.fromkeys(WORDS, 0)
        #: Keys whose shared lock file this process holds (``DiskStore.lock``).
        self.disk_locks: set[bytes] = set()
        #: For ``min_uses``: per key not stored yet, (requests counted, when the last came).
        self.uses: collections.OrderedDict[bytes, tuple[int, float]] = collections.OrderedDict()

    # -- entries ------------------------------------------------------------------

    def _get(self, key: bytes, now: float) -> Entry | None:
        memory, disk = self.memory, self.disk
        entry = memory.get(key)
        if entry is not None and disk is not None and disk.ident(key) != entry.ident:
            memory.pop(key)  # purged, or replaced by another process's answer
            entry = None
        if entry is None and disk is not None:
            entry = disk.read(key, self.config.memory_entry_size)
            if entry is not None:
                entry.used = entry.stored
                memory.put(entry)
        if entry is None:
            return None
        if not entry.fresh(now) and now - max(entry.used, entry.expires) > self.config.inactive:
            self._drop(key)
            return None
        entry.used = now
        return entry

    def lookup(self, key: bytes, request_headers: list[tuple[bytes, bytes]], now: float) -> Entry | None:
        """The entry answering a request with ``key`` and these header fields, fresh or not; None for none."""
        entry = self._get(key, now)
        if entry is not None and entry.vary is not None:
            entry = self._get(variant_key(key, entry.vary, request_headers), now)
        return entry

    def store(
        self, key: bytes, request_headers: list[tuple[bytes, bytes]], status: int,
        headers: tuple[tuple[bytes, bytes], ...], body: bytes, fresh_for: float, now: float,
    ) -> None:
        """Keep an answer for ``fresh_for`` seconds (see ``_cache_policy.freshness``)."""
        if len(body) > self.config.max_entry_size:
            return
        names = () if "vary" in self.config.ignore_headers else (vary_names(list(headers)) or ())
        expires = now + fresh_for
        if names:
            self._put(Entry(key, 0, (), b"", 0, now, expires, vary=names, used=now), b"")
            key = variant_key(key, names, request_headers)
        self._put(Entry(key, status, headers, body, len(body), now, expires, used=now), body)

    def _put(self, entry: Entry, body: bytes) -> None:
        if self.disk is not None:
            entry.ident = self.disk.write(entry, body)
            if not entry.ident:
                return
        if entry.length > self.config.memory_entry_size:
            if self.disk is None:
                return
            entry.body = None  # on disk only
        self.memory.put(entry)

    def body(self, entry: Entry) -> typing.Iterable[bytes]:
        """The body of an entry: from memory, or read from its file piece by piece."""
        if entry.body is not None:
            return (entry.body,)
        assert self.disk is not None
        return self.disk.body(entry)

    def _drop(self, key: bytes) -> None:
        self.memory.pop(key)
        if self.disk is not None:
            self.disk.remove(key)

    def used_enough(self, key: bytes, now: float) -> bool:
        """Count a request of ``key`` that goes to the worker: whether its answer may be stored (``min_uses``).

        As nginx's ``fastcgi_cache_min_uses``: the count is forgotten when
        ``inactive`` passes without a request, and once the key is stored.
        """
        needed = self.config.min_uses
        if needed <= 1:
            return True
        count, last = self.uses.pop(key, (0, now))
        count = 1 if now - last > self.config.inactive else count + 1
        if count >= needed:
            return True
        self.uses[key] = (count, now)
        if len(self.uses) > MAX_COUNTED:
            self.uses.popitem(last=False)
        return False

    # -- filling ------------------------------------------------------------------

    def begin_fill(self, key: bytes) -> trio.Event | None:
        """Mark ``key`` as being filled: the fill's event, or None when it already is (by another request)."""
        if key in self.filling:
            return None
        event = self.filling[key] = trio.Event()
        disk = self.disk
        if disk is None or not self.config.lock or self.nursery is None:
            return event
        if disk.lock(key, self.config.lock_timeout):
            self.disk_locks.add(key)
            return event
        try:  # another process fills it: this process's requests wait until its lock goes
            self.nursery.start_soon(self._watch_other_fill, key, event)
        except RuntimeError:  # the front-end is stopping
            return event
        return None

    async def _watch_other_fill(self, key: bytes, event: trio.Event) -> None:
        disk = self.disk
        assert disk is not None
        with trio.move_on_after(self.config.lock_timeout):
            while disk.locked(key):
                await trio.sleep(LOCK_POLL)
        self.end_fill(key, event)

    def end_fill(self, key: bytes, event: trio.Event) -> None:
        """The fill of ``key`` that ``begin_fill`` gave ``event`` ended (stored or not): wake who waits for it.

        Once only: a second call, or one after a newer fill began, changes nothing.
        """
        if self.filling.get(key) is event:
            del self.filling[key]
            if key in self.disk_locks:
                self.disk_locks.discard(key)
                self.disk.unlock(key)  # type: ignore[union-attr]
        event.set()

    # -- purge ----------------------------------------------------------------------

    def purge(self, pattern: bytes) -> int:
        """Remove the entry of key ``pattern`` (its variants too), or every key it starts when it ends with "*"."""
        if pattern.endswith(b"*"):
            stem = pattern[:-1]

            def hit(key: bytes) -> bool:
                return key.startswith(stem)
        else:
            def hit(key: bytes) -> bool:
                return key == pattern or key.startswith(pattern + b"\0vary\0")

        removed = {key for key in self.memory.keys() if hit(key)}
        for key in removed:
            self.memory.pop(key)
        if self.disk is not None:
            for key, _path in self.disk.keys_of_files():
                if hit(key) and self.disk.remove(key):
                    removed.add(key)
        return len(removed)

    def clear(self) -> int:
        """Remove every entry; the count removed."""
        count = self.memory.clear()
        if self.disk is not None:
            count = max(count, self.disk.clear())
        return count


def cache_report(routes: typing.Sequence[typing.Any], caches: typing.Sequence[RouteCache | None]) -> list[dict[str, object]]:
    """The status page's part: per cached route, its entries in memory and its answers by X-Cache-Status."""
    out: list[dict[str, object]] = []
    for route, cache in zip(routes, caches):
        if cache is not None:
            out.append({
                "route": route.prefix if route.prefix is not None else route.regex.pattern,
                "entries": len(cache.memory), "memory_bytes": cache.memory.used,
                "answers": {word.decode().lower(): count for word, count in cache.answers.items()},
            })
    return out


def merge_cache_reports(own: list[dict[str, typing.Any]], others: list[list[dict[str, typing.Any]]]) -> list[dict[str, typing.Any]]:
    """``own`` (a copy) with the other processes' answers, entries and memory summed per route."""
    rows = {row["route"]: row for row in own}
    for report in others:
        for row in report:
            mine = rows.get(row["route"])
            if mine is None:
                continue
            mine["entries"] += row["entries"]
            mine["memory_bytes"] += row["memory_bytes"]
            for word, count in row["answers"].items():
                mine["answers"][word] = mine["answers"].get(word, 0) + count
    return own


def _identity(route: typing.Any) -> tuple[object, ...]:
    regex = route.regex.pattern if route.regex is not None else None
    return (route.prefix, regex, route.upstream, route.cache)


def route_caches(routes: typing.Sequence[typing.Any], nursery: trio.Nursery | None,
                 previous: typing.Sequence[RouteCache | None] = (), previous_routes: typing.Sequence[typing.Any] = ()
                 ) -> list[RouteCache | None]:
    """A ``RouteCache`` per route that has a cache (None for the others), kept from ``previous`` where unchanged."""
    old = {_identity(route): cache for route, cache in zip(previous_routes, previous) if cache is not None}
    out: list[RouteCache | None] = []
    for route in routes:
        config = getattr(route, "cache", None)
        if config is None:
            out.append(None)
            continue
        out.append(old.pop(_identity(route), None) or RouteCache(config, nursery))
    return out


def purge(routes: typing.Sequence[typing.Any], caches: typing.Sequence[RouteCache | None], target: str) -> str:
    """The ``purge`` control command: ``target`` is a cached route (its prefix or regex) or a key (``*`` a prefix).

    Returns:
        What was done, one line.

    Raises:
        LookupError: no route has a cache.
    """
    cached = [(route, cache) for route, cache in zip(routes, caches) if cache is not None]
    if not cached:
        raise LookupError("no route has a cache")
    for route, cache in cached:
        if target in (route.prefix, route.regex.pattern if route.regex is not None else None):
            return f"purged route {target}: {cache.clear()} entries"
    pattern = target.encode("utf-8", "surrogateescape")
    count = 0
    for _route, cache in cached:
        count += cache.purge(pattern)
    return f"purged {target}: {count} entries"


def purge_command(site: typing.Any, line: str) -> str:
    """``purge TARGET`` on a site (its routes and caches), as the control listener runs it.

    With ``path``, the entries go from the shared directory, so every process
    of the front-end stops serving them; memory-only entries go from this
    process (the one serving the control listener).

    Raises:
        ControlError: no target (400), or no cached route (404).
    """
    words = line.split(" ", 1)
    target = words[1].strip() if len(words) > 1 else ""
    if not target:
        raise ControlError(400, f"usage: {PURGE_USAGE}")
    try:
        done = purge(site.routes, site.caches, target)
    except LookupError as exc:
        raise ControlError(404, str(exc)) from None
    log.info("control: %s", done)
    return done
