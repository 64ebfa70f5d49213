"""The files store: PHP's file names and layout (shared with PHP's own files handler),
atomic writes, flock locking across processes, expiry and gc."""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from fcgi_cluster.sessions import LockTimeout, StoreError, open_store
from tests._peers import REPO_ROOT

SLACK = 3.0


def sid() -> str:
    return secrets.token_hex(16)


def test_php_layout_levels_and_mode(tmp_path: pathlib.Path) -> None:
    store = open_store("files", f"2;640;{tmp_path}")
    key = "ab" + sid()
    store.write(key, b"data", 1440)
    path = tmp_path / "a" / "b" / f"sess_{key}"
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~_umask()
    assert store.read(key) == b"data"
    store.destroy(key)
    assert not path.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_replaces_the_file_atomically(tmp_path: pathlib.Path) -> None:
    store = open_store("files", str(tmp_path))
    key = sid()
    store.write(key, b"one", 1440)
    first_inode = (tmp_path / f"sess_{key}").stat().st_ino
    with open(tmp_path / f"sess_{key}", "rb") as reader:
        store.write(key, b"two", 1440)
        # A reader that opened the old file still sees all of the old data.
        assert reader.read() == b"one"
    assert (tmp_path / f"sess_{key}").stat().st_ino != first_inode
    assert store.read(key) == b"two"
    assert sorted(os.listdir(tmp_path)) == [f"sess_{key}"]  # no temporary file left


def test_unsafe_ids_are_refused(tmp_path: pathlib.Path) -> None:
    store = open_store("files", str(tmp_path / "s"))
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            store.write(bad, b"x", 1)
    assert not (tmp_path / "escape").exists()


def test_lock_file_lives_while_held(tmp_path: pathlib.Path) -> None:
    store = open_store("files", str(tmp_path))
    key = sid()
    token = store.acquire_lock(key, expire=30, wait=1, retry_interval=0.01)
    lock_path = tmp_path / f"sess_{key}.lock"
    assert lock_path.exists()
    assert token in lock_path.read_bytes()
    store.write(key, b"x", 1440)  # the data file's rename leaves the lock alone
    assert lock_path.exists()
    store.release_lock(key, token)
    assert not lock_path.exists()
    store.close()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from fcgi_cluster.sessions import open_store
    store = open_store("files", sys.argv[1])
    store.acquire_lock(sys.argv[2], expire=300, wait=5, retry_interval=0.01)
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_lock_excludes_another_process_and_dies_with_it(tmp_path: pathlib.Path) -> None:
    key = sid()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), key],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = open_store("files", str(tmp_path))
        with pytest.raises(LockTimeout):
            store.acquire_lock(key, expire=30, wait=0.3, retry_interval=0.02)
        holder.kill()
        holder.wait(10)
        # The kernel dropped the dead holder's flock: no waiting for its 300 s expiry.
        started = time.monotonic()
        token = store.acquire_lock(key, expire=30, wait=SLACK, retry_interval=0.01)
        assert time.monotonic() - started < SLACK
        store.release_lock(key, token)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        holder.stdout.close()


def test_gc_removes_old_sessions_and_stale_locks(tmp_path: pathlib.Path) -> None:
    store = open_store("files", f"1;{tmp_path}")
    old, fresh, locked = sid(), sid(), sid()
    for key in (old, fresh, locked):
        store.write(key, b"x", 1440)
    long_ago = time.time() - 5000
    os.utime(tmp_path / old[0] / f"sess_{old}", (long_ago, long_ago))
    # A lock file left by a crashed holder, and one held right now.
    stale_lock = tmp_path / fresh[0] / f"sess_{fresh}.lock"
    stale_lock.write_bytes(b"0 dead|1|x\n")
    os.utime(stale_lock, (long_ago, long_ago))
    token = store.acquire_lock(locked, expire=30, wait=1, retry_interval=0.01)
    held_lock = tmp_path / locked[0] / f"sess_{locked}.lock"
    os.utime(held_lock, (long_ago, long_ago))

    assert store.gc(1440) == 1
    assert not (tmp_path / old[0] / f"sess_{old}").exists()
    assert store.read(fresh) == b"x"
    assert not stale_lock.exists()
    assert held_lock.exists(), "gc must not remove a lock someone holds"
    store.release_lock(locked, token)


def test_expiry_follows_max_lifetime(tmp_path: pathlib.Path) -> None:
    store = open_store("files", str(tmp_path), max_lifetime=100)
    key = sid()
    store.write(key, b"x", 100)
    path = tmp_path / f"sess_{key}"
    os.utime(path, (time.time() - 90, time.time() - 90))
    assert store.read(key) == b"x"
    os.utime(path, (time.time() - 110, time.time() - 110))
    assert store.read(key) is None and not store.exists(key)
    store.touch(key, 100)  # a touch revives what gc has not removed yet: PHP's rule too
    assert store.read(key) == b"x"


def test_directory_errors(tmp_path: pathlib.Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):
            # root writes anywhere: check a path under a file instead.
            (tmp_path / "file").write_text("")
            with pytest.raises(StoreError, match="files store"):
                open_store("files", str(tmp_path / "file" / "sub"))
        else:
            with pytest.raises(StoreError, match="not writable"):
                open_store("files", str(read_only))
    finally:
        read_only.chmod(0o700)


def test_php_files_handler_shares_the_directory(tmp_path: pathlib.Path) -> None:
    """PHP's own files handler reads what we write and writes what we read."""
    php = shutil.which("php")
    assert php is not None, "the php CLI is missing: run `make deps` (it comes with php-fpm)"
    store = open_store("files", str(tmp_path))
    key = "p" + sid()[:25]
    store.write(key, b'n|i:41;', 1440)
    script = (
        "session_id($argv[1]); session_start(); $_SESSION['n'] += 1; $_SESSION['who'] = 'php';"
        " session_write_close(); echo $_SESSION['n'];"
    )
    result = subprocess.run(
        [php, "-d", f"session.save_path={tmp_path}", "-d", "session.save_handler=files",
         "-d", "session.serialize_handler=php", "-d", "session.use_strict_mode=0", "-r", script, key],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("42")
    assert store.read(key) == b'n|i:42;who|s:3:"php";'


def test_two_stores_exclude_each_other_by_flock(tmp_path: pathlib.Path) -> None:
    """Two store objects (as two worker processes would have) on one directory: the
    flock, not the in-process gate, keeps their increments apart."""
    import threading

    stores = [open_store("files", str(tmp_path)) for _ in range(2)]
    key = sid()
    stores[0].write(key, b"0", 1440)
    errors: list[BaseException] = []

    def work(store) -> None:
        try:
            for _ in range(40):
                token = store.acquire_lock(key, expire=30, wait=30, retry_interval=0.001)
                try:
                    store.write(key, str(int(store.read(key)) + 1).encode(), 1440)
                finally:
                    store.release_lock(key, token)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[n % 2],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert stores[0].read(key) == b"160"
    assert not (tmp_path / f"sess_{key}.lock").exists()
