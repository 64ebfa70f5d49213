"""The siblings' status reports: each row says how old its figures are; stale and gone ones."""

from __future__ import annotations

import json
import os
import pathlib
import time

from fcgi_cluster.frontend._status_share import GONE_SECONDS, STALE_SECONDS, StatusShare, merge


def report(pid: int, requests: int) -> dict:
    process = {"pid": pid, "clients": 0, "accepted": 1, "requests": requests, "requests_in_flight": 0,
               "age": 0.0, "stale": False}
    return {"time": time.time(), "process": process, "processes": [process], "upstreams": [], "caches": []}


def test_rows_carry_their_age_and_an_old_one_is_stale_a_dead_ones_left_out(tmp_path: pathlib.Path) -> None:
    share = StatusShare(str(tmp_path / "states"))
    now = time.time()
    ages = {4101: 1.0, 4102: STALE_SECONDS + 7, 4103: GONE_SECONDS + 30}
    for pid, age in ages.items():
        path = tmp_path / f"states.status.{pid}"
        path.write_text(json.dumps(report(pid, pid)))
        os.utime(path, (now - age, now - age))
    (tmp_path / "states.status.4104").write_text('{"process": ')  # half-written: skipped
    own = report(os.getpid(), 5)
    merged = merge(own, share.gather())
    rows = {row["pid"]: row for row in merged["processes"]}
    assert set(rows) == {os.getpid(), 4101, 4102}  # the one past GONE_SECONDS is a dead child's
    assert rows[os.getpid()]["age"] == 0.0 and not rows[os.getpid()]["stale"]
    assert 0.9 <= rows[4101]["age"] < STALE_SECONDS and not rows[4101]["stale"]
    assert rows[4102]["age"] >= STALE_SECONDS + 6.9 and rows[4102]["stale"]
    assert merged["process"]["pid"] == os.getpid()
