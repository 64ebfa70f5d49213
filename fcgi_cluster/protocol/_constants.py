"""FastCGI 1.0 wire constants and the limits this implementation enforces.

Numbers come from the FastCGI 1.0 specification (Open Market, 1996). Limits are
ours: each has a justified default and can be changed per connection.
"""

from __future__ import annotations

import enum

VERSION = 1
HEADER_SIZE = 8
#: Largest content of one record (the contentLength field is 16 bits).
MAX_CONTENT_LENGTH = 0xFFFF
#: Streams are split into records of at most this many bytes: the largest
#: multiple of 8 that fits, so full records need no padding.
MAX_CHUNK = 0xFFF8
#: Request ID 0 is reserved for management records.
NULL_REQUEST_ID = 0
MAX_REQUEST_ID = 0xFFFF


class RecordType(enum.IntEnum):
    """The type byte of a record header."""

    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(enum.IntEnum):
    """The role asked for in BEGIN_REQUEST."""

    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(enum.IntEnum):
    """The protocolStatus field of END_REQUEST."""

    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


#: BEGIN_REQUEST flag: keep the connection open after this request.
KEEP_CONN = 1

#: Variable names a GET_VALUES query may ask for.
FCGI_MAX_CONNS = b"FCGI_MAX_CONNS"
FCGI_MAX_REQS = b"FCGI_MAX_REQS"
FCGI_MPXS_CONNS = b"FCGI_MPXS_CONNS"
#: Our own GET_VALUES variable (the spec lets an application answer names it
#: knows and skip the others): how many processes serve this address. A web
#: server multiplexing over one connection per process spreads its requests
#: over all of them and keeps each connection's batches large; peers that do
#: not know the name never answer it.
FCGI_CLUSTER_PROCESSES = b"FCGI_CLUSTER_PROCESSES"

# --- Limits -----------------------------------------------------------------

#: Total size of one request's PARAMS stream. nginx caps a request's headers at
#: 4 x 8 KiB by default and HAProxy must fit all params in one 16 KiB buffer, so
#: real params stay well under 64 KiB; 256 KiB leaves room for huge cookies while
#: a peer cannot make us hold megabytes per request.
DEFAULT_MAX_PARAMS_SIZE = 256 * 1024

#: Requests in flight on one connection (advertised as FCGI_MAX_REQS). Enough
#: to keep a multiplexed connection busy across a LAN; each one costs a task and
#: buffers, so a peer must not open thousands.
DEFAULT_MAX_REQUESTS = 256

#: PARAMS bytes the core holds for one connection, summed over the requests
#: whose PARAMS have not ended. (Unparsed input needs no cap of its own: an
#: incomplete record is at most 65,798 bytes, and a driver drains events before
#: it receives more.) 1 MiB allows several large PARAMS blocks at once while a
#: peer that opens many requests cannot make us hold 256 x 256 KiB.
DEFAULT_MAX_BUFFER_SIZE = 1024 * 1024

#: Size of one GET_VALUES / GET_VALUES_RESULT body: they must fit one record.
MAX_MANAGEMENT_BODY = MAX_CONTENT_LENGTH
