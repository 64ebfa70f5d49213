"""save_path parsing: phpredis', php-memcached's and PHP files' syntax, as pure functions.

Every accepted form is a row of a table; every mistake is a ValueError naming the
option (or the part) at fault.
"""

from __future__ import annotations

import pytest

from fcgi_cluster.sessions import SAVE_HANDLERS, open_store
from fcgi_cluster.sessions._redis_scripts import pick_server
from fcgi_cluster.sessions._save_path import (
    FilesPath,
    MemcachedPath,
    MemcachedServer,
    RedisClusterPath,
    RedisServer,
    SentinelPath,
    parse_files_path,
    parse_memcached_path,
    parse_redis_path,
    parse_rediscluster_path,
)


@pytest.mark.parametrize(
    ("save_path", "expected"),
    [
        ("/var/lib/php/sessions", FilesPath("/var/lib/php/sessions", 0, 0o600)),
        ("2;/tmp/s", FilesPath("/tmp/s", 2, 0o600)),
        ("1;640;/tmp/s", FilesPath("/tmp/s", 1, 0o640)),
        ("0;0600;/tmp/s", FilesPath("/tmp/s", 0, 0o600)),
    ],
)
def test_files_paths(save_path: str, expected: FilesPath) -> None:
    assert parse_files_path(save_path) == expected


