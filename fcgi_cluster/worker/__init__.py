"""The worker: serves a WSGI or ASGI app over FastCGI (the php-fpm role).

One process (``serve``, ``run_worker``), or a php-fpm style master managing
pools of them from an INI file (``load_pool_config``, ``run_pools``).
"""

from ._app import AppLoadError as AppLoadError
from ._app import app_interface as app_interface
from ._app import load_app as load_app
from ._config import WorkerConfig as WorkerConfig
from ._master import PoolStartError as PoolStartError
from ._master import check_pools as check_pools
from ._master import run_pools as run_pools
from ._pool_config import GlobalConfig as GlobalConfig
from ._pool_config import PoolConfig as PoolConfig
from ._pool_config import PoolConfigError as PoolConfigError
from ._pool_config import PoolFile as PoolFile
from ._pool_config import load_pool_config as load_pool_config
from ._pool_config import parse_pool_config as parse_pool_config
from ._request_logs import reopen_logs as reopen_logs
from ._server import ListenError as ListenError
from ._server import run_worker as run_worker
from ._server import serve as serve
from ._status import PoolStatus as PoolStatus
from ._status import ProcessStatus as ProcessStatus
from ._status import RequestHooks as RequestHooks
from ._status import RequestInfo as RequestInfo
from ._status import render_status as render_status

__all__ = [
    "AppLoadError",
    "GlobalConfig",
    "ListenError",
    "PoolConfig",
    "PoolConfigError",
    "PoolFile",
    "PoolStartError",
    "PoolStatus",
    "ProcessStatus",
    "RequestHooks",
    "RequestInfo",
    "WorkerConfig",
    "app_interface",
    "check_pools",
    "load_app",
    "load_pool_config",
    "parse_pool_config",
    "render_status",
    "reopen_logs",
    "run_pools",
    "run_worker",
    "serve",
]
