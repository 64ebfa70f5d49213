"""The control listener's dashboard in a real headless browser (Debian's chromium).

A real pool (php-fpm-style status page on), a real front-end under a bounded
load, and chromium loading ``GET /`` with a virtual time budget long enough
for several refreshes: the page shows every server and the pool, has
refreshed more than once, and no script error reached it or the console.
Set DASHBOARD_SCREENSHOT=PATH to keep its screenshot (docs/dashboard.png is made so).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from tests._peers import REPO_ROOT, free_port, python_executable, run_process

from .test_frontend_process import http_get
from ._frontend import frontend_from_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, profile: pathlib.Path, *args: str, wait: str = "--virtual-time-budget=9000") -> subprocess.CompletedProcess:
    """Run headless chromium on ``url``; ``wait`` says how long the page runs first: in
    virtual time (timers run fast: several refreshes in a moment)."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1100,760",
            wait, *args, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-deps.sh installs it)")
def test_dashboard_shows_every_server_and_pool_and_refreshes(tmp_path: pathlib.Path) -> None:
    port, cport, pool_port, dead = free_port(), free_port(), free_port(), free_port()
    (tmp_path / "pool.conf").write_text(
        f"[www]\nlisten = 127.0.0.1:{pool_port}\napp = workers.echo:app\npm = static\n"
        "pm.max_children = 2\npm.status_path = /status\n")
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\naccess_log = false\ncontrol = "127.0.0.1:{cport}"\n'
        f'pool_status_path = "/status"\n\n[upstream.app]\nservers = ["127.0.0.1:{pool_port}", "127.0.0.1:{dead}"]\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    pool_argv = [python_executable(), "-m", "fcgi_cluster.cli", "worker", "-c", str(tmp_path / "pool.conf")]
    with run_process(pool_argv, cwd=REPO_ROOT, env=env, ready_port=pool_port, name="pool"), \
            frontend_from_file(path, port) as process:
        shot = pathlib.Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Bounded load while the browser looks: 2 x 1000 requests of 5 ms or more.
            loads = [pool.submit(lambda: [http_get(port, "/x?sleep_ms=5")[0] for _ in range(1000)]) for _ in range(2)]
            dom = chromium(f"http://127.0.0.1:{cport}/", tmp_path / "profile", "--dump-dom")
            # A minute of virtual time: some 30 refreshes, so the plots have points.
            done = chromium(f"http://127.0.0.1:{cport}/", tmp_path / "profile", f"--screenshot={shot.resolve()}",
                            wait="--virtual-time-budget=60000")
            # The dead server's tries went to the live one.
            assert [status for load in loads for status in load.result()] == [200] * 2000
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        updates = int(re.search(r'data-updates="(\d+)"', page).group(1))
        assert updates >= 2, page[-2000:]
        assert f"127.0.0.1:{pool_port}" in page and f"127.0.0.1:{dead}" in page
        assert re.search(r'<span class="failing"[^>]*>failing</span>', page)  # the dead server
        assert "<td class=\"l\">www</td>" in page or ">www<" in page  # the pool's status, fetched over FastCGI
        assert "Connection refused" in page  # the dead one's pool status
        assert re.search(r'<div id="errors" class="error">\s*</div>', page), page[-2000:]
        assert "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
        assert done.returncode == 0, done.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert process.poll() is None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-deps.sh installs it)")
def test_dashboard_with_a_control_token_asks_with_the_token_after_the_hash(tmp_path: pathlib.Path) -> None:
    port, cport, worker = free_port(), free_port(), free_port()
    token = tmp_path / "control.token"
    token.write_text("dash-token-7e1\n")
    token.chmod(0o600)
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\naccess_log = false\ncontrol = "127.0.0.1:{cport}"\n'
        f'control_token_file = "{token}"\n\n[upstream.app]\nservers = ["127.0.0.1:{worker}"]\n')
    with frontend_from_file(path, port) as process:
        page = chromium(f"http://127.0.0.1:{cport}/#dash-token-7e1", tmp_path / "profile", "--dump-dom").stdout
        assert int(re.search(r'data-updates="(\d+)"', page).group(1)) >= 2, page[-2000:]
        assert f"127.0.0.1:{worker}" in page
        assert "0.0 s old" in page  # the process row says how old its figures are
        # Without the token the page loads but its figures are refused, and it says how to open it.
        page = chromium(f"http://127.0.0.1:{cport}/", tmp_path / "profile", "--dump-dom").stdout
        assert re.search(r'data-updates="0"', page), page[-2000:]
        assert "HTTP 401" in page and "/#TOKEN" in page, page[-2000:]
        assert process.poll() is None


def test_each_upstream_may_name_its_pools_status_path(tmp_path: pathlib.Path) -> None:
    # Two pools with different pm.status_path: one upstream names its own, the
    # other takes the front-end's pool_status_path; /pools fetches each at its path.
    port, cport, first, second = free_port(), free_port(), free_port(), free_port()
    for name, pool_port, status_path in (("one", first, "/fpm-status"), ("two", second, "/status")):
        (tmp_path / f"{name}.conf").write_text(
            f"[{name}]\nlisten = 127.0.0.1:{pool_port}\napp = workers.hello:app\npm = static\n"
            f"pm.max_children = 1\npm.status_path = {status_path}\n")
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\naccess_log = false\ncontrol = "127.0.0.1:{cport}"\n'
        f'pool_status_path = "/status"\n\n'
        f'[upstream.one]\nservers = ["127.0.0.1:{first}"]\nstatus_path = "/fpm-status"\n\n'
        f'[upstream.two]\nservers = ["127.0.0.1:{second}"]\n\n'
        '[[route]]\nprefix = "/one/"\nupstream = "one"\n\n[[route]]\nprefix = "/"\nupstream = "two"\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))

    def pool(name: str, pool_port: int):
        argv = [python_executable(), "-m", "fcgi_cluster.cli", "worker", "-c", str(tmp_path / f"{name}.conf")]
        return run_process(argv, cwd=REPO_ROOT, env=env, ready_port=pool_port, name=f"pool {name}")

    with pool("one", first), pool("two", second), frontend_from_file(path, port):
        status, _, body = http_get(cport, "/pools")
        assert status == 200, body
        report = json.loads(body)
        pools = report["pools"]
        assert pools[f"127.0.0.1:{first}"]["status"]["pool"] == "one", pools
        assert pools[f"127.0.0.1:{second}"]["status"]["pool"] == "two", pools
        assert report["path"] == "/fpm-status, /status"
