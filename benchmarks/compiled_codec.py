"""The codec modules compiled with Cython against the pure-Python ones: does it pay?

The sans-IO codec (FastCGI records and name-value pairs, the FastCGI connection, the
HTTP/1.1 connection and head building, CGI params, params to environ) is pure Python.
This script copies the package into a temporary directory, compiles those modules there
with Cython 3 as they are (no type declarations: the .py files unchanged), and measures:

* each codec function alone (timeit, best of 5), pure and compiled;
* CPU per request of the front door and of the worker on ``workers.hello:app`` under wrk
  (one front-end process, 16 connections), pure and compiled in interleaved pairs (the
  order alternates, so a busy spell on a shared machine falls on both sides), read from
  /proc/PID/stat before and after each run.

Nothing here is installed: the package has no compiled build (figures and reasons in
README, "Benchmarks", "A compiled codec"). One that keeps the pure modules as the
reference would compile each module a second time under another name (a ``_speedups``
subpackage, with absolute imports in the sources so the twin shares the pure modules'
events and errors), have each pure module take its twin's names when the twin is present
and ``FCGI_CLUSTER_PURE`` is unset, and test the two for byte equality. Needs Cython 3 and
a C compiler (``pip install -e '.[bench]'``), and wrk.

Usage: python benchmarks/compiled_codec.py [--pairs 4] [--seconds 8] [--micro-only]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _measure import cpu_between, cpu_seconds  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CODEC_MODULES = [
    "fcgi_cluster/protocol/_records.py",
    "fcgi_cluster/protocol/_connection.py",
    "fcgi_cluster/protocol/_events.py",
    "fcgi_cluster/frontend/_http.py",
    "fcgi_cluster/frontend/_cgi.py",
    "fcgi_cluster/client/_cgi.py",
    "fcgi_cluster/worker/_environ.py",
]

_SETUP = """
from setuptools import setup
from Cython.Build import cythonize
setup(ext_modules=cythonize({modules!r}, language_level=3, quiet=True))
"""

_MICRO = r"""
import timeit
from fcgi_cluster.protocol import _records as r
from fcgi_cluster.worker import _environ as e
params = {b"QUERY_STRING": b"", b"REQUEST_METHOD": b"GET", b"CONTENT_TYPE": b"",
    b"CONTENT_LENGTH": b"", b"SCRIPT_NAME": b"", b"PATH_INFO": b"/", b"REQUEST_URI": b"/",
    b"DOCUMENT_URI": b"/", b"DOCUMENT_ROOT": b"/srv", b"SERVER_PROTOCOL": b"HTTP/1.1",
    b"REQUEST_SCHEME": b"http", b"GATEWAY_INTERFACE": b"CGI/1.1",
    b"SERVER_SOFTWARE": b"fcgi-cluster", b"REMOTE_ADDR": b"127.0.0.1", b"REMOTE_PORT": b"40000",
    b"SERVER_ADDR": b"127.0.0.1", b"SERVER_PORT": b"8080", b"SERVER_NAME": b"localhost",
    b"HTTP_HOST": b"127.0.0.1:8080", b"HTTP_USER_AGENT": b"wrk", b"HTTP_ACCEPT": b"*/*"}
blob = r.encode_pairs(params.items())
print("module", r.__file__.rsplit("/", 1)[-1])
for name, fn in [
    ("encode_pairs", lambda: r.encode_pairs(params.items())),
    ("decode_pairs", lambda: r.decode_pairs(blob)),
    ("encode_stream", lambda: r.encode_stream(6, 1, blob)),
    ("encode_end_request", lambda: r.encode_end_request(1, 0, 0)),
    ("cgi_environ", lambda: e.cgi_environ(params)),
]:
    print(name, min(timeit.repeat(fn, number=20000, repeat=5)) / 20000 * 1e6)
