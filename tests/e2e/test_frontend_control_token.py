"""The control listener's token (`[frontend] control_token_file`): a real front-end, workers and `ctl`."""

from __future__ import annotations

import http.client
import os
import pathlib
import signal
import subprocess

import pytest

from tests._peers import REPO_ROOT, free_port

from ._frontend import frontend_argv, frontend_from_file
from ._worker import worker_process
from .test_frontend_control import cluster_file, ctl, who

SECRET = "s3cr3t-control-token-9f2c"


def raw(cport: int, method: str, path: str, body: str = "", headers: dict | None = None) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", cport, timeout=30)
    try:
        conn.request(method, path, body=body.encode(), headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def test_every_control_request_needs_the_token_and_a_refusal_changes_nothing(tmp_path: pathlib.Path) -> None:
    token = tmp_path / "control.token"
    token.write_text(SECRET + "\n")
    token.chmod(0o600)
    wrong = tmp_path / "wrong.token"
    wrong.write_text(SECRET[:-1] + "x\n")
    wrong.chmod(0o600)
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _), worker_process() as (w2, _):
        text = cluster_file(port, control, [w1, w2])
        path.write_text(text.replace(f'control = "{control}"\n',
                                     f'control = "{control}"\ncontrol_token_file = "{token.name}"\n'))
        b = f"127.0.0.1:{w2}"
        with frontend_from_file(path, port) as process:
            log = pathlib.Path(process.log_path)
            # ctl -c reads the token from the cluster file's control_token_file (relative to
            # the cluster file's directory, for the front-end and ctl alike: both run elsewhere).
            done = ctl(control, "status", config=path)
            assert done.returncode == 0, done.stderr
            # Without it, or with a wrong one, ctl is refused and says so.
            done = ctl(control, "status")
            assert done.returncode == 1 and "unauthorized" in done.stderr, done.stderr
            done = ctl(control, "--token-file", str(wrong), "drain", "app", b)
            assert done.returncode == 1 and "wrong control token" in done.stderr, done.stderr

            # Raw requests: 401 with a challenge, 403 for a wrong token or another scheme.
            status, headers, _ = raw(cport, "POST", "/control", f"drain app {b}")
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
            for value in (f"Bearer {SECRET}x", f"Basic {SECRET}", "Bearer ", SECRET):
                status, _, body = raw(cport, "POST", "/control", f"down app {b}", {"Authorization": value})
                assert status == 403, (value, status, body)
            for target in ("/status", "/metrics", "/pools"):
                assert raw(cport, "GET", target)[0] == 401, target
            # The dashboard's page holds no figures: it is served, and asks with the token from its #.
            status, _, page = raw(cport, "GET", "/")
            assert status == 200 and "Authorization" in page

            # Nothing the refused commands asked was done: b still takes requests.
            assert sorted(who(port) for _ in range(4)) == sorted([f"127.0.0.1:{w1}"] * 2 + [b] * 2)
            status, _, body = raw(cport, "GET", "/status", headers={"Authorization": f"Bearer {SECRET}"})
            assert status == 200 and '"state": "up"' in body, body
            assert '"state": "drain"' not in body and '"state": "down"' not in body

            # With the token the command is carried out.
            done = ctl(control, "drain", "app", b, config=path)
            assert done.returncode == 0, done.stderr
            assert {who(port) for _ in range(4)} == {f"127.0.0.1:{w1}"}

            text = log.read_text()
            assert "refused: no token (401)" in text and "refused: wrong token (403)" in text, text
            assert SECRET not in text  # the secret itself is never logged
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_token_file_others_may_read_stops_the_front_end_naming_file_and_key(tmp_path: pathlib.Path,
                                                                              mode: int) -> None:
    token = tmp_path / "control.token"
    token.write_text(SECRET)
    token.chmod(mode)
    port = free_port()
    path = tmp_path / "cluster.toml"
    path.write_text(f'[frontend]\nlisten = "127.0.0.1:{port}"\ncontrol = "127.0.0.1:{free_port()}"\n'
                    f'control_token_file = "{token.name}"\n\n[upstream.app]\nservers = ["127.0.0.1:9"]\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(frontend_argv("-c", str(path)), capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env=env)
    assert done.returncode != 0
    assert f"{path}:4" in done.stderr and "control_token_file" in done.stderr, done.stderr
    assert str(token) in done.stderr and f"{mode:04o}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_or_empty_token_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    from fcgi_cluster.frontend import ConfigError, load_config

    path = tmp_path / "cluster.toml"
    path.write_text('[frontend]\ncontrol = "127.0.0.1:8081"\ncontrol_token_file = "absent.token"\n'
                    '[upstream.app]\nservers = ["127.0.0.1:9000"]\n')
    with pytest.raises(ConfigError, match=rf"{path}:3: frontend.control_token_file: cannot read {tmp_path}/absent.token"):
        load_config(str(path))
    (tmp_path / "absent.token").write_text("  \n")
    (tmp_path / "absent.token").chmod(0o600)
    with pytest.raises(ConfigError, match=r"holds no token"):
        load_config(str(path))
