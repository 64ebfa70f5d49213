"""The status page in php-fpm's formats: each parses, carries the input's figures, and has php-fpm's layout."""

from __future__ import annotations

import json
import re
import socket
import xml.etree.ElementTree as ET


from fcgi_cluster.worker._status import (
    METRIC_PREFIX,
    PoolStatus,
    ProcessStatus,
    listen_queue,
    render_status,
)
from tests._peers import cgi_fcgi_request, php_fpm

START = 1_795_587_363.0
NOW = START + 42.7

PROCS = (
    ProcessStatus(101, "Idle", START, 7, 0.000062, "GET", "/status?full", 0, "/srv/app.py", 1.5, 2097152),
    ProcessStatus(102, "Running", START + 2, 9, 1.25, "POST", "/upload?x=<1>&y=\"2\"", 1234, "", 0.0, 0, user="bob"),
)
STATUS = PoolStatus(
    pool="www", process_manager="dynamic", start_time=START, accepted_conn=1234, listen_queue=3,
    max_listen_queue=17, listen_queue_len=511, idle_processes=1, active_processes=1, total_processes=2,
    max_active_processes=2, max_children_reached=5, slow_requests=6, processes=PROCS,
)

FIELDS = [
    "pool", "process manager", "start time", "start since", "accepted conn", "listen queue", "max listen queue",
    "listen queue len", "idle processes", "active processes", "total processes", "max active processes",
    "max children reached", "slow requests",
]
PROCESS_FIELDS = [
    "pid", "state", "start time", "start since", "requests", "request duration", "request method", "request uri",
    "content length", "user", "script", "last request cpu", "last request memory",
]
EXPECTED = {
    "pool": "www", "process manager": "dynamic", "start time": int(START), "start since": 42, "accepted conn": 1234,
    "listen queue": 3, "max listen queue": 17, "listen queue len": 511, "idle processes": 1, "active processes": 1,
    "total processes": 2, "max active processes": 2, "max children reached": 5, "slow requests": 6,
}


def test_json_has_php_fpms_names_and_the_input_counters() -> None:
    content_type, body = render_status(STATUS, "json", NOW)
    assert content_type == "application/json"
    doc = json.loads(body)
    assert list(doc) == FIELDS
    assert doc == EXPECTED


def test_json_full_adds_one_row_per_process() -> None:
    doc = json.loads(render_status(STATUS, "json&full", NOW)[1])
    assert [list(row) for row in doc["processes"]] == [PROCESS_FIELDS] * 2
    first, second = doc["processes"]
    assert first["request duration"] == 62  # microseconds, as php-fpm
    assert (first["script"], first["user"], first["last request cpu"]) == ("/srv/app.py", "-", 1.5)
    assert (second["pid"], second["state"], second["start since"]) == (102, "Running", 40)
    assert (second["request uri"], second["content length"], second["user"]) == ('/upload?x=<1>&y="2"', 1234, "bob")
    assert second["request duration"] == 1_250_000


def test_text_is_php_fpms_layout() -> None:
    content_type, body = render_status(STATUS, "", NOW)
    assert content_type == "text/plain;charset=UTF-8"
    lines = body.decode().splitlines()
    assert [line[:22].rstrip().rstrip(":") for line in lines] == FIELDS
    assert lines[0] == "pool:                 www"
    assert re.fullmatch(r"start time:           \d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", lines[2])
    assert lines[4] == "accepted conn:        1234"
    assert lines[-1] == "slow requests:        6"


def test_text_full() -> None:
    text = render_status(STATUS, "full", NOW)[1].decode()
    blocks = text.split("\n************************\n")
    assert len(blocks) == 3
    rows = [dict(line.split(":", 1) for line in block.strip().splitlines()) for block in blocks[1:]]
    assert [k.strip() for k in rows[0]] == [f.replace("request uri", "request URI") for f in PROCESS_FIELDS]
    assert rows[1]["pid"].strip() == "102" and rows[1]["request URI"].strip() == '/upload?x=<1>&y="2"'
    assert rows[0]["last request cpu"].strip() == "1.50"


def test_xml_parses_and_escapes() -> None:
    content_type, body = render_status(STATUS, "xml&full", NOW)
    assert content_type == "text/xml;charset=UTF-8"
    root = ET.fromstring(body)
    assert root.tag == "status"
    values = {child.tag: child.text for child in root if child.tag != "processes"}
    assert values == {name.replace(" ", "-"): str(value) for name, value in EXPECTED.items()}
    procs = root.find("processes")
    assert procs is not None and len(procs) == 2
    assert procs[1].find("request-uri").text == '/upload?x=<1>&y="2"'


def test_html_escapes() -> None:
    content_type, body = render_status(STATUS, "html&full", NOW)
    assert content_type == "text/html"
    assert b"<tr><th>accepted conn</th><td>1234</td></tr>" in body
    assert b"/upload?x=&lt;1&gt;&amp;y=" in body and b"<1>" not in body


