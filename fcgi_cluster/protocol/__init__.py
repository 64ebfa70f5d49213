"""Sans-IO FastCGI 1.0: both sides of the protocol, with no I/O of its own.

Feed received bytes to a connection, read events back, and turn events into
bytes to send. The web-server side is ``ClientConnection``; the application
side is ``ServerConnection``.
"""

from ._connection import ClientConnection as ClientConnection
from ._connection import ConnectionState as ConnectionState
from ._connection import ServerConnection as ServerConnection
from ._constants import DEFAULT_MAX_BUFFER_SIZE as DEFAULT_MAX_BUFFER_SIZE
from ._constants import DEFAULT_MAX_PARAMS_SIZE as DEFAULT_MAX_PARAMS_SIZE
from ._constants import DEFAULT_MAX_REQUESTS as DEFAULT_MAX_REQUESTS
from ._constants import FCGI_CLUSTER_PROCESSES as FCGI_CLUSTER_PROCESSES
from ._constants import KEEP_CONN as KEEP_CONN
from ._constants import ProtocolStatus as ProtocolStatus
from ._constants import RecordType as RecordType
from ._constants import Role as Role
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._events import NEED_DATA as NEED_DATA
from ._events import AbortRequest as AbortRequest
from ._events import ConnectionClosed as ConnectionClosed
from ._events import Data as Data
from ._events import EndRequest as EndRequest
from ._events import Event as Event
from ._events import GetValues as GetValues
from ._events import GetValuesResult as GetValuesResult
from ._events import Request as Request
from ._events import Stderr as Stderr
from ._events import Stdin as Stdin
from ._events import Stdout as Stdout
from ._events import UnknownType as UnknownType
from ._records import decode_pairs as decode_pairs
from ._records import encode_pairs as encode_pairs
from ._records import encode_record as encode_record

__all__ = [
    "ClientConnection", "ConnectionState", "ServerConnection",
    "DEFAULT_MAX_BUFFER_SIZE", "DEFAULT_MAX_PARAMS_SIZE", "DEFAULT_MAX_REQUESTS", "FCGI_CLUSTER_PROCESSES", "KEEP_CONN",
    "ProtocolStatus", "RecordType", "Role",
    "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
    "NEED_DATA", "AbortRequest", "ConnectionClosed", "Data", "EndRequest", "Event",
    "GetValues", "GetValuesResult", "Request", "Stderr", "Stdin", "Stdout", "UnknownType",
    "decode_pairs", "encode_pairs", "encode_record",
]
