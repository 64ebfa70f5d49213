"""benchmarks/http2.py runs end to end: both front doors answer every request over h2c."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests._peers import REPO_ROOT


def test_http2_bench_quick_writes_rows_without_failures(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "http2.py"), "--quick", "--requests", "400", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["cpus"]
    rows = {(r["scenario"], r["front"]): r for r in results["http2"]["rows"]}
    assert set(rows) == {(s, f) for s in ("5 B", "16 KiB") for f in ("ours", "nginx")}
    for row in rows.values():
        assert row["failed"] == 0 and row["runs"][0]["succeeded"] == 400 and row["req_per_s"] > 0
    assert "| 5 B | ours |" in (tmp_path / "report.md").read_text()
