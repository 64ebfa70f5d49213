"""The trio HTTP front-end: HTTP/1.1 in, FastCGI out, over balanced worker pools.

    config = load_config("cluster.toml")       # or simple_config([...], [...])
    run_frontend(config)                         # blocks; SIGTERM stops it

``serve_frontend`` runs it inside a trio program instead, on sockets the
caller bound.
"""

from ._config import ClusterConfig as ClusterConfig
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._config import parse_config as parse_config
from ._config import simple_config as simple_config
from ._process import BindError as BindError
from ._process import bind_listeners as bind_listeners
from ._process import run_frontend as run_frontend
from ._server import serve_frontend as serve_frontend

__all__ = [
    "ClusterConfig", "ConfigError", "load_config", "parse_config", "simple_config",
    "BindError", "bind_listeners", "run_frontend", "serve_frontend",
]
