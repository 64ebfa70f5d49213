"""A WSGI app that reports what it received, and misbehaves on request.

By default it answers ``application/json``::

    {"worker": "<listen address> <pid>",
     "environ": {every environ key whose value is a str},
     "body_length": <bytes of request body read>,
     "body_sha256": "<hex digest of those bytes>"}

so a test can check which worker process served a request and what the front-end passed
to it, byte for byte, without the app ever holding the whole body in memory.

Query knobs (``?name=value``; the last one wins when repeated):

- ``size=N``: answer N bytes of ``x`` (``application/octet-stream``) instead of JSON,
  produced 64 KiB at a time by a generator.
- ``sleep_ms=N``: sleep N milliseconds before answering (blocks this request's thread).
- ``status=N``: answer with HTTP status N (100-599), reason phrase from ``http.HTTPStatus``.
- ``raise=1``: raise ``RuntimeError`` from the app (the server must turn it into a 500).
- ``exit=1``: ``os._exit(1)``: the worker process dies in the middle of the request.
- ``log=TEXT``: write one line to ``wsgi.errors`` (FastCGI's FCGI_STDERR).
- ``accel=PATH``: answer with ``X-Accel-Redirect: PATH`` (and a
  ``Content-Disposition`` naming its last segment), so the front door serves
  that file from its internal route; the JSON report is the body the front door drops.
  Such an answer has no Content-Type unless ``type=T`` gives one.
- ``sendfile=PATH``: likewise with ``X-Sendfile: PATH`` (a filesystem path).

A knob with a value that is not understood gets ``400 Bad Request``, never a traceback.

Order of effects: read the whole request body, then log, sleep, exit, raise, answer.

The worker's listen address is, in order of preference: the environ key
``fcgi_cluster.listen`` (set by our worker), the environment variable
``FCGI_CLUSTER_LISTEN``, or ``SERVER_ADDR:SERVER_PORT``.
"""

import hashlib
import http
import json
import os
import time
import urllib.parse

# Read and write in 64 KiB pieces: one FastCGI record holds at most 65535 bytes, and the
# whole body never has to fit in memory.
CHUNK_SIZE = 64 * 1024
_FILLER = b"x" * CHUNK_SIZE

_SWITCH_VALUES = {"0": False, "1": True}


def app(environ, start_response):
    """Report the request as JSON, or obey the query knobs described in the module.

    Args:
        environ: The WSGI environ.
        start_response: The WSGI start_response callable.

    Returns:
        The response body, as a list (JSON, errors) or a generator (``size=N``).

    Raises:
        RuntimeError: When asked to with ``raise=1``.
    """
    try:
        knobs = _parse_knobs(environ.get("QUERY_STRING", ""))
        body_length, body_sha256 = _consume_body(environ)
    except ValueError as exc:
        return _plain(start_response, "400 Bad Request", f"echo: {exc}\n")

    if knobs["log"] is not None:
        # One line, whatever the client put in it.
        line = knobs["log"].replace("\r", " ").replace("\n", " ")
        errors = environ["wsgi.errors"]
        errors.write(f"echo: {line}\n")
        errors.flush()
    if knobs["sleep_ms"]:
        time.sleep(knobs["sleep_ms"] / 1000)
    if knobs["exit"]:
        os._exit(1)
    if knobs["raise"]:
        raise RuntimeError("echo: raise=1 requested")

    status = _status_line(knobs["status"])
    size = knobs["size"]
    if size is not None:
        start_response(
            status,
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return _filler(size)

    extra = []
    if knobs["accel"] is not None:
        name = knobs["accel"].rstrip("/").rsplit("/", 1)[-1] or "file"
        # Header values are latin-1 text: the path is passed percent-encoded.
        extra = [
            ("X-Accel-Redirect", urllib.parse.quote(knobs["accel"], safe="/%?=&")),
            ("Content-Disposition", f'attachment; filename="{urllib.parse.quote(name)}"'),
        ]
    if knobs["sendfile"] is not None:
        extra.append(("X-Sendfile", urllib.parse.quote(knobs["sendfile"], safe="/")))

    report = {
        "worker": f"{_listen_address(environ)} {os.getpid()}",
        "environ": {key: value for key, value in environ.items() if isinstance(value, str)},
        "body_length": body_length,
        "body_sha256": body_sha256,
    }
    body = json.dumps(report, sort_keys=True).encode("utf-8")
    if not extra:
        content_type = [("Content-Type", "application/json")]
    else:  # handed to the front door: the file's type unless one is asked for
        content_type = [("Content-Type", knobs["type"])] if knobs["type"] is not None else []
    start_response(status, [*content_type, ("Content-Length", str(len(body))), *extra])
    return [body]


def _parse_knobs(query_string):
    """Turn the query string into the knob values, rejecting values that do not parse."""
    query = urllib.parse.parse_qs(query_string)

    def last(name):
        values = query.get(name)
        return values[-1] if values else None

    def integer(name, low, high):
        text = last(name)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{name}={value} is outside {low}..{high}")
        return value

    def switch(name):
        text = last(name)
        if text is None:
            return False
        if text not in _SWITCH_VALUES:
            raise ValueError(f"{name}={text!r} must be 0 or 1")
        return _SWITCH_VALUES[text]

    return {
        # 1 TiB is far beyond any test, and keeps a typo from meaning "forever".
        "size": integer("size", 0, 1 << 40),
        # An hour: same reasoning.
        "sleep_ms": integer("sleep_ms", 0, 3_600_000),
        "status": integer("status", 100, 599),
        "raise": switch("raise"),
        "exit": switch("exit"),
        "log": last("log"),
        "accel": last("accel"),
        "sendfile": last("sendfile"),
        "type": last("type"),
    }


def _consume_body(environ):
    """Read the request body in chunks, returning its length and SHA-256 hex digest.

    With ``CONTENT_LENGTH`` set, reads exactly that much (or until EOF, if the server gives
    less). Without it, reads until EOF only if the server says the input is terminated
    (``wsgi.input_terminated``, as a FastCGI worker can, since FCGI_STDIN ends with an
    empty record); otherwise PEP 3333 forbids reading at all.
    """
    text = environ.get("CONTENT_LENGTH", "").strip()
    if text:
        if not text.isdigit():
            raise ValueError(f"CONTENT_LENGTH={text!r} is not a non-negative integer")
        remaining = int(text)
    elif environ.get("wsgi.input_terminated"):
        remaining = None
    else:
        remaining = 0

    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = 0
    while remaining is None or remaining > 0:
        want = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
        chunk = stream.read(want)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return total, digest.hexdigest()


def _status_line(code):
    """``"200 OK"`` for None, else the code with its standard reason phrase if it has one."""
    if code is None:
        return "200 OK"
    try:
        reason = http.HTTPStatus(code).phrase
    except ValueError:
        reason = "Unknown"
    return f"{code} {reason}"


def _listen_address(environ):
    """The address of the worker that serves this request, as described in the module."""
    address = environ.get("fcgi_cluster.listen") or os.environ.get("FCGI_CLUSTER_LISTEN")
    if address:
        return str(address)
    return f"{environ.get('SERVER_ADDR', '')}:{environ.get('SERVER_PORT', '')}"


def _filler(size):
    """Yield ``size`` bytes of ``x``, at most CHUNK_SIZE at a time."""
    full_chunks, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full_chunks):
        yield _FILLER
    if rest:
        yield _FILLER[:rest]


def _plain(start_response, status, text):
    body = text.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
