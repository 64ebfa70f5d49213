"""Where cached answers live: a bounded memory LRU per process, over a bounded directory shared by processes.

Without ``path``, entries are in memory only, per front-end process (each
process fills its own). With ``path`` every entry is also a file in that
directory, the one all processes of a front-end share, as nginx's
``fastcgi_cache_path``: named by the SHA-256 of its key (``ab/abcd...``),
written to a temporary file and renamed into place (a reader sees a whole
entry or none), starting with a metadata header (``MAGIC``, then the length
of a JSON object: key, status, header fields, times, Vary names), then the
body. Memory is then the first level: a body up to ``memory_entry_size`` is
kept there too, and each hit checks with one ``stat`` that its file is the
same one (not purged, not replaced by another process's newer answer).

Bounds: memory by ``max_size`` (least recently used entries go first); the
directory by ``max_disk``, checked after each write against a running count
of what this process wrote (and at the latest every tenth of the bound
written, for what the other processes wrote), and when over, scanned and
trimmed to 90%, the oldest files first (all processes' files: the directory
is the truth). With N processes it may go over by N tenths at most.

File I/O is done in the calling task: entries are small next to the
network's work, and local files do not block for long (nginx does the same
without its thread pools). A damaged file is removed and counted a miss.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import struct
import tempfile
import time

from ._cache_policy import key_hash

__all__ = ["Entry", "MemoryStore", "DiskStore", "MAGIC"]

log = logging.getLogger("fcgi_cluster.frontend")

#: The first bytes of an entry file, with the format's version.
MAGIC = b"FCGICACHE1\n"
_LENGTH = struct.Struct(">I")
#: Bytes counted for an entry besides its key, headers and body (the objects holding them).
_OVERHEAD = 256
#: Bytes of metadata read at most: a key is bounded by the request line, headers by the worker's head.
MAX_META = 1024 * 1024


@dataclasses.dataclass(slots=True)
class Entry:
    """One cached answer (or, with ``vary`` set, the marker saying which request headers pick its variant).

    Attributes:
        key: its full key (a variant's includes the Vary values).
        status, headers: the answer's, as the client gets them.
        body: the body; None when it is on disk only (``DiskStore.body``).
        length: bytes of the body.
        stored, expires: wall-clock times it was stored and stops being fresh.
        vary: for a marker, the Vary names; None for an answer.
        used: when it was last served.
        ident: its file's (inode, mtime_ns), () for none.
        offset: where its body starts in its file.
    """

    key: bytes
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None
    length: int
    stored: float
    expires: float
    vary: tuple[bytes, ...] | None = None
    used: float = 0.0
    ident: tuple[int, int] | tuple[()] = ()
    offset: int = 0

    def size(self) -> int:
        """Bytes of memory it holds."""
        body = len(self.body) if self.body is not None else 0
        return len(self.key) + body + sum(len(n) + len(v) for n, v in self.headers) + _OVERHEAD

    def fresh(self, now: float) -> bool:
        return now < self.expires


class MemoryStore:
    """Entries by key in memory, least recently used dropped past ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.used = 0
        self._entries: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> None:
        self.pop(entry.key)
        size = entry.size()
        if size > self.max_size:
            return
        self._entries[entry.key] = entry
        self.used += size
        while self.used > self.max_size:
            _, old = self._entries.popitem(last=False)
            self.used -= old.size()

    def pop(self, key: bytes) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry.size()
        return entry

    def keys(self) -> list[bytes]:
        return list(self._entries)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self.used = 0
        return count


class DiskStore:
    """Entry files in one directory, bounded by ``max_disk`` bytes (see the module)."""

    def __init__(self, directory: str, max_disk: int) -> None:
        self.directory = directory
        self.max_disk = max_disk
        os.makedirs(directory, exist_ok=True)
        self._written = self._usage()
        self._since_scan = 0

    def file_of(self, key: bytes) -> str:
        name = key_hash(key)
        return os.path.join(self.directory, name[:2], name)

    def write(self, entry: Entry, body: bytes) -> tuple[int, int] | tuple[()]:
        """Store ``entry`` with ``body``, atomically; its file's ident, or () when it could not be written."""
        meta = json.dumps({
            "key": entry.key.decode("latin-1"), "status": entry.status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in entry.headers],
            "stored": entry.stored, "expires": entry.expires, "length": len(body),
            "vary": None if entry.vary is None else [n.decode("latin-1") for n in entry.vary],
        }).encode()
        path = self.file_of(entry.key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(MAGIC + _LENGTH.pack(len(meta)) + meta)
                    out.write(body)
                os.replace(temp, path)
            except BaseException:
                _unlink(temp)
                raise
            st = os.stat(path)
        except OSError as exc:
            log.warning("cache %s: cannot write an entry: %s", self.directory, exc)
            return ()
        entry.offset = len(MAGIC) + _LENGTH.size + len(meta)
        self._written += st.st_size
        self._since_scan += st.st_size
        # Other processes write too: what they wrote is seen at the next scan,
        # made at the latest every tenth of the bound written here.
        if self._written > self.max_disk or self._since_scan > self.max_disk // 10:
            self.trim()
        return (st.st_ino, st.st_mtime_ns)

    def ident(self, key: bytes) -> tuple[int, int] | tuple[()]:
        """The current file of ``key``'s (inode, mtime_ns), () if there is none."""
        try:
            st = os.stat(self.file_of(key))
        except OSError:
            return ()
        return (st.st_ino, st.st_mtime_ns)

    def read(self, key: bytes, body_up_to: int) -> Entry | None:
        """``key``'s entry from its file, with its body when it has ``body_up_to`` bytes or fewer."""
        path = self.file_of(key)
        try:
            with open(path, "rb") as src:
                st = os.fstat(src.fileno())
                entry = _parse(src, key)
                if entry is None:
                    log.warning("cache %s: dropped a damaged entry file %s", self.directory, path)
                    _unlink(path)
                    return None
                if entry.length <= body_up_to:
                    entry.body = src.read(entry.length)
                    if len(entry.body) != entry.length:
                        _unlink(path)
                        return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache %s: cannot read %s: %s", self.directory, path, exc)
            return None
        entry.ident = (st.st_ino, st.st_mtime_ns)
        return entry

    def body(self, entry: Entry, size: int = 256 * 1024):  # type: ignore[no-untyped-def]
        """An entry's body from its file, piece by piece (a generator); stops short if the file went away."""
        try:
            with open(self.file_of(entry.key), "rb") as src:
                if (os.fstat(src.fileno()).st_ino,) != entry.ident[:1]:
                    return
                src.seek(entry.offset)
                left = entry.length
                while left > 0:
                    piece = src.read(min(size, left))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
        except OSError:
            return

    def remove(self, key: bytes) -> bool:
        return _unlink(self.file_of(key))

    # -- fill locks shared by the processes (``locks/``, skipped by ``files``) --------

    def _lock_file(self, key: bytes) -> str:
        return os.path.join(self.directory, "locks", key_hash(key))

    def lock(self, key: bytes, stale_after: float) -> bool:
        """Take ``key``'s fill lock for every process of the directory; False while another process holds it.

        A lock whose holder is gone, or older than ``stale_after`` seconds
        (as nginx's ``cache_lock_age``), is taken over. When no lock file can
        be made at all, the fill goes ahead (per process only, as before).
        """
        path = self._lock_file(key)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if not _stale_lock(path, stale_after):
                    return False
                _unlink(path)
                continue
            except FileNotFoundError:
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                except OSError:
                    return True
                continue
            except OSError:
                return True
            with os.fdopen(fd, "wb") as out:
                out.write(b"%d\n" % os.getpid())
            return True
        return False

    def locked(self, key: bytes) -> bool:
        """Whether some process holds ``key``'s fill lock."""
        return os.path.exists(self._lock_file(key))

    def unlock(self, key: bytes) -> None:
        _unlink(self._lock_file(key))

    def files(self) -> list[tuple[str, os.stat_result]]:
        """Every entry file, with its stat."""
        out = []
        try:
            subdirs = list(os.scandir(self.directory))
        except OSError:
            return out
        for sub in subdirs:
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            try:
                for item in os.scandir(sub.path):
                    try:
                        out.append((item.path, item.stat()))
                    except OSError:
                        pass
            except OSError:
                pass
        return out

    def _usage(self) -> int:
        return sum(st.st_size for _, st in self.files())

    def trim(self) -> None:
        """Count what the directory holds; past ``max_disk``, remove the oldest files until it holds 90%."""
        files = sorted(self.files(), key=lambda item: item[1].st_mtime_ns)
        total = sum(st.st_size for _, st in files)
        self._since_scan = 0
        goal = self.max_disk * 9 // 10 if total > self.max_disk else total
        for path, st in files:
            if total <= goal:
                break
            if _unlink(path):
                total -= st.st_size
        self._written = total

    def keys_of_files(self) -> list[tuple[bytes, str]]:
        """(key, file) of every readable entry file (for a purge by key prefix)."""
        out = []
        for path, _ in self.files():
            try:
                with open(path, "rb") as src:
                    entry = _parse(src, None)
            except OSError:
                continue
            if entry is not None:
                out.append((entry.key, path))
        return out

    def clear(self) -> int:
        count = 0
        for path, _ in self.files():
            count += _unlink(path)
        self._written = 0
        return count


def _parse(src: object, key: bytes | None) -> Entry | None:
    """The metadata of an entry file open at its start; None when damaged or (``key`` given) another key's."""
    head = src.read(len(MAGIC) + _LENGTH.size)  # type: ignore[attr-defined]
    if len(head) != len(MAGIC) + _LENGTH.size or not head.startswith(MAGIC):
        return None
    (size,) = _LENGTH.unpack(head[len(MAGIC):])
    if size > MAX_META:
        return None
    try:
        meta = json.loads(src.read(size))  # type: ignore[attr-defined]
        found = meta["key"].encode("latin-1")
        if key is not None and found != key:
            return None  # a hash collision, or a file put there by hand
        vary = meta["vary"]
        return Entry(
            key=found, status=int(meta["status"]),
            headers=tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in meta["headers"]),
            body=None, length=int(meta["length"]), stored=float(meta["stored"]), expires=float(meta["expires"]),
            vary=None if vary is None else tuple(n.encode("latin-1") for n in vary),
            offset=len(MAGIC) + _LENGTH.size + size,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _stale_lock(path: str, stale_after: float) -> bool:
    """Whether a fill lock file is left by a process that is gone, or older than ``stale_after`` seconds."""
    try:
        with open(path, "rb") as src:
            pid = int(src.read(32) or b"0")
        age = time.time() - os.stat(path).st_mtime
    except (OSError, ValueError):
        return False  # being written or just removed: look again on the next poll
    if age > stale_after:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
