"""A WSGI app for the response cache's tests: it counts the requests that reach it.

``GET /calls`` answers how many other requests this process has served (a
test reads it through an uncached route). Any other path answers JSON with
that request's number, its URI and its Accept-Language; query knobs set the
answer's caching headers:

- ``cc=VALUE``: ``Cache-Control: VALUE``; ``xae=VALUE``: ``X-Accel-Expires: VALUE``;
- ``cookie=1``: a ``Set-Cookie``; ``vary=NAME``: ``Vary: NAME``; ``etag=V``: ``ETag: "V"``;
- ``lm=DATE``: ``Last-Modified: DATE``;
- ``status=N``: the status; ``sleep_ms=N``: wait first; ``size=N``: N bytes of body instead.
"""

import json
import threading
import time
import urllib.parse

_lock = threading.Lock()
_calls = 0


def app(environ, start_response):
    global _calls
    if environ.get("PATH_INFO", "").endswith("/calls"):
        with _lock:
            body = str(_calls).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
        return [body]
    with _lock:
        _calls += 1
        number = _calls
    knobs = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    if "sleep_ms" in knobs:
        time.sleep(int(knobs["sleep_ms"]) / 1000)
    headers = [("Content-Type", "application/json")]
    if "cc" in knobs:
        headers.append(("Cache-Control", knobs["cc"]))
    if "xae" in knobs:
        headers.append(("X-Accel-Expires", knobs["xae"]))
    if knobs.get("cookie") == "1":
        headers.append(("Set-Cookie", f"session=s{number}; Path=/"))
    if "etag" in knobs:
        headers.append(("ETag", f'"{knobs["etag"]}"'))
    if "lm" in knobs:
        headers.append(("Last-Modified", knobs["lm"]))
    if "vary" in knobs:
        headers.append(("Vary", knobs["vary"]))
    status = int(knobs.get("status", "200"))
    if "size" in knobs:
        body = b"y" * int(knobs["size"])
        headers[0] = ("Content-Type", "application/octet-stream")
    else:
        body = json.dumps({
            "n": number, "uri": environ.get("REQUEST_URI", ""), "lang": environ.get("HTTP_ACCEPT_LANGUAGE", ""),
        }).encode()
    start_response(f"{status} Status", headers)
    return [body]
