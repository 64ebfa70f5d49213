"""The php-fpm fixtures of tests/_peers.py and the PHP pages in tests/e2e/php.

nginx in front of php-fpm is the setup fcgi-cluster is measured against, and php-fpm is a
FastCGI responder that is not ours: if these fail, the fixtures or the pages are broken,
not fcgi_cluster. The last tests point our own FastCGI client at php-fpm directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pathlib

import pytest

from fcgi_cluster.client import cgi_params, open_connection
from tests._peers import LOOPBACK, PHP_PAGES, Peers, find_php_fpm

HELLO = b"Hello, World!"
# The repeating pattern big.php writes.
BIG_PATTERN = b"0123456789abcdef"


@pytest.fixture(scope="module")
def php(tmp_path_factory):
    """php-fpm (static, 4 children) with nginx in front, kept alive, for the whole module."""
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, tmp_path_factory.mktemp("php"))
        fpm = peers.php_fpm()
        nginx = peers.nginx_php(fpm.port)
        yield fpm, nginx


def http_request(port, method, path, body=None, headers=None):
    """One request on its own connection: ``(status, headers, body)``; no redirects followed."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def header_values(headers, name):
    return [value for key, value in headers if key.lower() == name.lower()]


def connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on 127.0.0.1, from the kernel's table."""
    count = 0
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        # "0100007F:2328": 127.0.0.1, port 9000, in hex; state 01 is ESTABLISHED.
        if remote == f"0100007F:{port:04X}" and state == "01":
            count += 1
    return count


def fpm_status(nginx) -> dict:
    status, _, body = http_request(nginx.port, "GET", "/fpm-status?json")
    assert status == 200, nginx.logs()
    return json.loads(body)


def test_find_php_fpm_names_an_executable():
    path = pathlib.Path(find_php_fpm())
    assert path.name.startswith("php-fpm")
    assert os.access(path, os.X_OK)


def test_hello_through_nginx(php):
    fpm, nginx = php
    status, headers, body = http_request(nginx.port, "GET", "/hello.php")
    assert (status, body) == (200, HELLO), nginx.logs() + fpm.logs()
    assert len(body) == 13


def test_env_shows_the_params_nginx_sent(php):
    fpm, nginx = php
    form = b"name=caf%C3%A9&n=2"
    status, _, body = http_request(
        nginx.port, "POST", "/env.php?x=1&y[]=2", form,
        {"Content-Type": "application/x-www-form-urlencoded", "X-Custom": "yes"},
    )
    assert status == 200, nginx.logs() + fpm.logs()
    env = json.loads(body)
    assert env["SCRIPT_FILENAME"] == f"{PHP_PAGES}/env.php"
    assert env["DOCUMENT_ROOT"] == str(PHP_PAGES)
    assert env["SCRIPT_NAME"] == env["DOCUMENT_URI"] == "/env.php"
    assert env["REQUEST_URI"] == "/env.php?x=1&y[]=2"
    assert env["QUERY_STRING"] == "x=1&y[]=2"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == str(len(form))
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["REDIRECT_STATUS"] == "200"
    assert env["SERVER_PORT"] == str(nginx.port)
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert env["_GET"] == {"x": "1", "y": ["2"]}
    assert env["_POST"] == {"name": "café", "n": "2"}
    assert (env["body_len"], env["body_md5"]) == (len(form), hashlib.md5(form).hexdigest())
    assert list(env) == sorted(env)
    # Only CGI params: php-fpm's own additions (PHP_SELF, REQUEST_TIME, ...) are left out.
    assert "PHP_SELF" not in env and "REQUEST_TIME" not in env


@pytest.mark.parametrize("code", [201, 404, 503])
def test_status_code_and_repeated_headers(php, code):
    fpm, nginx = php
    status, headers, body = http_request(nginx.port, "GET", f"/status.php?code={code}")
    assert (status, body) == (code, b"status page"), nginx.logs() + fpm.logs()
    assert header_values(headers, "X-Test") == ["yes"]
    assert header_values(headers, "Set-Cookie") == ["a=1", "b=2"]


def test_status_defaults_to_404(php):
    _, nginx = php
    status, _, body = http_request(nginx.port, "GET", "/status.php")
    assert (status, body) == (404, b"status page")


def test_upload_of_one_megabyte(php):
    fpm, nginx = php
    upload = os.urandom(1_000_000)
    status, _, body = http_request(nginx.port, "POST", "/upload.php", upload,
                                   {"Content-Type": "application/octet-stream"})
    assert status == 200, nginx.logs() + fpm.logs()
    assert body.decode() == f"{len(upload)} {hashlib.md5(upload).hexdigest()}"


