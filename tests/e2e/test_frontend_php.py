"""Our front-end in front of real php-fpm gives the same answers as nginx in front of it.

Both front doors run at once against one php-fpm pool serving tests/e2e/php, nginx
configured the classic way (``SCRIPT_FILENAME $document_root$fastcgi_script_name``),
ours with ``--root`` and a ``split_path_info`` route, as a PHP site would use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import pytest

from tests._peers import PHP_PAGES, Peers, free_port

from ._frontend import frontend_from_file
from .test_frontend_process import http_get


@pytest.fixture(scope="module")
def front_doors(tmp_path_factory):
    directory = tmp_path_factory.mktemp("php-front")
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, directory)
        fpm = peers.php_fpm()
        nginx = peers.nginx_php(fpm.port)
        port = free_port()
        config = directory / "cluster.toml"
        config.write_text(
            f'[frontend]\nlisten = "127.0.0.1:{port}"\nroot = "{PHP_PAGES}"\naccess_log = false\n'
            f'max_body_size = "10m"\n'
            f'[upstream.php]\nservers = ["127.0.0.1:{fpm.port}"]\n'
            '[[route]]\nregex = "\\\\.php(/|$)"\nupstream = "php"\nsplit_path_info = "^(.+?\\\\.php)(/.*)?$"\n'
        )
        stack.enter_context(frontend_from_file(config, port))
        yield port, nginx.port


CGI_KEYS = (
    "REQUEST_METHOD", "QUERY_STRING", "SCRIPT_NAME", "SCRIPT_FILENAME", "REQUEST_URI", "DOCUMENT_URI",
    "DOCUMENT_ROOT", "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_PROTOCOL", "GATEWAY_INTERFACE",
    "REMOTE_ADDR", "REQUEST_SCHEME", "REDIRECT_STATUS", "HTTP_X_TEST",
)


def test_hello_same_answer(front_doors) -> None:
    ours, nginx = front_doors
    assert http_get(ours, "/hello.php")[::2] == http_get(nginx, "/hello.php")[::2] == (200, b"Hello, World!")


def test_env_same_params(front_doors) -> None:
    ours, nginx = front_doors
    target = "/env.php?a=1&b=two"
    headers = {"X-Test": "yes", "Content-Type": "application/x-www-form-urlencoded"}
    mine = json.loads(http_get(ours, target, method="POST", body=b"f=1", headers=headers)[2])
    theirs = json.loads(http_get(nginx, target, method="POST", body=b"f=1", headers=headers)[2])
    assert {k: mine.get(k) for k in CGI_KEYS} == {k: theirs.get(k) for k in CGI_KEYS}
    assert mine["SCRIPT_FILENAME"] == f"{PHP_PAGES}/env.php"
    assert mine["_POST"] == theirs["_POST"] == {"f": "1"}
    assert mine["_GET"] == {"a": "1", "b": "two"}


@pytest.mark.parametrize("target", ["/status.php?code=404", "/status.php?code=503", "/redirect.php", "/missing.php"])
def test_status_headers_same(front_doors, target) -> None:
    ours, nginx = front_doors
    mine, theirs = http_get(ours, target), http_get(nginx, target)
    assert mine[0] == theirs[0]
    assert mine[2] == theirs[2]
    for name in ("x-test", "location", "content-type"):
        assert mine[1].get(name) == theirs[1].get(name), name


def test_upload_and_download_same(front_doors) -> None:
    ours, nginx = front_doors
    body = os.urandom(1024 * 1024)
    expected = f"{len(body)} {hashlib.md5(body).hexdigest()}".encode()
    assert http_get(ours, "/upload.php", method="POST", body=body)[2].strip() == expected
    assert http_get(nginx, "/upload.php", method="POST", body=body)[2].strip() == expected
    assert http_get(ours, "/big.php?n=300000")[2] == http_get(nginx, "/big.php?n=300000")[2]


def test_path_info_split(front_doors) -> None:
    ours, _ = front_doors
    server = json.loads(http_get(ours, "/env.php/extra/path")[2])
    assert server["SCRIPT_NAME"] == "/env.php"
    assert server["PATH_INFO"] == "/extra/path"
    assert server["SCRIPT_FILENAME"] == f"{PHP_PAGES}/env.php"


def test_large_chunked_upload_reaches_php_whole(front_doors) -> None:
    # PHP reads a body only up to CONTENT_LENGTH: the front-end spools a
    # chunked body past its 64 KiB buffer to learn the length, as nginx does.
    import socket

    ours, _ = front_doors
    body = os.urandom(300_000)
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as sock:
        head = b"POST /upload.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        pieces = [body[i:i + 50_000] for i in range(0, len(body), 50_000)]
        sock.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert f"{len(body)} {hashlib.md5(body).hexdigest()}".encode() in answer


def test_max_conns_queues_instead_of_stranding_requests_behind_php_fpm_children(tmp_path) -> None:
    # php-fpm (2 children) serves one connection per child until it closes.
    # Eight concurrent slow requests: with max_conns = 2 the front-end queues
    # the others for a free connection instead of opening connections that
    # php-fpm's backlog would hold behind our kept-alive ones.
    import concurrent.futures
    import time

    with contextlib.ExitStack() as stack:
        fpm = Peers(stack, tmp_path).php_fpm(max_children=2)
        port = free_port()
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = 1\nroot = "{PHP_PAGES}"\naccess_log = false\n'
            f'[upstream.php]\nservers = [{{ address = "127.0.0.1:{fpm.port}", max_conns = 2 }}]\nread_timeout = "5s"\n'
        )
        stack.enter_context(frontend_from_file(config, port))
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: http_get(port, "/sleep.php?ms=200"), range(8)))
        elapsed = time.monotonic() - started
    assert [(status, body) for status, _, body in answers] == [(200, b"slept")] * 8
    assert elapsed < 3  # four rounds of 200 ms on two children, not a read timeout
