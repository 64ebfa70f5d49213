"""Fixtures for the session store tests: real servers, one per test module.

A redis-server with a password and an ACL user, a Redis Cluster of three
masters (shared by the whole session), and two memcached; each starts in well
under a second and is stopped when its module ends (see
``tests/sessions/_servers.py``). Tests get their data emptied between them by the
function-scoped store fixtures.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.sessions._servers import RedisServer, memcached, redis_cluster

REDIS_PASSWORD = "s3cret pass"  # a space, to check it is quoted properly
ACL_USER = "alice"
ACL_PASSWORD = "wonderland"
CLUSTER_PASSWORD = "cluster-secret"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server with ``requirepass``, an ACL user ``alice`` and a unix socket
    (``server.unix_socket``)."""
    directory = tmp_path_factory.mktemp("redis")
    with RedisServer(
        directory,
        password=REDIS_PASSWORD,
        acl_users=[f"{ACL_USER} on >{ACL_PASSWORD} ~* &* +@all"],
        extra=["--unixsocket", str(directory / "redis.sock"), "--unixsocketperm", "700"],
    ) as server:
        server.unix_socket = directory / "redis.sock"
        yield server


@pytest.fixture
def flushed(redis_server: RedisServer) -> RedisServer:
    """``redis_server`` emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory: pytest.TempPathFactory):
    """Three redis-server masters in cluster mode, with a password.

    One per test session: ``redis-cli --cluster create`` waits about 3 s for the
    nodes to agree, and no test stops a cluster node.
    """
    with redis_cluster(tmp_path_factory.mktemp("cluster"), password=CLUSTER_PASSWORD) as servers:
        yield servers


@pytest.fixture(scope="module")
def memcached_servers(tmp_path_factory: pytest.TempPathFactory):
    """Two memcached servers: ``[(host, port), (host, port)]``."""
    base: pathlib.Path = tmp_path_factory.mktemp("memcached")
    with memcached(base / "a") as first, memcached(base / "b") as second:
        yield [first, second]
