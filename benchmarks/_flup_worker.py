"""Run a WSGI app on flup's FastCGI server, tuned so it is measured at its best.

Stock flup never sets TCP_NODELAY (40 ms stalls per request on kept-alive
connections) and starts 5 threads (queued connections can starve). Here every
accepted socket gets TCP_NODELAY and the thread pool is pre-spawned.

Usage: python _flup_worker.py MODULE:APP HOST PORT MULTIPLEXED(0|1)
"""

import importlib
import socket
import sys

from flup.server import fcgi_base
from flup.server.fcgi import WSGIServer

_init = fcgi_base.Connection.__init__


def _init_nodelay(self, sock, addr, server, *rest):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    _init(self, sock, addr, server, *rest)


fcgi_base.Connection.__init__ = _init_nodelay

if __name__ == "__main__":
    spec, host, port, multiplexed = sys.argv[1:]
    module, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    WSGIServer(app, bindAddress=(host, int(port)), multiplexed=multiplexed == "1",
               minSpare=16, maxSpare=32, maxThreads=64).run()