"""


def build_compiled(into: pathlib.Path) -> float:
    """Copy the package and the example apps into ``into``, compile the codec there; seconds taken."""
    shutil.copytree(ROOT / "fcgi_cluster", into / "fcgi_cluster", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "workers", into / "workers", ignore=shutil.ignore_patterns("__pycache__"))
    (into / "setup_codec.py").write_text(_SETUP.format(modules=CODEC_MODULES))
    start = time.monotonic()
    subprocess.run([sys.executable, "setup_codec.py", "build_ext", "--inplace", "-q"], cwd=into, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    built = sorted(p.name for p in (into / "fcgi_cluster").rglob("*.so"))
    if len(built) != len(CODEC_MODULES):
        raise SystemExit(f"compiled {len(built)} of {len(CODEC_MODULES)} modules: {built}")
    return time.monotonic() - start


def micro(tree: pathlib.Path) -> dict[str, float]:
    # cwd too: ``-c`` puts the current directory first on sys.path, before PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", _MICRO], env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    module = lines.pop("module")
    if (tree != ROOT) != module.endswith(".so"):
        raise SystemExit(f"{tree} ran {module}: not the build it was meant to measure")
    return {k: float(v) for k, v in lines.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_pair_side(tree: pathlib.Path, seconds: int) -> tuple[float, float, float]:
    """(front door us/request, worker us/request, requests/s) for the package in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    wport, fport = _free_port(), _free_port()
    cli = [sys.executable, "-m", "fcgi_cluster.cli"]
    quiet = dict(env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen(cli + ["worker", "workers.hello:app", "--listen", f"127.0.0.1:{wport}"], **quiet)
    front = subprocess.Popen(cli + ["frontend", "--listen", f"127.0.0.1:{fport}", "--upstream", f"127.0.0.1:{wport}",
                                    "--access-log", "off", "--processes", "1"], **quiet)
    url = f"http://127.0.0.1:{fport}/"
    try:
        _wait_port(wport)
        _wait_port(fport)
        subprocess.run(["wrk", "-t1", "-c16", "-d2s", url], capture_output=True, timeout=60)  # warm-up
        f0, w0 = cpu_seconds([front.pid]), cpu_seconds([worker.pid])
        out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", url], capture_output=True, text=True,
                             timeout=seconds + 60).stdout
        f1, w1 = cpu_seconds([front.pid]), cpu_seconds([worker.pid])
    finally:
        for proc in (front, worker):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if re.search(r"Non-2xx or 3xx responses", out) or "Socket errors" in out:
        raise SystemExit(f"wrk saw failed requests:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return cpu_between(f0, f1) / requests * 1e6, cpu_between(w0, w1) / requests * 1e6, requests / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--micro-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fcgi-compiled-") as tmp:
        compiled = pathlib.Path(tmp)
        print(f"Cython build of {len(CODEC_MODULES)} modules: {build_compiled(compiled):.0f} s")
        trees = {"pure": ROOT, "compiled": compiled}
        print("Codec functions alone, us per call:")
        figures = {name: micro(tree) for name, tree in trees.items()}
        for fn, pure in figures["pure"].items():
            print(f"  {fn:20s} pure {pure:6.2f}  compiled {figures['compiled'][fn]:6.2f}  "
                  f"x{pure / figures['compiled'][fn]:.2f}")
        if args.micro_only:
            return
        print("CPU per request on hello under wrk, interleaved pairs:")
        results: dict[str, list[tuple[float, float, float]]] = {"pure": [], "compiled": []}
        for i in range(args.pairs):
            for name in (("pure", "compiled") if i % 2 == 0 else ("compiled", "pure")):
                r = run_pair_side(trees[name], args.seconds)
                results[name].append(r)
                print(f"  pair {i} {name:9s} front door {r[0]:6.1f} us  worker {r[1]:6.1f} us  {r[2]:7.0f} req/s",
                      flush=True)
        for side, index in (("front door", 0), ("worker", 1)):
            pure = [r[index] for r in results["pure"]]
            comp = [r[index] for r in results["compiled"]]
            diffs = [100 * (c - p) / p for p, c in zip(pure, comp)]
            print(f"{side}: pure median {statistics.median(pure):.1f} us, compiled {statistics.median(comp):.1f} us; "
                  f"compiled - pure per pair: {', '.join(f'{d:+.0f}%' for d in diffs)}")


if __name__ == "__main__":
    main()
