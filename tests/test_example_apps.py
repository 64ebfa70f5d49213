"""The example apps in workers/, called in-process (the e2e tests serve them for real)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import wsgiref.util
import wsgiref.validate

import pytest

from tests._peers import REPO_ROOT, python_executable
from workers import echo, hello, hello_asgi


def call_wsgi(app, query: str = "", body: bytes = b"", **environ_overrides):
    """Run a WSGI app under wsgiref's validator; returns (status, headers, body, errors)."""
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    errors = io.StringIO()
    environ.update(
        {
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": errors,
        }
    )
    environ.update(environ_overrides)
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers
        return lambda data: None

    chunks = []
    result = wsgiref.validate.validator(app)(environ, start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        result.close()
    return started["status"], started["headers"], chunks, errors.getvalue()


def test_hello():
    status, headers, chunks, _ = call_wsgi(hello.app)
    assert status == "200 OK"
    assert headers == [("Content-Type", "text/plain"), ("Content-Length", "5")]
    assert b"".join(chunks) == b"hello"
    # The precomputed list is not handed out, so a server appending to it changes nothing.
    call_wsgi(hello.app)[1].append(("X-Server", "appended"))
    assert call_wsgi(hello.app)[1] == headers


async def test_hello_asgi_http_and_lifespan():
    sent = []

    async def send(message):
        sent.append(message)

    inbox = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ]

    async def receive():
        return inbox.pop(0)

    await hello_asgi.app({"type": "http", "method": "GET", "path": "/"}, receive, send)
    assert inbox == []
    assert sent[0]["status"] == 200
    assert (b"content-length", b"5") in sent[0]["headers"]
    assert sent[1]["body"] == b"hello" and not sent[1]["more_body"]

    sent.clear()
    inbox[:] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    await hello_asgi.app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    with pytest.raises(ValueError, match="websocket"):
        await hello_asgi.app({"type": "websocket"}, receive, send)


def test_echo_reports_environ_and_body_digest():
    body = os.urandom(200_000)
    status, headers, chunks, _ = call_wsgi(
        echo.app, "a=1", body, SERVER_ADDR="10.0.0.1", SERVER_PORT="9000", HTTP_X_TEST="yes"
    )
    assert status == "200 OK"
    assert ("Content-Type", "application/json") in headers
    report = json.loads(b"".join(chunks))
    assert report["body_length"] == len(body)
    assert report["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert report["environ"]["HTTP_X_TEST"] == "yes"
    assert report["environ"]["QUERY_STRING"] == "a=1"
    assert "wsgi.input" not in report["environ"]
    assert report["worker"] == f"10.0.0.1:9000 {os.getpid()}"


def test_echo_listen_address_preference(monkeypatch):
    monkeypatch.setenv("FCGI_CLUSTER_LISTEN", "from-env:1")
    report = json.loads(b"".join(call_wsgi(echo.app)[2]))
    assert report["worker"] == f"from-env:1 {os.getpid()}"
    report = json.loads(b"".join(call_wsgi(echo.app, **{"fcgi_cluster.listen": "from-environ:2"})[2]))
    assert report["worker"] == f"from-environ:2 {os.getpid()}"


def test_echo_reads_until_eof_only_when_input_is_terminated():
    terminated = call_wsgi(echo.app, "", b"", **{"wsgi.input": io.BytesIO(b"abc"), "wsgi.input_terminated": True})
    assert json.loads(b"".join(terminated[2]))["body_length"] == 3
    unknown_length = call_wsgi(echo.app, "", b"", **{"wsgi.input": io.BytesIO(b"abc")})
    assert json.loads(b"".join(unknown_length[2]))["body_length"] == 0


@pytest.mark.parametrize("size", [0, 1, echo.CHUNK_SIZE, 3 * echo.CHUNK_SIZE + 7])
def test_echo_size_streams_the_body_in_chunks(size):
    status, headers, chunks, _ = call_wsgi(echo.app, f"size={size}")
    assert status == "200 OK"
    assert ("Content-Length", str(size)) in headers
    assert ("Content-Type", "application/octet-stream") in headers
    assert b"".join(chunks) == b"x" * size
    assert all(len(chunk) <= echo.CHUNK_SIZE for chunk in chunks)


@pytest.mark.parametrize(
    ("query", "status"),
    [("status=404", "404 Not Found"), ("status=418", "418 I'm a Teapot"), ("status=599", "599 Unknown")],
)
def test_echo_status(query, status):
    assert call_wsgi(echo.app, query)[0] == status


def test_echo_accel_and_sendfile_knobs_add_their_headers():
    # (wsgiref's validator wants a Content-Type, which these answers send only when asked.)
    _, headers, _, _ = call_wsgi(echo.app, "accel=/protected/a%20b.pdf&type=application/pdf")
    assert ("X-Accel-Redirect", "/protected/a%20b.pdf") in headers and ("Content-Type", "application/pdf") in headers
    assert ("Content-Disposition", 'attachment; filename="a%20b.pdf"') in headers
    _, headers, _, _ = call_wsgi(echo.app, "sendfile=/srv/dl/x.iso&type=application/x-iso9660-image")
    assert ("X-Sendfile", "/srv/dl/x.iso") in headers
    _, headers, _, _ = call_wsgi(echo.app)
    assert not [name for name, _ in headers if name.startswith("X-")]


def test_echo_raise_and_log():
    with pytest.raises(RuntimeError, match="raise=1 requested"):
        call_wsgi(echo.app, "raise=1")
    _, _, _, errors = call_wsgi(echo.app, "log=two%0Alines")
    assert errors == "echo: two lines\n"


@pytest.mark.parametrize("query", ["size=-1", "size=big", "sleep_ms=x", "status=42", "raise=yes", "exit=2"])
def test_echo_rejects_bad_knobs_with_400(query):
    status, headers, chunks, _ = call_wsgi(echo.app, query)
    assert status == "400 Bad Request"
    assert b"".join(chunks).startswith(b"echo: ")


def test_echo_exit_ends_the_process():
    script = (
        "import io, wsgiref.util\n"
        "from workers import echo\n"
        "environ = {'QUERY_STRING': 'exit=1', 'wsgi.input': io.BytesIO()}\n"
        "wsgiref.util.setup_testing_defaults(environ)\n"
        "echo.app(environ, lambda *args: None)\n"
        "print('still alive')\n"
    )
    result = subprocess.run(
        [python_executable(), "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "still alive" not in result.stdout
