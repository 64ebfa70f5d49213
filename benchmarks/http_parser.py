"""HTTP/1.1 request parsing: h11 vs httptools alone vs our HTTPServerConnection.

No sockets: each contender is handed the bytes a socket would give, in one
process, so the figures are the parsers' own cost. Contenders:

* ``h11``: the pure-Python sans-IO library; parses, then serializes a 5-byte
  response (``Response``, ``Data``, ``EndOfMessage``) and starts the next cycle,
  as a server built on it would. Skipped, with a note, when h11 is missing.
* ``httptools``: llhttp with the least a server can do: callbacks that keep
  the URL and the header pairs. No checks, no response: the floor.
* ``ours``: ``fcgi_cluster.frontend._http.HTTPServerConnection`` (httptools
  plus our framing, limits and smuggling checks), parsing and serializing the
  same 5-byte response.

Scenarios: a typical browser GET (11 header fields), one per receive as on a
kept-alive connection; and a burst of 32 of them pipelined in one receive.

Contenders run one after the other, interleaved (A B C C B A ...) for
``--rounds`` rounds of ``--seconds`` each; the report gives the median
microseconds per request, requests/s, and ratios to h11 and to httptools.

Usage: python benchmarks/http_parser.py [--seconds 1] [--rounds 3] [--quick]
Writes benchmarks/results/<UTC timestamp>/http_parser.json and http_parser.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder comes first on sys.path; the package lives one up.
sys.path.insert(0, str(ROOT))

import httptools  # noqa: E402

from fcgi_cluster.frontend._http import NEED_DATA, HTTPServerConnection  # noqa: E402

try:
    import h11
except ImportError:  # the bench extra is not installed
    h11 = None

BROWSER_GET = (
    b"GET /articles/2026/11/http-parsers?utm_source=feed&page=2 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/articles/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=4f9a1c2e8b7d6e5f; theme=dark; consent=1\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Priority: u=0, i\r\n"
    b"\r\n"
)
BURST = 32
RESPONSE_BODY = b"hello"

#: scenario -> (bytes of one receive, requests in it)
SCENARIOS = {
    "browser GET": (BROWSER_GET, 1),
    f"pipelined x{BURST}": (BROWSER_GET * BURST, BURST),
}


def run_h11(data: bytes, count: int) -> Callable[[], None]:
    conn = h11.Connection(h11.SERVER)
    Data, EndOfMessage, Response, PAUSED = h11.Data, h11.EndOfMessage, h11.Response, h11.PAUSED
    NEED = h11.NEED_DATA
    headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(RESPONSE_BODY))]

    def once() -> None:
        conn.receive_data(data)
        served = 0
        while served < count:
            event = conn.next_event()
            if type(event) is EndOfMessage:
                conn.send(Response(status_code=200, headers=headers))
                conn.send(Data(data=RESPONSE_BODY))
                conn.send(EndOfMessage())
                conn.start_next_cycle()
                served += 1
            elif event is NEED or event is PAUSED:
                raise RuntimeError("h11 stopped early")

    return once


def run_httptools(data: bytes, count: int) -> Callable[[], None]:
    class Protocol:
        __slots__ = ("url", "headers", "done")

        def __init__(self) -> None:
            self.url = b""
            self.headers: list = []
            self.done = 0

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_message_complete(self) -> None:
            self.done += 1
            self.headers = []

    protocol = Protocol()
    parser = httptools.HttpRequestParser(protocol)

    def once() -> None:
        parser.feed_data(data)

    return once


def run_ours(data: bytes, count: int) -> Callable[[], None]:
    conn = HTTPServerConnection()
    headers = [(b"Content-Type", b"text/plain")]
    length = len(RESPONSE_BODY)

    def once() -> None:
        conn.receive_data(data)
        for _ in range(count):
            while conn.next_event() is not NEED_DATA:
                pass
            conn.send_head(200, headers, content_length=length)
            conn.send_body(RESPONSE_BODY)
            conn.send_end()
            conn.start_next_cycle()

    return once


def contenders() -> dict[str, Callable[[bytes, int], Callable[[], None]]]:
    found = {}
    if h11 is not None:
        found["h11"] = run_h11
    else:
        print("note: h11 is not installed (pip install h11, or the bench extra); skipping it")
    found["httptools"] = run_httptools
    found["ours"] = run_ours
    return found


def measure(once: Callable[[], None], count: int, seconds: float) -> float:
    """Microseconds per request, over batches that fill ``seconds``."""
    for _ in range(50):  # warm up caches and the Date header
        once()
    requests = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(20):
            once()
        requests += 20 * count
        now = time.perf_counter()
    return (now - start) / requests * 1e6


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "httptools": dist("httptools"),
        "h11": dist("h11"),
    }


def report(runs: list[dict], names: list[str]) -> str:
    lines = [
        "| scenario | contender | µs/request | requests/s | vs h11 | vs httptools |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        medians = {
            name: statistics.median(r["us"] for r in runs if (r["scenario"], r["contender"]) == (scenario, name))
            for name in names
        }
        for name in names:
            us = medians[name]
            vs_h11 = f"{medians['h11'] / us:.1f}x faster" if "h11" in medians and name != "h11" else "-"
            vs_raw = f"{us / medians['httptools']:.1f}x the time" if name != "httptools" else "-"
            lines.append(f"| {scenario} | {name} | {us:.2f} | {1e6 / us:,.0f} | {vs_h11} | {vs_raw} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    parser.add_argument("--quick", action="store_true", help="0.3 s runs, 2 rounds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 2
    found = contenders()
    names = list(found)
    runs = []
    for scenario, (data, count) in SCENARIOS.items():
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for name in order:
                us = measure(found[name](data, count), count, args.seconds)
                runs.append({"scenario": scenario, "contender": name, "round": round_no, "us": us})
                print(f"{scenario:14} {name:10} {us:8.2f} µs/request  {1e6 / us:10,.0f} req/s", flush=True)
    table = report(runs, names)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out).absolute() / stamp
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_parser.json").write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2))
    (out / "http_parser.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
