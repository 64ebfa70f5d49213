"""The ASGI 3 twin of ``workers.hello``: ``200 OK`` with the body ``hello``.

It answers the ``lifespan`` protocol too, so servers that run startup/shutdown (ours,
uvicorn, hypercorn) see a well-behaved app.
"""

_BODY = b"hello"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(_BODY)).encode("ascii")),
    ],
}
_RESPONSE_BODY = {"type": "http.response.body", "body": _BODY, "more_body": False}


async def app(scope, receive, send):
    """Answer every HTTP request with ``hello``; acknowledge lifespan events.

    Args:
        scope: The ASGI connection scope.
        receive: Awaitable returning the next event from the server.
        send: Awaitable sending an event to the server.

    Raises:
        ValueError: For a scope type other than ``http`` and ``lifespan`` (the ASGI spec
            asks apps to reject protocols they do not speak).
    """
    scope_type = scope["type"]
    if scope_type == "http":
        # Drain the request body, so a server that waits for it to be read is not stuck.
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        # Copies: the server owns what it is sent and may change it.
        await send(dict(_START, headers=list(_START["headers"])))
        await send(dict(_RESPONSE_BODY))
    elif scope_type == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    else:
        raise ValueError(f"hello_asgi: unsupported scope type {scope_type!r}")
