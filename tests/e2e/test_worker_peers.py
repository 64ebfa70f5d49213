"""Our worker answered by the real peers users put in front of it: cgi-fcgi, nginx, haproxy."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json

import pytest

from tests._peers import LOOPBACK, cgi_fcgi_request, haproxy_fastcgi, nginx_fastcgi, parse_cgi_response

from ._worker import worker_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def echo_worker():
    with worker_process("workers.echo:app") as (port, process):
        yield port


def http_request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_cgi_fcgi_reference_client(echo_worker):
    raw = cgi_fcgi_request(LOOPBACK, echo_worker, {"REQUEST_METHOD": "GET", "QUERY_STRING": "a=1",
                                                  "REQUEST_URI": "/path?a=1", "HTTP_X_FROM": "cgi-fcgi"})
    status, headers, body = parse_cgi_response(raw)
    doc = json.loads(body)
    assert status == 200
    assert doc["environ"]["QUERY_STRING"] == "a=1"
    assert doc["environ"]["HTTP_X_FROM"] == "cgi-fcgi"
    assert doc["worker"].startswith(f"127.0.0.1:{echo_worker} ")


def test_cgi_fcgi_with_a_body_and_a_status(echo_worker):
    body = bytes(range(256)) * 1000
    raw = cgi_fcgi_request(LOOPBACK, echo_worker, {"REQUEST_METHOD": "POST", "QUERY_STRING": "status=201"}, body)
    status, _, answer = parse_cgi_response(raw)
    doc = json.loads(answer)
    assert status == 201
    assert doc["body_length"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("keepalive", [False, True], ids=["keepalive-off", "keepalive-on"])
def test_nginx_in_front_of_our_worker(echo_worker, keepalive, tmp_path):
    with nginx_fastcgi(LOOPBACK, echo_worker, keepalive, directory=tmp_path) as nginx:
        for i in range(20):
            status, headers, body = http_request(nginx.port, "GET", f"/hello/{i}?n={i}", headers={"X-Test": "yes"})
            assert status == 200, nginx.logs()
            doc = json.loads(body)
            assert doc["environ"]["PATH_INFO"] == f"/hello/{i}"
            assert doc["environ"]["QUERY_STRING"] == f"n={i}"
            assert doc["environ"]["HTTP_X_TEST"] == "yes"
            assert doc["environ"]["GATEWAY_INTERFACE"] == "CGI/1.1"
        upload = b"u" * 1_000_000
        status, _, body = http_request(nginx.port, "POST", "/upload", body=upload)
        assert status == 200
        assert json.loads(body)["body_sha256"] == hashlib.sha256(upload).hexdigest()
        status, headers, body = http_request(nginx.port, "GET", "/?size=2000000")
        assert status == 200 and len(body) == 2_000_000
        status, _, body = http_request(nginx.port, "GET", "/?status=404")
        assert status == 404
        status, _, body = http_request(nginx.port, "GET", "/?raise=1")
        assert status == 500 and b"Traceback" not in body and b"RuntimeError" not in body


@pytest.mark.parametrize("mpxs", [False, True], ids=["one-per-conn", "mpxs-conns"])
def test_haproxy_in_front_of_our_worker(echo_worker, mpxs, tmp_path):
    with haproxy_fastcgi(LOOPBACK, echo_worker, mpxs, get_values=mpxs, directory=tmp_path) as haproxy:

        def one(i: int):
            status, _, body = http_request(haproxy.port, "GET", f"/item/{i}?sleep_ms=20&i={i}")
            return status, json.loads(body)["environ"]["QUERY_STRING"]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(64)))
        assert results == [(200, f"sleep_ms=20&i={i}") for i in range(64)], haproxy.logs()
        status, _, body = http_request(haproxy.port, "POST", "/", body=b"z" * 300_000)
        assert status == 200 and json.loads(body)["body_length"] == 300_000
