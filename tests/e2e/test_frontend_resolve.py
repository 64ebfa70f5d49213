"""Servers given by host name follow their DNS answer: a real dnsmasq, front-end and workers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import socket
import time

import pytest

from tests._peers import REPO_ROOT, free_port, run_process

from ._worker import worker_argv
from .test_frontend_process import http_get
from ._frontend import frontend_from_file
from .test_frontend_reload import wait_for

NAME = "app.cluster.test"


def dnsmasq(hosts: pathlib.Path, port: int, *extra: str):
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("dnsmasq is not installed (scripts/install-deps.sh installs dnsmasq-base)")
    argv = [binary, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--pid-file=", "--user=root",
            "--log-queries", "--log-facility=-", *extra]
    return run_process(argv, ready_port=port, name="dnsmasq")


def worker_on(host: str, port: int):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return run_process(worker_argv("workers.echo:app", f"{host}:{port}"), cwd=REPO_ROOT, env=env,
                       ready_port=port, ready_host=host, name=f"fcgi-worker-{host}")


def answered_by(port: int, target: str = "/x") -> str:
    status, _, body = http_get(port, target, timeout=30)
    assert status == 200, body
    return json.loads(body)["worker"].split()[0]


def test_traffic_follows_the_dns_answer_and_keeps_the_last_good_one(tmp_path: pathlib.Path) -> None:
    dns_port, worker_port, port = free_port(), free_port(), free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.2 {NAME}\n")
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = 1\naccess_log = false\n'
        f'resolver = "127.0.0.1:{dns_port}"\nresolver_timeout = "1s"\n\n'
        f'[upstream.app]\nresolve = "1s"\nservers = ["{NAME}:{worker_port}"]\n'
    )
    with (dnsmasq(hosts, dns_port) as dns, worker_on("127.0.0.2", worker_port),
          worker_on("127.0.0.3", worker_port), frontend_from_file(path, port) as process):
        log = pathlib.Path(process.log_path)
        wait_for(lambda: f"resolve {NAME}: 127.0.0.2" in log.read_text(), timeout=20)
        assert {answered_by(port) for _ in range(6)} == {f"127.0.0.2:{worker_port}"}

        # The answer changes: new requests go to the new address within the
        # interval, while one in flight on the old address finishes there.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(answered_by, port, "/x?sleep_ms=4000")
            time.sleep(0.5)
            hosts.write_text(f"127.0.0.3 {NAME}\n")
            dns.send_signal(signal.SIGHUP)
            wait_for(lambda: answered_by(port) == f"127.0.0.3:{worker_port}", timeout=20)
            assert {answered_by(port) for _ in range(6)} == {f"127.0.0.3:{worker_port}"}
            assert slow.result(30) == f"127.0.0.2:{worker_port}"

        # Two addresses: each a server of its own, round robin between them.
        hosts.write_text(f"127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")
        dns.send_signal(signal.SIGHUP)
        wait_for(lambda: f"resolve {NAME}: 127.0.0.2, 127.0.0.3" in log.read_text(), timeout=20)
        assert {answered_by(port) for _ in range(6)} == {f"127.0.0.2:{worker_port}", f"127.0.0.3:{worker_port}"}

        # The resolver goes away: the last good list is kept, the failure logged once.
        dns.send_signal(signal.SIGTERM)
        dns.wait(10)
        wait_for(lambda: f"resolve {NAME}: " in log.read_text() and "keeping" in log.read_text(), timeout=20)
        time.sleep(3.5)  # three more intervals of failing
        text = log.read_text()
        assert text.count("keeping 127.0.0.2, 127.0.0.3") == 1, text
        assert {answered_by(port) for _ in range(6)} == {f"127.0.0.2:{worker_port}", f"127.0.0.3:{worker_port}"}
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_an_srv_name_gives_a_server_per_target_at_its_port(tmp_path: pathlib.Path) -> None:
    dns_port, port2, port3, port = free_port(), free_port(), free_port(), free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 w2.cluster.test\n127.0.0.3 w3.cluster.test\n127.0.0.4 w4.cluster.test\n")
    service = "_fcgi._tcp.app.cluster.test"
    # w4: a higher priority, so a backup server that takes nothing while the others serve.
    port4 = free_port()
    srv = (f"--srv-host={service},w2.cluster.test,{port2},0,3", f"--srv-host={service},w3.cluster.test,{port3},0,1",
           f"--srv-host={service},w4.cluster.test,{port4},10,1")
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = 1\naccess_log = false\n'
        f'resolver = "127.0.0.1:{dns_port}"\n\n'
        f'[upstream.app]\nservers = [{{ address = "{service}:1", resolve = "1s" }}]\n'
    )
    with (dnsmasq(hosts, dns_port, *srv), worker_on("127.0.0.2", port2), worker_on("127.0.0.3", port3),
          frontend_from_file(path, port) as process):
        log = pathlib.Path(process.log_path)
        wait_for(lambda: f"resolve {service}: " in log.read_text(), timeout=20)
        # The records' weights 3 and 1: smooth round robin gives exactly 6 and 2 of 8.
        seen = [answered_by(port) for _ in range(8)]
        assert sorted(seen) == sorted([f"127.0.0.2:{port2}"] * 6 + [f"127.0.0.3:{port3}"] * 2)


def test_a_silent_first_resolver_and_a_truncated_answer_still_give_every_address(tmp_path: pathlib.Path) -> None:
    dns_port, worker_port, port = free_port(), free_port(), free_port()
    many = [f"127.0.1.{i}" for i in range(1, 41)]  # 40 A records: more than a 512-byte UDP answer holds
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{ip} {NAME}\n" for ip in many))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the questions, answers none
    silent.bind(("127.0.0.1", 0))
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = 1\naccess_log = false\n'
        f'resolver = ["127.0.0.1:{silent.getsockname()[1]}", "127.0.0.1:{dns_port}"]\nresolver_timeout = "1s"\n\n'
        f'[upstream.app]\nresolve = "30s"\nservers = ["{NAME}:{worker_port}"]\n'
    )
    try:
        with (dnsmasq(hosts, dns_port), worker_on("127.0.1.1", worker_port),
              frontend_from_file(path, port) as process):
            log = pathlib.Path(process.log_path)
            wait_for(lambda: f"resolve {NAME}: " in log.read_text(), timeout=30)
            text = log.read_text()
            assert f"resolve {NAME}: {', '.join(many)}\n" in text, text
            assert "keeping" not in text, text
            assert process.poll() is None
    finally:
        silent.close()
