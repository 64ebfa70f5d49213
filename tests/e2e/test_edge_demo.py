"""workers/edge.toml, the edge demo, run by ``fcgi-cluster up`` on free ports: each of its paths works."""

from __future__ import annotations

import gzip
import http.client
import json

from tests._peers import REPO_ROOT

from ._edge import edge_cluster, environ_of, exchange, get_bytes, split_response

DEMO = REPO_ROOT / "workers" / "edge.toml"


def demo_text() -> str:
    """edge.toml with its ports as placeholders and its static directory made absolute."""
    text = DEMO.read_text().replace("{", "{{").replace("}", "}}")
    for address, name in (("127.0.0.1:8090", "fe"), ("127.0.0.1:8091", "pp"), ("127.0.0.1:9011", "p1")):
        assert address in text
        text = text.replace(address, f"127.0.0.1:{{{name}}}")
    assert 'static = "protected"' in text
    return text.replace('static = "protected"', f'static = "{REPO_ROOT / "workers" / "protected"}"')


def test_the_edge_demo_serves_each_feature(tmp_path) -> None:
    readme = (REPO_ROOT / "workers" / "protected" / "readme.txt").read_bytes()
    with edge_cluster(tmp_path, demo_text()) as (ports, process):
        fe, pp = ports["fe"], ports["pp"]
        status, headers, body = split_response(exchange(fe, get_bytes("/?accel=/protected/readme.txt")))
        assert (status, body) == (200, readme)
        assert headers["content-disposition"] == 'attachment; filename="readme.txt"'
        assert split_response(exchange(fe, get_bytes("/protected/readme.txt")))[0] == 404
        assert split_response(exchange(fe, get_bytes("/?accel=/protected/../edge.toml")))[0] == 404
        env = environ_of(exchange(fe, get_bytes("/", {"X-Forwarded-For": "203.0.113.5, 127.0.0.9"})))
        assert env["REMOTE_ADDR"] == "203.0.113.5"
        env = environ_of(exchange(pp, b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 8091\r\n" + get_bytes("/")))
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.7", "5000")
        assert exchange(pp, get_bytes("/")) == b""  # no PROXY header on 8091: closed
        assert split_response(exchange(fe, get_bytes("/")))[0] == 200
        # Compressed for a client that accepts it, whole for one that does not.
        client = http.client.HTTPConnection("127.0.0.1", fe, timeout=15)
        client.request("GET", "/", headers={"Accept-Encoding": "gzip"})
        answer = client.getresponse()
        assert (answer.status, answer.getheader("Content-Encoding")) == (200, "gzip")
        assert json.loads(gzip.decompress(answer.read()))["environ"]["REQUEST_URI"] == "/"
        client.close()
        assert "content-encoding" not in split_response(exchange(fe, get_bytes("/")))[1]
        # /limited/: 1 + a burst of 5 at once, then 429 (one client, well within a second).
        statuses = [split_response(exchange(fe, get_bytes("/limited/")))[0] for _ in range(8)]
        assert statuses[:6] == [200] * 6 and 429 in statuses[6:]
        # /cached/: the first answer fills the entry, the next ones are it (the same worker pid and body).
        first = split_response(exchange(fe, get_bytes("/cached/page")))
        again = [split_response(exchange(fe, get_bytes("/cached/page"))) for _ in range(3)]
        assert first[1]["x-cache-status"] == "MISS"
        assert [a[1]["x-cache-status"] for a in again] == ["HIT"] * 3 and {a[2] for a in again} == {first[2]}
        # Compressed after the cache, per client: a gzip client's HIT and MISS decode to the entry.
        # (http.client's Host is its own: a key of its own.)
        for word, coding in (("MISS", "gzip"), ("HIT", "gzip"), ("HIT", None)):
            client = http.client.HTTPConnection("127.0.0.1", fe, timeout=15)
            client.request("GET", "/cached/other", headers={"Accept-Encoding": coding or "identity"})
            answer = client.getresponse()
            assert (answer.getheader("X-Cache-Status"), answer.getheader("Content-Encoding")) == (word, coding)
            body = answer.read()
            assert json.loads(gzip.decompress(body) if coding else body)["environ"]["REQUEST_URI"] == "/cached/other"
            client.close()
        assert "Traceback" not in process.log_path.read_text()
