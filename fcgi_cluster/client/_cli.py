"""``fcgi-cluster request``: send one request to a FastCGI worker, like curl.

    fcgi-cluster request 127.0.0.1:9000 /hello -i
    fcgi-cluster request unix:/run/app.sock /api -X PUT -H 'Content-Type: application/json' -d @body.json

The response body goes to stdout as bytes, the worker's STDERR to stderr. Any
response, even a 500, exits 0 (as curl does); a worker that cannot be reached,
times out or breaks the protocol exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from http import HTTPStatus
from typing import BinaryIO
from urllib.parse import urlsplit

import trio

from .._address import Address, parse_address
from ._cgi import cgi_params
from ._connection import open_connection
from ._errors import FastCGIError

__all__ = ["request_main"]

PROG = "fcgi-cluster request"
#: Seconds for the whole exchange, connect included: nginx's fastcgi_read_timeout.
DEFAULT_TIMEOUT = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send one HTTP-style request to a FastCGI worker and print the response body.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="host:port, [v6]:port, port, unix:/path or /path")
    parser.add_argument("uri", metavar="URI", help="/path?query, or http[s]://host[:port]/path?query")
    parser.add_argument("-X", "--request", dest="method", metavar="METHOD", help="GET, or POST when -d is given")
    parser.add_argument(
        "-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'", help="repeatable"
    )
    parser.add_argument(
        "-d", "--data", action="append", default=[], metavar="DATA",
        help="request body; @FILE reads a file, @- stdin; repeated -d are joined with '&'",
    )
    parser.add_argument(
        "--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
        help="set or override a FastCGI param; repeatable",
    )
    parser.add_argument("-i", "--include", action="store_true", help="print the status line and headers first")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"for the whole request (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


def request_main(argv: list[str]) -> int:
    """Run ``fcgi-cluster request`` with ``argv`` (the arguments after "request").

    Args:
        argv: command-line arguments, without the program and command names.

    Returns:
        The exit status: 0 for any response, 1 when the request failed (one
        line on stderr says why), 2 for a usage error, 130 on Ctrl-C.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    if args.timeout <= 0:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        method, uri, headers, extra, server, scheme = _request_line(args)
        body = _body(args.data)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return _fail(f"cannot read the request body: {exc.strerror or exc}")
    if not any(name.lower() == "content-type" for name, _ in headers) and args.data:
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl does
    try:
        params = cgi_params(
            method or ("POST" if args.data else "GET"),
            uri,
            headers=headers,
            body_length=len(body) if args.data else None,
            extra=extra,
            server=server,
            scheme=scheme,
        )
        address = parse_address(args.address)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    try:
        trio.run(_send, address, params, body, args.include, args.timeout, out)
    except FastCGIError as exc:
        return _fail(str(exc))
    except trio.TooSlowError:
        return _fail(f"no complete response from {address} within {args.timeout:g} s")
    except BrokenPipeError:
        # stdout was closed early (e.g. piped into head): not worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(reason: str) -> int:
    print(f"{PROG}: {reason}", file=sys.stderr)
    return 1


def _request_line(
    args: argparse.Namespace,
) -> tuple[str | None, str, list[tuple[str, str]], dict[str, str], tuple[str, int], str]:
    """Method, URI, headers, extra params, server and scheme from the arguments."""
    headers = []
    for line in args.headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header {line!r} is not 'Name: value'")
        headers.append((name.strip(), value.strip()))
    extra = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {item!r} is not NAME=VALUE")
        extra[name] = value
    uri, server, scheme = args.uri, ("127.0.0.1", 80), "http"
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        scheme = parts.scheme
        host = parts.hostname or "localhost"
        server = (host, parts.port or (443 if scheme == "https" else 80))
        if not any(name.lower() == "host" for name, _ in headers):
            headers.append(("Host", parts.netloc))
        uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    elif not uri.startswith("/"):
        raise ValueError(f"URI {uri!r} must start with '/' or http(s)://")
    return args.method, uri, headers, extra, server, scheme


def _body(data: list[str]) -> bytes:
    parts = []
    for item in data:
        if item == "@-":
            parts.append(sys.stdin.buffer.read())
        elif item.startswith("@"):
            with open(item[1:], "rb") as f:
                parts.append(f.read())
        else:
            parts.append(os.fsencode(item))  # the argument's own bytes
    return b"&".join(parts)


async def _send(address: Address, params: dict[str, str], body: bytes, include: bool, timeout: float, out: BinaryIO) -> None:
    with trio.fail_after(timeout):
        async with open_connection(address, connect_timeout=timeout) as conn:
            async with conn.stream(params, body) as response:
                if include:
                    out.write(_head(response.status, response.headers))
                async for chunk in response:
                    out.write(chunk)
                out.flush()
            if response.stderr:
                sys.stderr.buffer.write(response.stderr)
                sys.stderr.flush()


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
