"""The worker: serves a WSGI or ASGI app over FastCGI (the php-fpm role)."""

from ._app import AppLoadError as AppLoadError
from ._app import app_interface as app_interface
from ._app import load_app as load_app
from ._config import WorkerConfig as WorkerConfig
from ._server import ListenError as ListenError
from ._server import run_worker as run_worker
from ._server import serve as serve

__all__ = ["AppLoadError", "ListenError", "WorkerConfig", "app_interface", "load_app", "run_worker", "serve"]
