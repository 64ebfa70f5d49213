"""Our client gets the same answers from flup (multiplexed or not) as from our worker."""

from __future__ import annotations

import hashlib
import json

import pytest
import trio

from fcgi_cluster.client import cgi_params, open_connection
from tests._peers import flup_responder

from ._worker import worker_process

pytestmark = pytest.mark.e2e

BODY = bytes(range(256)) * 4096  # 1 MiB

REQUESTS = [
    ("GET", "/plain?status=200", b""),
    ("GET", "/missing?status=404", b""),
    ("GET", "/big?size=300000", b""),
    ("POST", "/upload", BODY),
    ("GET", "/q?a=1&b=%20x", b""),
]


def summary(response) -> tuple:
    """What must agree: status, content type, and the body (or what echo saw of the request)."""
    content_type = dict((k.lower(), v) for k, v in response.headers).get("content-type")
    if content_type == "application/json":
        doc = json.loads(response.body)
        env = doc["environ"]
        seen = (doc["body_length"], doc["body_sha256"], env["REQUEST_METHOD"], env["QUERY_STRING"],
                env.get("CONTENT_LENGTH", ""))
        return response.status, content_type, seen
    return response.status, content_type, len(response.body), hashlib.sha256(response.body).hexdigest()


async def answers(port: int) -> list[tuple]:
    results: dict[int, tuple] = {}
    async with open_connection(f"127.0.0.1:{port}") as conn:

        async def one(i: int, method: str, uri: str, body: bytes) -> None:
            params = cgi_params(method, uri, body_length=len(body) if body else None,
                                headers=[("Content-Type", "application/octet-stream")] if body else ())
            results[i] = summary(await conn.request(params, body))

        # Sent concurrently on one connection: multiplexed where the server allows it.
        async with trio.open_nursery() as nursery:
            for i, (method, uri, body) in enumerate(REQUESTS):
                nursery.start_soon(one, i, method, uri, body)
    return [results[i] for i in range(len(REQUESTS))]


@pytest.fixture(scope="module")
def ours():
    with worker_process("workers.echo:app") as (port, process):
        yield port


@pytest.mark.parametrize("multiplexed", [True, False], ids=["flup-mpx", "flup-single"])
async def test_flup_and_our_worker_give_the_same_answers(ours, multiplexed, tmp_path):
    with flup_responder("workers.echo:app", multiplexed=multiplexed, directory=tmp_path) as flup:
        theirs = await answers(flup.port)
    mine = await answers(ours)
    assert mine == theirs
    assert [a[0] for a in mine] == [200, 404, 200, 200, 200]
