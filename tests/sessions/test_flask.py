"""flask.session in the cluster store through ClusterSessionInterface, behind the real worker adapter."""

from __future__ import annotations

import json

import flask
import pytest

from fcgi_cluster.sessions import ClusterSessionInterface, SessionSettings, WSGISessionMiddleware
from tests.worker._harness import params, serving

from ._memory_store import MemoryStore

SETTINGS = SessionSettings(gc_probability=0)


def make_app() -> flask.Flask:
    app = flask.Flask(__name__)
    app.session_interface = ClusterSessionInterface()  # no secret_key needed

    @app.route("/login/<name>")
    def login(name):
        old = flask.session.session.id
        flask.session["user"] = name
        new = flask.session.regenerate()
        return {"user": name, "changed": old != new}

    @app.route("/me")
    def me():
        flask.session["visits"] = flask.session.get("visits", 0) + 1
        return {"user": flask.session.get("user"), "visits": flask.session["visits"]}

    @app.route("/logout")
    def logout():
        flask.session.invalidate()
        return {"user": None}

    return app


def sid_of(answer) -> str | None:
    for line in answer.head.split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:"):
            return line.split(b":", 1)[1].strip().split(b";")[0].split(b"=")[1].decode()
    return None


async def test_flask_session_lives_in_the_cluster_store():
    store = MemoryStore()
    async with serving(WSGISessionMiddleware(make_app(), store, SETTINGS)) as web:
        first = await web.request(params("/me"))
        sid = sid_of(first)
        login = await web.request(params("/login/alice", HTTP_COOKIE=f"PHPSESSID={sid}"))
        new_sid = sid_of(login)
        me = await web.request(params("/me", HTTP_COOKIE=f"PHPSESSID={new_sid}"))
        stale = await web.request(params("/me", HTTP_COOKIE=f"PHPSESSID={sid}"))
        logout = await web.request(params("/logout", HTTP_COOKIE=f"PHPSESSID={new_sid}"))
    assert json.loads(first.body) == {"user": None, "visits": 1}
    assert json.loads(login.body) == {"user": "alice", "changed": True}
    assert new_sid not in (None, sid)
    assert json.loads(me.body) == {"user": "alice", "visits": 2}
    # The pre-login id was destroyed (fixation defence): it starts over.
    assert json.loads(stale.body) == {"user": None, "visits": 1}
    assert b"PHPSESSID=deleted" in logout.head
    assert new_sid not in store.data
    assert all(b"session=" not in a.head for a in (first, login, me))


def test_flask_app_without_the_middleware_fails_clearly():
    app = make_app()
    with pytest.raises(RuntimeError, match="no cluster session"):
        with app.test_request_context("/me"):
            app.session_interface.open_session(app, flask.request)


def test_flask_test_client_with_the_middleware_keeps_its_cookie():
    store = MemoryStore()
    app = make_app()
    app.wsgi_app = WSGISessionMiddleware(app.wsgi_app, store, SETTINGS)
    client = app.test_client()
    assert client.get("/me").get_json() == {"user": None, "visits": 1}
    assert client.get("/me").get_json() == {"user": None, "visits": 2}
    assert len(store.data) == 1
