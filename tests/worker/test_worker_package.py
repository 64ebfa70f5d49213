"""The worker package's public face: what a user imports, each name explicit and documented."""

from __future__ import annotations

import inspect
import types

import fcgi_cluster.worker as worker

#: What a user of the worker needs: one process, a pool master and its config, status.
EXPECTED = {
    "AppLoadError", "ListenError", "WorkerConfig", "app_interface", "load_app", "run_worker", "serve",
    "run_pools", "check_pools", "PoolStartError",
    "load_pool_config", "parse_pool_config", "PoolConfig", "GlobalConfig", "PoolFile", "PoolConfigError",
    "render_status", "PoolStatus", "ProcessStatus", "RequestHooks", "RequestInfo", "reopen_logs",
}


def test_all_is_the_expected_public_names() -> None:
    assert len(worker.__all__) == len(set(worker.__all__))
    assert set(worker.__all__) == EXPECTED
    public = {
        name
        for name, value in vars(worker).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == EXPECTED


def test_every_exported_class_and_function_has_its_own_docstring() -> None:
    for name in worker.__all__:
        value = getattr(worker, name)
        assert inspect.isclass(value) or inspect.isfunction(value), name
        doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
        assert doc and doc.strip(), f"{name} has no docstring"
        # dataclasses invent "Name(field: type, ...)" when a class has none.
        assert not doc.startswith(f"{name}("), f"{name} has only the generated docstring"


def test_names_are_the_implementations_not_copies() -> None:
    from fcgi_cluster.worker import _master, _pool_config, _status

    assert worker.run_pools is _master.run_pools
    assert worker.PoolConfig is _pool_config.PoolConfig
    assert worker.render_status is _status.render_status
