"""Session users under load for the failover tests: a cluster file run by ``up``, and the counter's bookkeeping.

``session_cluster(directory, session)`` writes a cluster file with one pool of
``workers.counter`` (its ``session`` table given) behind our front-end and runs
``fcgi-cluster up -c`` on it. ``Crowd`` runs session users, each its own cookie,
in threads, bounded in count and time, and records every answer; ``Tally``
reads the records: errors, the longest gap without a successful answer, and
every update a user saw succeed and later found lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import threading
import time
from collections.abc import Iterator, Mapping

from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process
from tests.sessions._php_servers import CookieClient

#: Requests per user, at most, whatever the clock says.
MAX_REQUESTS_PER_USER = 3000


def _toml_value(value: object) -> str:
    return json.dumps(value)  # a JSON string or number is a TOML one


@contextlib.contextmanager
def session_cluster(directory: pathlib.Path, session: Mapping[str, object], *, threads: int = 8) -> Iterator[int]:
    """``fcgi-cluster up`` on a cluster file: pool ``app`` (the counter, with ``session``), the front-end.

    Yields:
        The front-end's HTTP port, once the pool and the front-end listen.
    """
    http_port, pool_port = free_port(), free_port()
    table = ", ".join(f"{key} = {_toml_value(value)}" for key, value in session.items())
    path = directory / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "{LOOPBACK}:{http_port}"\nprocesses = 1\naccess_log = false\n'
        f'[upstream.app]\nservers = ["{LOOPBACK}:{pool_port}"]\n'
        '[[route]]\nprefix = "/"\nupstream = "app"\n'
        f'[pool.app]\nlisten = "{LOOPBACK}:{pool_port}"\napp = "workers.counter:app"\nthreads = {threads}\n'
        f"session = {{ {table} }}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process([python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(path)], cwd=REPO_ROOT,
                     env=env, ready_port=http_port, name="fcgi-up", log_path=directory / "up.log"):
        yield http_port


@dataclasses.dataclass(frozen=True)
class Answer:
    """One request of one user: when it ran, its status, and for a 200 the session id and counter."""

    started: float
    ended: float
    status: int
    sid: str | None = None
    n: int | None = None


class Crowd:
    """``users`` session users visiting ``/`` in a loop, each in its thread, until ``stop()``.

    Bounded: a user stops after ``MAX_REQUESTS_PER_USER`` requests or ``limit``
    seconds. A request that fails at the socket is recorded with status 0.
    """

    def __init__(self, port: int, users: int, *, limit: float = 90, pause: float = 0.01) -> None:
        self.port = port
        self.answers: list[list[Answer]] = [[] for _ in range(users)]
        self._stop = threading.Event()
        self._limit = limit
        self._pause = pause
        self._pool = concurrent.futures.ThreadPoolExecutor(users)
        self._futures = [self._pool.submit(self._browse, index) for index in range(users)]

    def _browse(self, index: int) -> None:
        client = CookieClient(self.port, timeout=30)
        deadline = time.monotonic() + self._limit
        mine = self.answers[index]
        try:
            while not self._stop.is_set() and time.monotonic() < deadline and len(mine) < MAX_REQUESTS_PER_USER:
                started = time.monotonic()
                try:
                    status, _, body = client.get("/")
                except OSError:
                    mine.append(Answer(started, time.monotonic(), 0))
                    client.close()
                    client = CookieClient(self.port, timeout=30)
                    continue
                ended = time.monotonic()
                if status == 200:
                    mine.append(Answer(started, ended, status, client.sid, json.loads(body)["n"]))
                else:
                    mine.append(Answer(started, ended, status))
                time.sleep(self._pause)
        finally:
            client.close()

    def wait_until(self, predicate, *, limit: float, what: str) -> None:
        """Sleep until ``predicate(self)`` holds, at most ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {limit} s: {what}")
            time.sleep(0.1)

    def successes_since(self, moment: float) -> int:
        """How many 200s started after ``moment``, over all users."""
        return sum(1 for mine in self.answers for a in mine if a.status == 200 and a.started > moment)

    def every_user_served_since(self, moment: float, count: int = 3) -> bool:
        """Whether each user has had ``count`` 200s in a row that started after ``moment``."""
        for mine in self.answers:
            recent = [a for a in mine if a.started > moment]
            if len(recent) < count or any(a.status != 200 for a in recent[-count:]):
                return False
        return True

    def stop(self) -> None:
        """Stop every user and wait for them."""
        self._stop.set()
        for future in self._futures:
            future.result(timeout=120)
        self._pool.shutdown()


@dataclasses.dataclass
class Tally:
    """What ``Crowd`` saw around a fault at ``fault`` (monotonic seconds).

    Attributes:
        requests: Every request made.
        errors: Requests not answered 200 (by status; 0 = a socket error).
        gap: The longest time with no successful answer for the whole crowd,
            from the last 200 that ended before the fault on.
        user_gap: The same for the worst-off user: the longest time one
            user waited from a 200 to the next, from the last before the
            fault on (what a user whose session sat on the failed node saw).
        lost: Updates a user saw succeed that the store later did not have,
            with the time each one's answer ended.
        skipped: Counter steps of more than one (a request that saved and
            then failed, or was retried after saving).
    """

    requests: int = 0
    errors: dict[int, int] = dataclasses.field(default_factory=dict)
    gap: float = 0.0
    user_gap: float = 0.0
    lost: list[float] = dataclasses.field(default_factory=list)
    skipped: int = 0

    @classmethod
    def of(cls, crowd: Crowd, fault: float) -> Tally:
        tally = cls()
        ends = []
        for mine in crowd.answers:
            tally.requests += len(mine)
            seen: list[Answer] = []  # this user's successes in the session it has now
            previous_end: float | None = None
            for answer in mine:
                if answer.status != 200:
                    tally.errors[answer.status] = tally.errors.get(answer.status, 0) + 1
                    continue
                ends.append(answer.ended)
                if previous_end is not None and answer.ended > fault:
                    tally.user_gap = max(tally.user_gap, answer.ended - previous_end)
                previous_end = answer.ended
                if seen and answer.sid != seen[-1].sid:
                    # A new session: the old one was gone from the store (strict
                    # mode gives an unknown id a new one), with all its updates.
                    tally.lost += [a.ended for a in seen]
                    seen = []
                elif seen and answer.n <= seen[-1].n:
                    tally.lost += [a.ended for a in seen if a.n >= answer.n]
                    seen = [a for a in seen if a.n < answer.n]
                elif seen and answer.n > seen[-1].n + 1:
                    tally.skipped += 1
                seen.append(answer)
        ends.sort()
        before = [end for end in ends if end <= fault]
        after = [end for end in ends if end > fault]
        if before and after:
            moments = [before[-1], *after]
            tally.gap = max(b - a for a, b in zip(moments, moments[1:]))
        return tally

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> str:
        rate = self.error_count / self.requests if self.requests else 0.0
        return (f"{self.requests} requests, {self.error_count} errors ({rate:.1%}: {self.errors}), "
                f"gap {self.gap:.2f} s (worst user {self.user_gap:.2f} s), {len(self.lost)} acknowledged updates lost, {self.skipped} skips")
