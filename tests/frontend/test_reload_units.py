"""Reload in process: Site(previous=...) carry-over, SiteView pinning, FrontendServer.reload."""

from __future__ import annotations

import os
import signal

import trio

from fcgi_cluster.frontend import _process
from fcgi_cluster.frontend._config import parse_config
from fcgi_cluster.frontend._process import bind_listeners
from fcgi_cluster.frontend._server import FrontendServer
from fcgi_cluster.frontend._site import Site, SiteView


def config(*, listen: str = "127.0.0.1:8080", app: tuple[str, ...] = ("127.0.0.1:9001",),
           other: tuple[str, ...] = ("127.0.0.1:9101",), connect_timeout: str | None = None,
           route: str = "/app/"):
    servers = ", ".join(f'"{s}"' for s in app)
    others = ", ".join(f'"{s}"' for s in other)
    extra = f'connect_timeout = "{connect_timeout}"\n' if connect_timeout else ""
    return parse_config(
        f'[frontend]\nlisten = "{listen}"\naccess_log = false\n'
        f'[upstream.app]\nservers = [{servers}]\n'
        f'[upstream.other]\nservers = [{others}]\n{extra}'
        f'[[route]]\nprefix = "{route}"\nupstream = "app"\n'
        f'[[route]]\nprefix = "/other/"\nupstream = "other"\n',
        "cluster.toml",
    )


async def test_an_unchanged_upstream_is_carried_over_whole() -> None:
    async with trio.open_nursery() as nursery:
        old = Site(config(), nursery)
        new = Site(config(route="/v2/"), nursery, previous=old)
        assert new.upstreams["app"] is old.upstreams["app"]
        assert new.upstreams["other"] is old.upstreams["other"]
        assert new.routes[0].prefix == "/v2/" and old.routes[0].prefix == "/app/"
        assert new.connections is old.connections and new.deadlines is old.deadlines
        assert old.retired_upstreams(new) == [] and old.retired_servers(new) == []
        nursery.cancel_scope.cancel()


async def test_a_server_still_in_the_file_keeps_its_server_object() -> None:
    async with trio.open_nursery() as nursery:
        old = Site(config(), nursery)
        new = Site(config(app=("127.0.0.1:9001", "127.0.0.1:9002")), nursery, previous=old)
        # The upstream changed (a server more), so it is new...
        assert new.upstreams["app"] is not old.upstreams["app"]
        # ...but the address in both keeps its Server, with its pooled connections.
        assert new.upstreams["app"].servers[0] is old.upstreams["app"].servers[0]
        assert new.upstreams["app"].servers[1] not in old.upstreams["app"].servers
        assert old.retired_servers(new) == []
        gone = Site(config(app=("127.0.0.1:9002",)), nursery, previous=new)
        assert old.upstreams["app"].servers[0] in new.retired_servers(gone)
        nursery.cancel_scope.cancel()


async def test_changed_connection_settings_make_new_servers() -> None:
    async with trio.open_nursery() as nursery:
        old = Site(config(), nursery)
        new = Site(config(connect_timeout="3s"), nursery, previous=old)
        assert new.upstreams["other"].servers[0] is not old.upstreams["other"].servers[0]
        assert new.upstreams["app"] is old.upstreams["app"]
        assert old.retired_servers(new) == list(old.upstreams["other"].servers)
        nursery.cancel_scope.cancel()


async def test_site_view_pins_the_site_of_a_request_in_flight() -> None:
    async with trio.open_nursery() as nursery:
        sites = [Site(config(), nursery)]
        view = SiteView(lambda: sites[-1])
        assert view.site is sites[0]
        view.request_started()
        sites.append(Site(config(route="/v2/"), nursery, previous=sites[0]))
        # The request keeps the routes it began with.
        assert view.site is sites[0] and view.routes[0].prefix == "/app/"
        assert sites[0].active_requests == 1 and sites[1].active_requests == 0
        view.request_ended()
        assert sites[0].active_requests == 0
        # The connection's next request sees the new configuration.
        assert view.site is sites[1] and view.routes[0].prefix == "/v2/"
        assert view.route_of(b"/v2/x")[0] == 0 and view.route_of(b"/app/x") == (-1, None)
        nursery.cancel_scope.cancel()


async def test_frontend_server_reload_keeps_restart_only_keys_and_applies_the_rest() -> None:
    async with trio.open_nursery() as nursery:
        server = FrontendServer(config(), nursery)
        first = server.site
        kept = server.reload(config(listen="127.0.0.1:8081", route="/v2/"))
        assert kept == ["listen"]
        assert server.site is not first
        assert server.site.frontend.listen == first.frontend.listen
        assert server.site.routes[0].prefix == "/v2/"
        assert server.site.upstreams["app"] is first.upstreams["app"]
        assert server.reload(config(listen="127.0.0.1:8081", route="/v3/")) == ["listen"]
        assert server.reload(config(route="/v3/")) == []
        nursery.cancel_scope.cancel()


async def test_a_sighup_while_starting_is_applied_once_serving() -> None:
    # What run_frontend's early handler records for a SIGHUP before the serving loop listens.
    (sockets,) = bind_listeners(["127.0.0.1:0"])
    asked: list[object] = []

    def reload_config() -> object:
        asked.append(config(route="/v2/"))
        return asked[-1]

    _process._early_hup.append(signal.SIGHUP)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_process._serve_until_signalled, config(), sockets, reload_config)
            with trio.fail_after(30):
                while not asked:
                    await trio.sleep(0.01)
            assert _process._early_hup == []
            # The serving loop's own signal receiver stops it.
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        _process._early_hup.clear()
        for sock in sockets:
            sock.close()
    assert len(asked) == 1
