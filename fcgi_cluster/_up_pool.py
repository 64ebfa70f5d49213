"""A ``[pool.NAME]`` of a cluster file as a pool file, for the pool master.

``fcgi-cluster up`` runs each pool of the cluster file as a pool master
(``fcgi-cluster worker --cluster FILE --pool NAME``): the same process manager
as ``worker -c POOLFILE``, so SIGUSR2 reloads it gracefully (a new generation
of children on the same socket, the old one finishing its requests) and
SIGQUIT stops it gracefully. On SIGUSR2 the master reads the cluster file
again, so a changed ``app``, ``threads`` or ``env`` of its pool takes effect.

The cluster file's pool keys map onto pool-file settings: one static child
(``pm = static``, ``pm.max_children = 1``, what a plain worker ran),
``threads``, ``max_requests`` -> ``fcgi.max_reqs``, ``max_conns`` ->
``fcgi.max_conns``, ``graceful_timeout`` -> ``process_control_timeout``,
``root_path``, ``env`` added to the environment the pool inherits
(``clear_env = no``), and ``session`` -> ``session.*`` (what
``php_value[session.*]`` lines of a pool file set).
"""

from __future__ import annotations

from .worker._pool_config import GlobalConfig, PoolConfig, PoolFile

__all__ = ["cluster_pool_file"]


def cluster_pool_file(path: str, pool: str) -> PoolFile:
    """The pool ``pool`` of the cluster file ``path`` as a one-pool ``PoolFile``.

    Raises:
        ConfigError: the file does not load, or has no ``[pool.<pool>]``
            (the message names the file and the table).
    """
    from .frontend import ConfigError, load_config

    config = load_config(path)
    spec = config.pools.get(pool)
    if spec is None:
        raise ConfigError(path, None, f"pool.{pool}",
                          f"no such table (pools: {', '.join(config.pools) or 'none'})")
    settings = PoolConfig(
        name=pool,
        listen=spec.listen,
        app=spec.app,
        pm="static",
        pm_max_children=1,
        threads=spec.threads,
        threads_inline=spec.threads_inline,
        fcgi_max_reqs=spec.max_requests,
        fcgi_max_conns=spec.max_conns,
        clear_env=False,
        env=dict(spec.env),
        session={f"session.{name}": value for name, value in spec.session.items()},
        root_path=spec.root_path,
        path=path,
    )
    return PoolFile(path=path, global_=GlobalConfig(process_control_timeout=spec.graceful_timeout), pools=(settings,))
