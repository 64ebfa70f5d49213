"""A WSGI app counting a visitor's requests in their session: the cluster's session demo.

Every request increments ``session["n"]`` and answers ``application/json``::

    {"n": <the new value>, "worker": "<listen address> <pid>"}

so a test can follow one browser (one cookie) across workers and check that no
increment is lost. Run it with sessions on, e.g.::

    fcgi-cluster worker workers.counter:app --listen 127.0.0.1:9001 \\
        --session save_handler=redis --session save_path=tcp://127.0.0.1:6379

``GET /peek`` answers the same without incrementing; ``GET /user`` answers the
session's ``user`` value and ``/user?set=NAME`` sets it (the PHP sharing demo).
Other session keys are left alone, so a PHP page can share the session.
"""

import json
import os
import urllib.parse


def app(environ, start_response):
    """Increment the session's counter and report it with the worker that served.

    Args:
        environ: The WSGI environ, with ``fcgi_cluster.session`` from the worker.
        start_response: The WSGI start_response callable.

    Returns:
        A one-item list holding the JSON body.
    """
    session = environ.get("fcgi_cluster.session")
    if session is None:
        body = b"sessions are off: start the worker with --session settings\n"
        start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    where = environ.get("fcgi_cluster.listen") or os.environ.get("FCGI_CLUSTER_LISTEN", "")
    path = environ.get("PATH_INFO", "")
    answer = {"worker": f"{where} {os.getpid()}"}
    if path == "/user":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if "set" in query:
            session["user"] = query["set"][-1]
        answer["user"] = session.get("user")
    elif path == "/peek":
        answer["n"] = session.get("n", 0)
    else:
        n = session.get("n", 0)
        session["n"] = (n if isinstance(n, int) else 0) + 1
        answer["n"] = session["n"]
    body = json.dumps(answer).encode()
    start_response("200 OK", [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ])
    return [body]
