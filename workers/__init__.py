"""Deployable example apps for fcgi-cluster workers.

Each module exposes ``app`` and uses only the standard library, so it can be served by our
worker or by any other FastCGI/WSGI/ASGI server (flup, uvicorn, ...) to compare them:

- ``workers.hello:app``: WSGI, answers ``hello``; the cheapest possible request.
- ``workers.hello_asgi:app``: the same as an ASGI 3 app.
- ``workers.echo:app``: WSGI, reports what it received and obeys query knobs that make it
  slow, large, failing or dying; the workhorse of the end-to-end tests.
"""
