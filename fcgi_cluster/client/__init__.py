"""The trio FastCGI client: the web-server side of a connection to a worker.

    async with open_connection("127.0.0.1:9000") as conn:
        response = await conn.request(cgi_params("GET", "/hello"))

One connection multiplexes concurrent requests; ``stream`` reads a body as it
arrives, and a slow reader never holds up the others (``Buffering``); every
failure is a ``FastCGIError``.
"""

from ._buffer import Buffering as Buffering
from ._cgi import MAX_HEADER_SIZE as MAX_HEADER_SIZE
from ._cgi import cgi_params as cgi_params
from ._cgi import parse_cgi_headers as parse_cgi_headers
from ._connection import Connection as Connection
from ._connection import open_connection as open_connection
from ._errors import ConnectError as ConnectError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import FastCGIError as FastCGIError
from ._errors import PeerUnresponsive as PeerUnresponsive
from ._errors import RequestRefused as RequestRefused
from ._errors import ResponseOverflow as ResponseOverflow
from ._errors import UpstreamProtocolError as UpstreamProtocolError
from ._response import Response as Response
from ._response import ResponseStream as ResponseStream

__all__ = [
    "open_connection", "Connection", "Response", "ResponseStream", "Buffering",
    "cgi_params", "parse_cgi_headers", "MAX_HEADER_SIZE",
    "FastCGIError", "ConnectError", "ConnectionLost", "PeerUnresponsive", "UpstreamProtocolError",
    "RequestRefused", "ResponseOverflow",
]
