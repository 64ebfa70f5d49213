"""X-Accel-Redirect and X-Sendfile through a real front-end and the echo app's ``?accel=`` / ``?sendfile=``.

The file is served by the front door as its static route serves files
(ranges, validators, HEAD, its Content-Type), with the worker's
Content-Disposition kept and every X-Accel-* field gone; the internal route
is 404 when asked for directly, and no target outside the roots (``..``,
encoded dots and slashes, NUL, symlinks, hidden files) ever gets a byte out.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.parse

import pytest

from ._edge import edge_cluster, exchange, get_bytes, split_response

CLUSTER = """
[frontend]
listen = "127.0.0.1:{fe}"
access_log = false
sendfile_root = "{sendroot}"
[upstream.app]
servers = ["127.0.0.1:{p1}"]
[[route]]
prefix = "/protected/"
static = "{files}"
internal = true
[[route]]
prefix = "/public/"
static = "{public}"
[[route]]
prefix = "/"
upstream = "app"
[pool.a]
listen = "127.0.0.1:{p1}"
app = "workers.echo:app"
"""

BIG = os.urandom(300 * 1024)
SECRET = b"TOP-SECRET-NEVER-SERVED\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accel")
    files, public, sendroot = tmp / "files", tmp / "public", tmp / "send"
    for directory in (files, public, sendroot):
        directory.mkdir()
    (files / "report.pdf").write_bytes(b"%PDF-1.4 not really\n")
    (files / "big.bin").write_bytes(BIG)
    (files / "notes.txt").write_bytes(b"0123456789abcdefghij\n")
    (files / ".env").write_bytes(SECRET)
    (files / "escape").symlink_to(tmp / "secret.txt")
    (public / "open.txt").write_bytes(b"public file\n")
    (sendroot / "download.txt").write_bytes(b"sent by X-Sendfile\n")
    (sendroot / "escape").symlink_to(tmp / "secret.txt")
    (tmp / "secret.txt").write_bytes(SECRET)
    with edge_cluster(tmp, CLUSTER, files=str(files), public=str(public), sendroot=str(sendroot)) as (ports, process):
        yield ports["fe"], tmp, process


def accel(port: int, path: str, headers: dict[str, str] | None = None, knob: str = "accel", method: str = "GET",
          body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    target = f"/download?{knob}={urllib.parse.quote(path, safe='')}"
    request = get_bytes(target, headers).replace(b"GET ", method.encode() + b" ", 1)
    if body:
        request = request[:-2] + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return split_response(exchange(port, request))


def test_the_worker_hands_the_file_to_the_front_door(cluster) -> None:
    port, _, _ = cluster
    status, headers, body = accel(port, "/protected/report.pdf")
    assert status == 200 and body == b"%PDF-1.4 not really\n"
    assert headers["content-type"] == "application/pdf"  # the file's: the worker sent none
    assert headers["content-disposition"] == 'attachment; filename="report.pdf"'
    assert not [name for name in headers if name.startswith("x-accel")]
    status, headers, body = accel(port, "/protected/big.bin")
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()
    # A public static route may be the target too.
    assert accel(port, "/public/open.txt")[2] == b"public file\n"


def test_the_workers_content_type_wins_over_the_files(cluster) -> None:
    port, _, _ = cluster
    target = "/download?accel=/protected/report.pdf&type=application/x-report"
    status, headers, body = split_response(exchange(port, get_bytes(target)))
    assert (status, headers["content-type"], body) == (200, "application/x-report", b"%PDF-1.4 not really\n")
    status, headers, _ = split_response(exchange(port, get_bytes(target, {"Range": "bytes=0-3"})))
    assert (status, headers["content-type"]) == (206, "application/x-report")
    # An error page keeps its own type.
    status, headers, _ = split_response(exchange(port, get_bytes("/download?accel=/protected/none.pdf&type=application/x-report")))
    assert status == 404 and headers["content-type"] == "text/plain; charset=utf-8"
    status, headers, _ = split_response(exchange(port, get_bytes("/download?sendfile=" + urllib.parse.quote(
        str(cluster[1] / "send" / "download.txt"), safe="") + "&type=text/x-sent")))
    assert (status, headers["content-type"]) == (200, "text/x-sent")


def test_ranges_validators_head_and_post(cluster) -> None:
    port, _, _ = cluster
    status, headers, body = accel(port, "/protected/notes.txt", {"Range": "bytes=10-19"})
    assert (status, headers["content-range"], body) == (206, "bytes 10-19/21", b"abcdefghij")
    etag = accel(port, "/protected/notes.txt")[1]["etag"]
    status, headers, body = accel(port, "/protected/notes.txt", {"If-None-Match": etag})
    assert status == 304 and body == b""
    status, headers, body = accel(port, "/protected/notes.txt", method="HEAD")
    assert status == 200 and headers["content-length"] == "21" and body == b""
    # The method becomes GET (nginx's internal redirect); the request body is read and dropped.
    status, _, body = accel(port, "/protected/notes.txt", method="POST", body=b"x" * 5000)
    assert status == 200 and body == b"0123456789abcdefghij\n"


def test_the_internal_route_is_404_when_asked_directly(cluster) -> None:
    port, _, _ = cluster
    for target in ("/protected/report.pdf", "/protected/", "/protected/big.bin"):
        assert split_response(exchange(port, get_bytes(target)))[0] == 404


@pytest.mark.parametrize("path", [
    "/protected/../secret.txt",
    "/protected/%2e%2e/secret.txt",
    "/protected/%2E%2E/%2E%2E/secret.txt",
    "/protected/..%2fsecret.txt",
    "/protected/%2e%2e%2fsecret.txt",
    "/protected/%252e%252e/secret.txt",
    "/protected/..\\secret.txt",
    "/protected/a\0b",
    "/protected/escape",  # a symlink out of the root
    "/protected/.env",
    "protected/report.pdf",  # not a path
    "/nowhere/x",  # the upstream route: no static file there
])
def test_targets_outside_the_root_get_404_and_nothing_else(cluster, path) -> None:
    port, _, process = cluster
    status, _, body = accel(port, path)
    assert status == 404 and SECRET not in body and b"Traceback" not in body


def test_x_sendfile_below_sendfile_root_only(cluster) -> None:
    port, tmp, _ = cluster
    root = tmp / "send"
    status, headers, body = accel(port, f"{root}/download.txt", knob="sendfile")
    assert (status, body) == (200, b"sent by X-Sendfile\n")
    assert headers["content-type"].startswith("text/plain")
    for outside in (str(tmp / "secret.txt"), f"{root}/../secret.txt", f"{root}/escape", "/etc/passwd", f"{root}x/a"):
        status, _, body = accel(port, outside, knob="sendfile")
        assert status == 404 and SECRET not in body and b"root:" not in body


def test_a_kept_alive_connection_serves_on_after_accel_answers(cluster) -> None:
    port, _, _ = cluster
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        stream = sock.makefile("rb")
        answers = []
        for target in ("/dl?accel=/protected/notes.txt", "/dl?accel=/protected/../x", "/plain", "/dl?accel=/protected/big.bin"):
            sock.sendall(get_bytes(target, close=False))
            answers.append(_read_one(stream))
    assert [status for status, _ in answers] == [200, 404, 200, 200]
    assert answers[0][1] == b"0123456789abcdefghij\n"
    assert json.loads(answers[2][1])["environ"]["PATH_INFO"] == "/plain"
    assert answers[3][1] == BIG


def _read_one(stream) -> tuple[int, bytes]:
    status = int(stream.readline().split()[1])
    length = 0
    while True:
        line = stream.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, stream.read(length)
