"""With `processes = 2`, `ctl status` says how old each process's figures are: a stopped child goes stale."""

from __future__ import annotations

import os
import pathlib
import signal

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from fcgi_cluster.frontend._status_share import STALE_SECONDS

from .test_frontend_control import ctl, status, two_workers_under_control, who
from .test_frontend_reload import wait_for


def rows(control: str) -> dict[int, dict]:
    return {row["pid"]: row for row in status(control)["processes"]}


def test_a_child_that_stops_publishing_is_marked_stale_with_its_age(tmp_path: pathlib.Path) -> None:
    with two_workers_under_control(tmp_path, processes=2) as (port, control, a, b, process):
        wait_for(lambda: len(rows(control)) == 2, timeout=30)
        answering = status(control)["process"]["pid"]
        sibling = next(pid for pid in rows(control) if pid != answering)
        # Both fresh: the answering one is now, the sibling published a moment ago.
        wait_for(lambda: not rows(control)[sibling]["stale"], timeout=30)
        fresh = rows(control)
        assert fresh[answering]["age"] == 0.0 and not fresh[answering]["stale"]
        assert isinstance(fresh[sibling]["age"], float)
        os.kill(sibling, signal.SIGSTOP)  # a child of the front-end this test started; resumed below
        try:
            wait_for(lambda: rows(control)[sibling]["stale"], timeout=30)
            stale = rows(control)[sibling]
            assert stale["age"] > STALE_SECONDS
            # Stale, not gone: its last figures still count, and are said to be old.
            metrics = ctl(control, "metrics")
            assert metrics.returncode == 0, metrics.stderr
            ages = {sample.labels["pid"]: sample.value for family in text_string_to_metric_families(metrics.stdout)
                    if family.name == "fcgi_cluster_status_age_seconds" for sample in family.samples}
            assert ages[str(sibling)] > STALE_SECONDS and ages[str(answering)] == 0.0
        finally:
            os.kill(sibling, signal.SIGCONT)
        # Publishing again: fresh once more (its age and its mark agree).
        wait_for(lambda: (lambda row: not row["stale"] and row["age"] <= STALE_SECONDS)(rows(control)[sibling]),
                 timeout=30)
        assert who(port) in (a, b)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