@pytest.mark.parametrize("size", [0, 100_000, None], ids=["empty", "100k", "default-1MiB"])
def test_big_body(php, size):
    fpm, nginx = php
    path = "/big.php" if size is None else f"/big.php?n={size}"
    expected_size = 1024 * 1024 if size is None else size
    status, _, body = http_request(nginx.port, "GET", path)
    assert status == 200, nginx.logs() + fpm.logs()
    assert len(body) == expected_size
    assert body == (BIG_PATTERN * (expected_size // len(BIG_PATTERN) + 1))[:expected_size]


def test_location_without_status_is_a_302(php):
    _, nginx = php
    status, headers, body = http_request(nginx.port, "GET", "/redirect.php")
    assert status == 302
    assert header_values(headers, "Location") == ["/hello.php"]


def test_missing_files(php):
    _, nginx = php
    # A .php URI reaches php-fpm, which answers for the missing script itself.
    status, _, body = http_request(nginx.port, "GET", "/missing.php")
    assert (status, body) == (404, b"File not found.\n")
    # Anything else is a static file, and nginx answers.
    status, headers, _ = http_request(nginx.port, "GET", "/missing.txt")
    assert status == 404
    assert header_values(headers, "Content-Type") == ["text/html"]


def test_status_page_reports_the_pool(php):
    _, nginx = php
    report = fpm_status(nginx)
    assert report["pool"] == "www"
    assert report["process manager"] == "static"
    assert report["accepted conn"] >= 1


@pytest.mark.parametrize("keepalive", [False, True], ids=["keepalive-off", "keepalive-on"])
def test_nginx_keepalive_reuses_the_php_fpm_connection(peers, keepalive):
    fpm = peers.php_fpm(pm="dynamic", max_children=2)
    nginx = peers.nginx_php(fpm.port, keepalive=keepalive)
    before = fpm_status(nginx)
    for _ in range(5):
        assert http_request(nginx.port, "GET", "/hello.php")[::2] == (200, HELLO)
    after = fpm_status(nginx)
    assert after["process manager"] == "dynamic"
    # php-fpm's "accepted conn" counts requests: five hellos and the status request.
    assert after["accepted conn"] - before["accepted conn"] == 6
    # Kept alive, nginx holds the one connection the requests took turns on; otherwise
    # php-fpm closed each after its request.
    assert connections_to(fpm.port) == (1 if keepalive else 0)


def test_extra_pool_settings_apply(peers):
    fpm = peers.php_fpm(extra_pool={"ping.response": "alive"})
    nginx = peers.nginx_php(fpm.port)
    status, _, body = http_request(nginx.port, "GET", "/fpm-ping")
    assert (status, body) == (200, b"alive"), nginx.logs() + fpm.logs()
    assert "ping.response = alive" in fpm.config_path.read_text()


# --- our FastCGI client, straight to php-fpm ---------------------------------------------


async def test_php_fpm_answers_get_values(php):
    fpm, _ = php
    async with open_connection(f"{fpm.host}:{fpm.port}") as conn:
        values = await conn.get_values()
    # php-fpm answers FCGI_MPXS_CONNS only, and omits FCGI_MAX_CONNS and FCGI_MAX_REQS.
    assert values == {"FCGI_MPXS_CONNS": "0"}


async def test_our_client_calls_php_fpm(php):
    fpm, _ = php
    root = str(PHP_PAGES)
    async with open_connection(f"{fpm.host}:{fpm.port}") as conn:
        hello = await conn.request(cgi_params("GET", "/hello.php", document_root=root))
        assert (hello.status, hello.body) == (200, HELLO)

        body = b"a=1&b=two"
        env_response = await conn.request(
            cgi_params("POST", "/env.php?q=x%20y", document_root=root, body_length=len(body),
                       headers={"Content-Type": "application/x-www-form-urlencoded"}),
            body,
        )
        # The same connection carries a second request: php-fpm honoured FCGI_KEEP_CONN.
        status = await conn.request(cgi_params("GET", "/status.php?code=418", document_root=root))
    assert env_response.status == 200, env_response.stderr
    env = json.loads(env_response.body)
    assert env["SCRIPT_FILENAME"] == f"{root}/env.php"
    assert env["SCRIPT_NAME"] == "/env.php"
    assert env["QUERY_STRING"] == "q=x%20y"
    assert env["_GET"] == {"q": "x y"}
    assert env["_POST"] == {"a": "1", "b": "two"}
    assert (env["body_len"], env["body_md5"]) == (len(body), hashlib.md5(body).hexdigest())
    assert status.status == 418
    assert [value for name, value in status.headers if name.lower() == "set-cookie"] == ["a=1", "b=2"]
