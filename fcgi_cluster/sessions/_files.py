"""The ``files`` store: one file per session in a directory, as PHP's files handler keeps them.

Layout: ``<directory>/[a/b/]sess_<sid>`` (PHP's name, and PHP's ``N;MODE;/path``
subdirectory levels taken from the id's first characters), so PHP's own files
handler can share the directory. Each write goes to a temporary file in the same
directory, is fsync'ed and renamed over the session file: a reader sees the old
data or the new, never half of it, even across a crash.

Expiry: a session file's mtime is its last write or touch (PHP's convention). The
store's ``max_lifetime`` (PHP's ``session.gc_maxlifetime``) decides expiry: a
file older than that reads as absent, and ``gc`` deletes it. ``write``'s and
``touch``'s ``ttl`` arguments are not stored (a file has no place for them that
PHP would honour); pass the same value as ``max_lifetime`` to ``open_store``.

Locking: ``fcntl.flock`` on a separate file ``sess_<sid>.lock``, not on the data
file, because a write renames a new inode over the data file: a lock taken on the
old inode would no longer guard the name. The kernel drops an flock when its
holder dies, so a crashed worker never leaves a session locked. A holder that
lives past ``expire`` is taken over: a waiter that finds the lock file's recorded
deadline passed unlinks it and locks a fresh one. Unlinking (by a taker, or by the
owner on release) happens under a short flock on a guard file in the directory
(``.sess-lock-guard``), so two waiters cannot both take over; and every acquirer
checks, once it has the flock, that the name still points at the inode it locked,
and starts again if not. Threads of one process first queue on the store's own
condition (one thread per session at a time, no polling), then take the flock
against other processes.

NFS: Linux emulates flock over NFS (v4, and v3 unless ``local_lock`` says
otherwise) with POSIX byte-range locks held by the server, so the lock works
across machines sharing the directory, and the rename is atomic on NFS too. POSIX
locks belong to a process, not to an open file, which is why this process's
threads also exclude each other in memory (above). What NFS lacks is a shared
clock: expiry compares times written by other machines with this one's clock, so
keep the clocks in sync (NTP).

PHP's own files handler locks the data file itself (flock on ``sess_<sid>``), so
PHP and Python share the files and their format, but not each other's locks.

Thread safety: the tables of held and queued locks are guarded by one
``threading.Condition``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from ._save_path import FilesPath
from ._store import LockTimeout, LockToken, SessionStore, StoreError

__all__ = ["FileStore"]

# PHP's default session.gc_maxlifetime (24 minutes).
DEFAULT_MAX_LIFETIME = 1440
_PREFIX = "sess_"
_LOCK_SUFFIX = ".lock"
_TEMP_MARK = ".tmp-"
# Per directory: flocked while a lock file is unlinked. Not "sess_": PHP's gc and ours skip it.
_GUARD = ".sess-lock-guard"


class FileStore(SessionStore):
    """Sessions in files, locked with flock; works with no server at all.

    Args:
        path: The parsed save_path (directory, subdirectory levels, file mode).
        max_lifetime: Seconds after its last write/touch that a session expires.
        create: Create the directory (mode 0700) when it does not exist.

    Raises:
        StoreError: the directory does not exist (and ``create`` is false), or is
            not a writable directory.
    """

    def __init__(self, path: FilesPath, *, max_lifetime: int = DEFAULT_MAX_LIFETIME, create: bool = True) -> None:
        self._directory = os.path.abspath(path.directory)
        self._levels = path.levels
        self._mode = path.mode
        # Subdirectories: the file mode plus search permission wherever it allows reading.
        self._dir_mode = path.mode | ((path.mode & 0o444) >> 2)
        self._max_lifetime = max_lifetime
        # Guards _held, _reserved and the guard files; its waiters are this process's
        # threads queued for a session another thread of the process holds.
        self._gate = threading.Condition()
        self._held: dict[LockToken, tuple[str, int]] = {}
        self._reserved: dict[str, tuple[LockToken, float]] = {}
        self._owner = f"{socket.gethostname()}|{os.getpid()}"
        try:
            if create:
                os.makedirs(self._directory, mode=0o700, exist_ok=True)
            if not os.path.isdir(self._directory):
                raise StoreError(f"files store: {self._directory} is not a directory")
            if not os.access(self._directory, os.W_OK | os.X_OK):
                raise StoreError(f"files store: {self._directory} is not writable")
        except OSError as exc:
            raise StoreError(f"files store: {self._directory}: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"FileStore({self._directory!r}, levels={self._levels})"

    # -- paths -------------------------------------------------------------

    def _session_dir(self, sid: str) -> str:
        if not sid or "/" in sid or sid.startswith("."):
            # The session layer checks ids; this is the last line against a path escape.
            raise ValueError(f"unsafe session id {sid!r}")
        if len(sid) < self._levels:
            raise ValueError(f"session id {sid!r} shorter than {self._levels} subdirectory levels")
        return os.path.join(self._directory, *sid[: self._levels])

    def _data_path(self, sid: str) -> str:
        return os.path.join(self._session_dir(sid), _PREFIX + sid)

    def _lock_path(self, sid: str) -> str:
        return self._data_path(sid) + _LOCK_SUFFIX

    @contextlib.contextmanager
    def _errors(self, what: str, sid: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(f"files store: {what} {sid}: {exc.strerror or exc}") from None

    def _ensure_dir(self, sid: str) -> str:
        directory = self._session_dir(sid)
        if self._levels:
            os.makedirs(directory, mode=self._dir_mode, exist_ok=True)
        return directory

    def _expired(self, mtime: float, now: float | None = None) -> bool:
        return mtime + self._max_lifetime < (time.time() if now is None else now)

    # -- data --------------------------------------------------------------

    def read(self, sid: str) -> bytes | None:
        """The session's data, or None when there is none or it expired."""
        path = self._data_path(sid)
        with self._errors("read", sid):
            try:
                with open(path, "rb") as file:
                    if self._expired(os.fstat(file.fileno()).st_mtime):
                        return None
                    return file.read()
            except FileNotFoundError:
                return None

    def write(self, sid: str, data: bytes, ttl: int) -> None:
        """Replace the session's file atomically (temp file, fsync, rename); mtime = now."""
        with self._errors("write", sid):
            directory = self._ensure_dir(sid)
            final = os.path.join(directory, _PREFIX + sid)
            temp = f"{final}{_TEMP_MARK}{secrets.token_hex(6)}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            os.close(fd)
            try:
                os.replace(temp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

    def touch(self, sid: str, ttl: int) -> None:
        """Set the session file's mtime to now (no error when it does not exist)."""
        with self._errors("touch", sid):
            try:
                os.utime(self._data_path(sid))
            except FileNotFoundError:
                pass

    def destroy(self, sid: str) -> None:
        """Delete the session's file (not its lock: the holder releases that)."""
        with self._errors("destroy", sid):
            try:
                os.unlink(self._data_path(sid))
            except FileNotFoundError:
                pass

    def exists(self, sid: str) -> bool:
        """Whether the session's file exists and has not expired."""
        with self._errors("stat", sid):
            try:
                return not self._expired(os.stat(self._data_path(sid)).st_mtime)
            except FileNotFoundError:
                return False

    def gc(self, max_lifetime: int) -> int:
        """Delete session files idle longer than ``max_lifetime`` s, and stale lock/temp files.

        Returns:
            How many session files were deleted.
        """
        cutoff = time.time() - max_lifetime
        removed = 0
        try:
            walk = list(os.walk(self._directory))
        except OSError as exc:
            raise StoreError(f"files store: gc {self._directory}: {exc.strerror or exc}") from None
        for directory, _, names in walk:
            for name in names:
                if not name.startswith(_PREFIX):
                    continue
                path = os.path.join(directory, name)
                try:
                    mtime = os.stat(path).st_mtime
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StoreError(f"files store: gc {path}: {exc.strerror or exc}") from None
                if mtime >= cutoff:
                    continue
                if name.endswith(_LOCK_SUFFIX):
                    with self._gate:
                        mine = path in self._reserved
                    if not mine:
                        self._remove_stale_lock(directory, path)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    if _TEMP_MARK not in name:
                        removed += 1
        return removed

    def _remove_stale_lock(self, directory: str, path: str) -> None:
        """Unlink a lock file left by a dead holder, only if nobody holds it now."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        try:
            with self._directory_guard(directory):
                if _same_inode(fd, path):
                    os.unlink(path)
        finally:
            os.close(fd)

    # -- locking -----------------------------------------------------------

    @contextlib.contextmanager
    def _directory_guard(self, directory: str) -> Iterator[None]:
        """Exclusive use of a directory's lock files: serializes unlinking them.

        An flock on a guard file in the directory (between processes) taken under
        the store's condition lock (between this process's threads, since over NFS
        flock becomes a POSIX lock, which a process's threads share). Held only
        around a stat and an unlink.
        """
        with self._gate:
            fd = os.open(os.path.join(directory, _GUARD), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def acquire_lock(self, sid: str, *, expire: float, wait: float, retry_interval: float) -> LockToken:
        """Lock the session with flock on ``sess_<sid>.lock``; see the module docstring.

        Raises:
            LockTimeout: another holder kept it, unexpired, for ``wait`` seconds.
            StoreError: the lock file cannot be created.
        """
        deadline = time.monotonic() + wait
        token = f"{self._owner}|{secrets.token_hex(16)}".encode()
        path = self._lock_path(sid)
        self._reserve(sid, path, token, expire, deadline, wait)
        try:
            return self._flock(sid, path, token, expire, deadline, wait, retry_interval)
        except BaseException:
            self._unreserve(path, token)
            raise

    def _reserve(self, sid: str, path: str, token: LockToken, expire: float, deadline: float, wait: float) -> None:
        """Take the session within this process first: one thread at a time per session.

        flock alone would do on a local disk (each open file is its own lock owner),
        but over NFS it is a POSIX lock, owned by the process: two threads would both
        "hold" it. A holder past its expiry is taken over here too.
        """
        with self._gate:
            while True:
                current = self._reserved.get(path)
                now = time.time()
                if current is None or current[1] <= now:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeout(f"session {sid} is locked by another request (waited {wait:g}s)")
                self._gate.wait(min(remaining, current[1] - now))
            self._reserved[path] = (token, time.time() + expire)

    def _unreserve(self, path: str, token: LockToken) -> None:
        with self._gate:
            current = self._reserved.get(path)
            if current is not None and current[0] == token:
                del self._reserved[path]
                self._gate.notify_all()

    def _flock(
        self, sid: str, path: str, token: LockToken, expire: float, deadline: float, wait: float, retry_interval: float
    ) -> LockToken:
        """Take the session between processes: flock on its lock file (module docstring)."""
        with self._errors("lock", sid):
            directory = self._ensure_dir(sid)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._mode)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self._lock_expired(fd):
                        self._take_over(directory, fd, path)
                        os.close(fd)
                        continue
                    os.close(fd)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockTimeout(f"session {sid} is locked by another request (waited {wait:g}s)") from None
                    time.sleep(min(retry_interval, remaining))
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                if not _same_inode(fd, path):
                    # Released (unlinked) or taken over between our open and our flock.
                    os.close(fd)
                    continue
                try:
                    record = b"%.3f %s\n" % (time.time() + expire, token)
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, record, 0)
                except BaseException:
                    os.close(fd)
                    raise
                with self._gate:
                    self._held[token] = (path, fd)
                return token

    def _lock_expired(self, fd: int) -> bool:
        try:
            record = os.pread(fd, 256, 0)
            deadline = float(record.split(b" ", 1)[0])
        except (OSError, ValueError):
            # Empty: the holder is between its flock and its write. Not expired.
            return False
        return deadline < time.time()

    def _take_over(self, directory: str, fd: int, path: str) -> None:
        """Unlink an expired lock file, if the name still points at the inode we read."""
        with self._directory_guard(directory):
            if _same_inode(fd, path) and self._lock_expired(fd):
                os.unlink(path)

    def release_lock(self, sid: str, token: LockToken) -> None:
        """Release the lock if ``token`` (from this store object) still owns it."""
        path = self._lock_path(sid)
        with self._gate:
            held = self._held.get(token)
            if held is None or held[0] != path:
                return
            del self._held[token]
        fd = held[1]
        try:
            with self._errors("unlock", sid):
                with self._directory_guard(os.path.dirname(path)):
                    # Taken over after expiry: the name now belongs to someone else.
                    if _same_inode(fd, path):
                        os.unlink(path)
        finally:
            os.close(fd)
            self._unreserve(path, token)

    def close(self) -> None:
        """Release every lock this store still holds."""
        with self._gate:
            held, self._held = self._held, {}
        for token, (path, fd) in held.items():
            with contextlib.suppress(OSError):
                with self._directory_guard(os.path.dirname(path)):
                    if _same_inode(fd, path):
                        os.unlink(path)
            with contextlib.suppress(OSError):
                os.close(fd)
            self._unreserve(path, token)


def _same_inode(fd: int, path: str) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not unlinked, not replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

