"""The peer helpers of tests/_peers.py, checked against flup, a FastCGI responder not ours.

If these fail, the peers or their configs are broken, not fcgi_cluster.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time

import pytest

from tests._peers import (
    LOOPBACK,
    PeerStartError,
    cgi_fcgi_request,
    free_port,
    parse_cgi_response,
    python_executable,
    run_process,
)

pytestmark = pytest.mark.e2e


def http_request(port, method, path, body=None):
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_front_end(peer, flup):
    status, body = http_request(peer.port, "GET", "/some/where%20else?x=1")
    assert status == 200, peer.logs()
    report = json.loads(body)
    assert report["worker"].startswith(f"{flup.host}:{flup.port} ")
    assert report["environ"]["SCRIPT_NAME"] == ""
    assert report["environ"]["PATH_INFO"] == "/some/where else"
    assert report["environ"]["QUERY_STRING"] == "x=1"

    upload = os.urandom(1_000_000)
    status, body = http_request(peer.port, "POST", "/upload", upload)
    assert status == 200, peer.logs()
    report = json.loads(body)
    assert report["body_length"] == len(upload)
    assert report["body_sha256"] == hashlib.sha256(upload).hexdigest()

    status, body = http_request(peer.port, "GET", "/?size=300000&status=201")
    assert (status, body) == (201, b"x" * 300_000), peer.logs()


@pytest.mark.parametrize("keepalive", [False, True], ids=["keepalive-off", "keepalive-on"])
def test_nginx_in_front_of_flup(peers, keepalive):
    flup = peers.flup("workers.echo:app")
    nginx = peers.nginx(flup.host, flup.port, keepalive)
    assert ("fastcgi_keep_conn on;" in nginx.config_path.read_text()) is keepalive
    check_front_end(nginx, flup)


@pytest.mark.parametrize("mpxs", [False, True], ids=["mpxs-off", "mpxs-on"])
def test_haproxy_in_front_of_flup(peers, mpxs):
    flup = peers.flup("workers.echo:app", multiplexed=mpxs)
    haproxy = peers.haproxy(flup.host, flup.port, mpxs, get_values=mpxs)
    assert ("\n    option mpxs-conns\n" in haproxy.config_path.read_text()) is mpxs
    check_front_end(haproxy, flup)


def test_cgi_fcgi_request_to_flup(peers):
    flup = peers.flup("workers.echo:app")
    body = b"0123456789" * 10_000
    raw = cgi_fcgi_request(
        flup.host,
        flup.port,
        {"REQUEST_METHOD": "PUT", "PATH_INFO": "/put", "QUERY_STRING": "status=202"},
        body,
    )
    status, headers, answer = parse_cgi_response(raw)
    assert status == 202
    assert ("Content-Type", "application/json") in headers
    report = json.loads(answer)
    assert report["environ"]["REQUEST_METHOD"] == "PUT"
    assert report["environ"]["CONTENT_LENGTH"] == str(len(body))
    assert report["body_sha256"] == hashlib.sha256(body).hexdigest()
    # Only the params we gave, never the test process's environment.
    assert "PATH" not in report["environ"]


def test_run_process_reports_a_process_that_dies_at_start():
    script = "import sys; print('cannot start: no reason'); sys.exit(3)"
    with pytest.raises(PeerStartError, match="(?s)status 3.*cannot start: no reason"):
        with run_process([python_executable(), "-c", script], ready_port=free_port(), name="dies"):
            pass


def test_stop_process_also_stops_what_the_process_forked(tmp_path):
    # A parent that leaves behind a child ignoring SIGTERM, as a crashed nginx master would.
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log_path = tmp_path / "parent.log"
    with run_process([python_executable(), "-c", script], log_path=log_path) as process:
        deadline = time.monotonic() + 10
        while not log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.02)
        child_pid = int(log_path.read_text())
    assert process.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child_pid)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
