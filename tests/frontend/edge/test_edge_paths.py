"""Which answer path compressed and limited routes take: compression keeps the callbacks, limits take a task."""

from __future__ import annotations

import json
import zlib

import pytest

from fcgi_cluster.frontend import _client
from workers.echo import app as echo

from .._harness import RawClient, frontend, request_bytes, upstream_config, workers

ROUTES = """
[limit_req_zone.z]
key = "$remote_addr"
rate = "100r/s"
[[route]]
prefix = "/gz/"
upstream = "app"
gzip = true
[[route]]
prefix = "/limited/"
upstream = "app"
limit_req = { zone = "z", burst = 100, nodelay = true }
[[route]]
prefix = "/"
upstream = "app"
"""


async def test_compressed_routes_stay_on_the_callbacks_and_limited_ones_take_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    real_drive = _client.ClientConnection.drive

    async def drive(self, *args):
        started.append("drive")
        await real_drive(self, *args)

    monkeypatch.setattr(_client.ClientConnection, "drive", drive)
    async with workers(echo) as addresses, frontend(upstream_config(addresses, routes=ROUTES)) as (port, server):
        async with RawClient.connect(port) as client:
            await client.send(request_bytes("/warm"))  # opens the worker connection (a task)
            assert (await client.response()).status == 200
            started.clear()
            for number in range(3):
                await client.send(request_bytes(f"/gz/{number}", headers=[("Accept-Encoding", "gzip")]))
                response = await client.response()
                assert response.header(b"Content-Encoding") == b"gzip" and response.chunked
                environ = json.loads(zlib.decompress(response.body, 31))["environ"]
                assert environ["REQUEST_URI"] == f"/gz/{number}"
                await client.send(request_bytes(f"/plain/{number}"))
                response = await client.response()
                assert response.header(b"Content-Encoding") is None
                assert json.loads(response.body)["environ"]["REQUEST_URI"] == f"/plain/{number}"
            assert started == []  # all from the hub's callbacks
            await client.send(request_bytes("/limited/x"))
            assert (await client.response()).status == 200
            assert started == ["drive"]