def parse_openmetrics(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """A small OpenMetrics reader: families' types, and samples keyed by (name, labels).

    Checks the rules a scraper enforces: every sample belongs to a family declared
    before it, counter samples end in _total, the text ends with "# EOF".
    """
    lines = text.split("\n")
    assert lines[-2:] == ["# EOF", ""], "must end with # EOF and a newline"
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    sample_re = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)')
    for line in lines[:-2]:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter"), line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
        elif line.startswith("# HELP "):
            assert line.split(" ")[2] in types, f"HELP before TYPE: {line}"
        else:
            match = sample_re.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            family = name[: -len("_total")] if name.endswith("_total") else name
            assert family in types, f"sample {name} without a TYPE"
            assert (types[family] == "counter") == name.endswith("_total"), f"counter suffix rule broken by {name}"
            label_set = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
            samples[(name, label_set)] = float(value)
    return types, samples


def test_openmetrics_parses_with_php_fpms_metric_names() -> None:
    content_type, body = render_status(STATUS, "openmetrics", NOW)
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    types, samples = parse_openmetrics(body.decode())
    pool = frozenset({("pool", "www")})
    p = METRIC_PREFIX
    assert p == "fcgi_cluster_"
    assert samples == {
        (f"{p}up", pool): 1,
        (f"{p}start_since", pool): 42,
        (f"{p}accepted_connections_total", pool): 1234,
        (f"{p}listen_queue", pool): 3,
        (f"{p}max_listen_queue", pool): 17,
        (f"{p}listen_queue_length", pool): 511,
        (f"{p}idle_processes", pool): 1,
        (f"{p}active_processes", pool): 1,
        (f"{p}total_processes", pool): 2,
        (f"{p}max_active_processes", pool): 2,
        (f"{p}max_children_reached_total", pool): 5,
        (f"{p}slow_requests_total", pool): 6,
    }
    assert types[f"{p}accepted_connections"] == "counter" and types[f"{p}idle_processes"] == "gauge"


def test_openmetrics_full_has_per_process_samples() -> None:
    _, samples = parse_openmetrics(render_status(STATUS, "openmetrics&full", NOW)[1].decode())
    key = frozenset({("pool", "www"), ("pid", "102")})
    assert samples[("fcgi_cluster_process_requests_total", key)] == 9
    assert samples[("fcgi_cluster_process_active", key)] == 1
    assert samples[("fcgi_cluster_process_request_duration_seconds", key)] == 1.25


def test_format_precedence_and_unknown_names() -> None:
    assert render_status(STATUS, "json&xml", NOW)[0].startswith("text/xml")
    assert render_status(STATUS, "foo=1&bar", NOW)[0].startswith("text/plain")
    assert render_status(STATUS, "json=1", NOW)[0] == "application/json"


def test_listen_queue_counts_unaccepted_connections() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(37)
        assert listen_queue(server) == (0, 37)
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        try:
            assert listen_queue(server) == (3, 37)
        finally:
            for c in clients:
                c.close()
    with socket.socket(socket.AF_UNIX) as unix:
        assert listen_queue(unix) == (0, 0)


def test_same_fields_in_the_same_order_as_a_real_php_fpm() -> None:
    with php_fpm(pm="static", max_children=1) as fpm:
        def get(query: str) -> bytes:
            env = {"SCRIPT_NAME": "/fpm-status", "SCRIPT_FILENAME": "/fpm-status", "QUERY_STRING": query,
                   "REQUEST_METHOD": "GET"}
            return cgi_fcgi_request(fpm.host, fpm.port, env).partition(b"\r\n\r\n")[2]

        theirs_json = json.loads(get("json&full").replace(b"\\/", b"/"))
        theirs_text = get("full").decode()
        theirs_metrics = get("openmetrics").decode()
    ours_json = json.loads(render_status(STATUS, "json&full", NOW)[1])
    assert list(ours_json) == list(theirs_json)
    assert list(ours_json["processes"][0]) == list(theirs_json["processes"][0])
    one_child = PoolStatus(**{**{f: getattr(STATUS, f) for f in STATUS.__slots__}, "processes": PROCS[:1]})
    ours_text = render_status(one_child, "full", NOW)[1].decode()
    label = re.compile(r"^([a-zA-Z ]+:) *", re.M)
    assert label.findall(ours_text) == label.findall(theirs_text)
    assert [m.end() - m.start() for m in label.finditer(ours_text)] == [m.end() - m.start() for m in label.finditer(theirs_text)]
    names = re.compile(r"^# TYPE phpfpm_(\w+)", re.M).findall(theirs_metrics)
    assert re.compile(rf"^# TYPE {METRIC_PREFIX}(\w+)", re.M).findall(render_status(STATUS, "openmetrics", NOW)[1].decode()) == names