@pytest.mark.parametrize(
    ("save_path", "message"),
    [
        ("", "empty directory"),
        ("x;/tmp", "levels 'x' is not an integer"),
        ("99;/tmp", "levels must be 0..8"),
        ("1;9z;/tmp", "is not octal"),
        ("1;400;/tmp", "let the owner read and write"),
        ("1;2;3;/tmp", "expected /path"),
    ],
)
def test_files_path_errors(save_path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_files_path(save_path)


def _server(**fields) -> RedisServer:
    defaults = dict(host="127.0.0.1", port=6379)
    defaults.update(fields)
    return RedisServer(**defaults)


@pytest.mark.parametrize(
    ("save_path", "expected"),
    [
        # phpredis' classic forms.
        ("tcp://127.0.0.1:6379", [_server()]),
        ("tcp://127.0.0.1", [_server()]),
        ("127.0.0.1:6380", [_server(port=6380)]),
        (
            "tcp://10.0.0.1:6379?weight=2&timeout=2.5&read_timeout=1&persistent=1&prefix=APP:&auth=pw&database=3",
            [_server(host="10.0.0.1", weight=2, timeout=2.5, read_timeout=1.0, prefix="APP:", password="pw", database=3)],
        ),
        ("tcp://h:1?read_timeout=0", [_server(host="h", port=1, read_timeout=None)]),
        ("tcp://h:1?auth[]=pw", [_server(host="h", port=1, password="pw")]),
        ("tcp://h:1?auth[]=alice&auth[]=pw", [_server(host="h", port=1, username="alice", password="pw")]),
        ("tcp://h:1?auth=p%26w%3D", [_server(host="h", port=1, password="p&w=")]),
        ("tcp://[::1]:7000", [_server(host="::1", port=7000)]),
        (
            "unix:///run/redis/redis.sock?database=2&prefix=S:",
            [RedisServer(host=None, port=None, unix_path="/run/redis/redis.sock", database=2, prefix="S:")],
        ),
        # Several servers, separated by commas and/or spaces, in the order written.
        (
            "tcp://a:1?weight=1, tcp://b:2?weight=3 tcp://c:3",
            [_server(host="a", port=1), _server(host="b", port=2, weight=3), _server(host="c", port=3)],
        ),
        # redis-py's URLs.
        ("redis://h", [_server(host="h")]),
        ("redis://:pw@h:1/4", [_server(host="h", port=1, password="pw", database=4)]),
        ("redis://alice:pw@h:1", [_server(host="h", port=1, username="alice", password="pw")]),
        ("redis://pw@h:1", [_server(host="h", port=1, password="pw")]),
        (
            "rediss://h:6380?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
            [_server(host="h", port=6380, tls=True, tls_options={"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none"})],
        ),
    ],
)
def test_redis_paths(save_path: str, expected: list[RedisServer]) -> None:
    assert list(parse_redis_path(save_path).servers) == expected


def test_redis_default_prefix_is_phpredis() -> None:
    (server,) = parse_redis_path("tcp://h:1").servers
    assert server.prefix == "PHPREDIS_SESSION:"
    assert server.database == 0 and server.weight == 1


@pytest.mark.parametrize(
    ("save_path", "message"),
    [
        ("", "no server given"),
        ("tcp://h:1?wieght=2", "unknown option 'wieght'; expected one of: auth, database, persistent"),
        ("tcp://h:1?weight=0", "option 'weight': expected an integer from 1 to 1000, got 0"),
        ("tcp://h:1?weight=x", "option 'weight': expected an integer"),
        ("tcp://h:1?timeout=-1", "option 'timeout': expected a positive number"),
        ("tcp://h:1?timeout=nan", "option 'timeout': expected a positive number"),
        ("tcp://h:1?database=-1", "option 'database'"),
        ("tcp://h:1?auth=a&auth=b", "option 'auth' given twice"),
        ("tcp://h:1?auth[]=a&auth[]=b&auth[]=c", "option 'auth': expected auth"),
        ("tcp://h:1?prefix", "option 'prefix' has no value"),
        ("tcp://h:1?persistent=maybe", "option 'persistent'"),
        ("tcp://h:99999", "port 99999 out of range"),
        ("tcp://user:pw@h:1", "tcp:// takes no user:password@"),
        ("tcp://h:1/3", "tcp:// takes no /path"),
        ("http://h:1", "unknown scheme 'http'"),
        ("unix://relative.sock", "expected unix:///absolute/path"),
        ("tcp://h:1?ssl_cert_reqs=none", "needs a rediss:// URL"),
        ("rediss://h?ssl_cert_reqs=sometimes", "option 'ssl_cert_reqs'"),
        ("redis://:pw@h?auth=pw2", "password given both"),
        ("redis://h/2?database=3", "database given both"),
        ("sentinel://h:1", "master_name"),
        ("sentinel://h:1/m?weight=2", "unknown option 'weight'"),
    ],
)
def test_redis_path_errors(save_path: str, message: str) -> None:
    with pytest.raises(ValueError, match="redis save_path") as info:
        parse_redis_path(save_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sentinel_path() -> None:
    parsed = parse_redis_path(
        "sentinel://alice:pw@s1:26380,s2/mymaster?sentinel_auth=spw&database=1&prefix=P:&timeout=0.5"
    )
    assert parsed == SentinelPath(
        sentinels=(("s1", 26380), ("s2", 26379)),
        master="mymaster",
        username="alice",
        password="pw",
        sentinel_password="spw",
        database=1,
        prefix="P:",
        timeout=0.5,
    )


@pytest.mark.parametrize(
    ("save_path", "expected"),
    [
        ("seed[]=a:7000", RedisClusterPath(seeds=(("a", 7000),))),
        (
            "seed[]=a:7000&seed[]=b:7001&timeout=2&read_timeout=3&auth=pw&prefix=P:&failover=distribute&persistent=true",
            RedisClusterPath(
                seeds=(("a", 7000), ("b", 7001)), password="pw", prefix="P:", timeout=2.0, read_timeout=3.0,
                failover="distribute",
            ),
        ),
        ("seed[]=a&auth[]=alice&auth[]=pw", RedisClusterPath(seeds=(("a", 6379),), username="alice", password="pw")),
        ("seed=a:1", RedisClusterPath(seeds=(("a", 1),))),
        ("seed[]=a:1&hash_tag=1", RedisClusterPath(seeds=(("a", 1),), hash_tag=True)),
    ],
)
def test_rediscluster_paths(save_path: str, expected: RedisClusterPath) -> None:
    assert parse_rediscluster_path(save_path) == expected


def test_rediscluster_default_prefix_is_phpredis_cluster() -> None:
    assert parse_rediscluster_path("seed[]=a:1").prefix == "PHPREDIS_CLUSTER_SESSION:"


@pytest.mark.parametrize(
    ("save_path", "message"),
    [
        ("", "no seed given"),
        ("timeout=1", "no seed given"),
        ("seed[]=a:1&failover=sometimes", "option 'failover'"),
        ("seed[]=a:1&database=2", "unknown option 'database'"),
        ("seed[]=a:1&hash_tag=maybe", "option 'hash_tag'"),
        ("seed[]=a:notaport", "expected host:port"),
    ],
)
def test_rediscluster_path_errors(save_path: str, message: str) -> None:
    with pytest.raises(ValueError, match="rediscluster save_path") as info:
        parse_rediscluster_path(save_path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("save_path", "expected"),
    [
        ("127.0.0.1:11211", MemcachedPath(servers=(MemcachedServer("127.0.0.1", 11211),))),
        ("a, b:11212", MemcachedPath(servers=(MemcachedServer("a", 11211), MemcachedServer("b", 11212)))),
        ("/run/memcached.sock", MemcachedPath(servers=(MemcachedServer("/run/memcached.sock", None),))),
        ("PERSISTENT=pool1 a:1", MemcachedPath(servers=(MemcachedServer("a", 1),))),
        (
            "a:1,b:2?prefix=app.sess.&timeout=0.5&connect_timeout=0.25",
            MemcachedPath(
                servers=(MemcachedServer("a", 1), MemcachedServer("b", 2)),
                prefix="app.sess.",
                timeout=0.5,
                connect_timeout=0.25,
            ),
        ),
    ],
)
def test_memcached_paths(save_path: str, expected: MemcachedPath) -> None:
    assert parse_memcached_path(save_path) == expected


def test_memcached_default_prefix_is_php_memcached() -> None:
    assert parse_memcached_path("a").prefix == "memc.sess.key."


@pytest.mark.parametrize(
    ("save_path", "message"),
    [
        ("", "no server given"),
        ("a:1?weight=2", "unknown option 'weight'"),
        ("a:1:2", "server weights"),
        ("--SERVER=a:1", "--SERVER"),
        ("a:1?prefix=has%20space", "option 'prefix'"),
        ("PERSISTENT=x", "followed by a space"),
    ],
)
def test_memcached_path_errors(save_path: str, message: str) -> None:
    with pytest.raises(ValueError, match="memcached save_path") as info:
        parse_memcached_path(save_path)
    assert message in str(info.value)


def test_open_store_rejects_unknown_handler_and_bad_paths() -> None:
    assert sorted(SAVE_HANDLERS) == ["files", "memcached", "redis", "rediscluster"]
    with pytest.raises(ValueError, match="unknown session.save_handler 'mysql'"):
        open_store("mysql", "x")
    # A bad save_path fails before any connection is tried.
    with pytest.raises(ValueError, match="unknown option 'wieght'"):
        open_store("redis", "tcp://127.0.0.1:1?wieght=1")
    with pytest.raises(ValueError, match="timeout must be positive"):
        open_store("redis", "tcp://127.0.0.1:1", timeout=0)


def _phpredis_pick(sid: str, weights: list[int]) -> int:
    """phpredis' redis_pool_get_sock, restated the slow way: expand the reversed list."""
    ring = [index for index in reversed(range(len(weights))) for _ in range(weights[index])]
    raw = sid.encode()[:4]
    position = raw[0] | raw[1] << 8 | raw[2] << 16 | raw[3] << 24
    return ring[position % len(ring)]


@pytest.mark.parametrize("weights", [[1], [1, 1], [1, 2], [3, 1, 2], [5, 5, 5, 1]])
def test_pick_server_matches_phpredis(weights: list[int]) -> None:
    # "abcd" read little-endian is 0x64636261 = 1684234849.
    assert pick_server("abcdXYZ", [1, 1]) == 0  # 1684234849 % 2 = 1 -> second in reversed order
    assert pick_server("bbcdXYZ", [1, 1]) == 1  # 1684234850 % 2 = 0 -> last server written
    for sid in ("abcdefgh", "0000", "zzzzzzzz", "k3j4h5g6", "Q-,a", "9a8b7c6d5e"):
        assert pick_server(sid, weights) == _phpredis_pick(sid, weights)


def test_pick_server_is_weighted() -> None:
    # 64 consecutive first characters cover every position modulo the total weight
    # equally often, so the shares are exact.
    counts = [0, 0]
    for first in range(48, 48 + 64):
        counts[pick_server(chr(first) + "xyzxyz", [1, 3])] += 1
    assert counts == [16, 48]


@pytest.mark.parametrize(
    "save_path",
    [
        "tcp://h:1?auth=hunter2&wieght=2",
        "tcp://h:1?auth[]=alice&auth[]=hunter2&database=x",
        "redis://alice:hunter2@h:1?timeout=-1",
        "redis://hunter2@h:1?bogus=1",
        "sentinel://:hunter2@h:1/m?sentinel_auth=hunter2&nope=1",
        "tcp://h:1?auth=hunter%32&weight=0",
    ],
)
def test_passwords_stay_out_of_redis_errors(save_path: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_path(save_path)
    assert "hunter" not in str(info.value)
    assert "***" in str(info.value)


def test_passwords_stay_out_of_cluster_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse_rediscluster_path("seed[]=a:1&auth=hunter2&failover=maybe")
    assert "hunter2" not in str(info.value) and "option 'failover'" in str(info.value)
