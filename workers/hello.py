"""The smallest useful WSGI app: ``200 OK`` with the body ``hello``.

Everything is computed once at import, so a request costs one call and one list: this app
measures the server around it, not itself.
"""

_STATUS = "200 OK"
_BODY = b"hello"
_HEADERS = [
    ("Content-Type", "text/plain"),
    ("Content-Length", str(len(_BODY))),
]
_RESPONSE = [_BODY]


def app(environ, start_response):
    """Answer every request with ``hello``.

    Args:
        environ: The WSGI environ; ignored.
        start_response: The WSGI start_response callable.

    Returns:
        A one-item list holding the body.
    """
    # A copy of the headers: servers may append to the list they are given.
    start_response(_STATUS, list(_HEADERS))
    return _RESPONSE
