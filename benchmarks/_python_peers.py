"""The servers a Python team would deploy a WSGI app on, each started as its docs advise.

* uWSGI (``uwsgi`` from PyPI): ``--master``, a fixed number of processes, request logging
  off (``--disable-logging``), the app loaded before the fork (``--need-app``), speaking
  either its own uwsgi protocol (``--socket``) or FastCGI (``--fastcgi-socket``);
* gunicorn: sync workers, ``2 * cores + 1`` of them (the number its docs start from),
  behind a buffering proxy (nginx), as its docs require for sync workers;
* granian: the WSGI interface, one worker per core, no front door (it serves HTTP itself);
* nginx in front of uWSGI's uwsgi protocol (``uwsgi_pass``, Debian's ``uwsgi_params``) or
  of gunicorn (``proxy_pass``, the server block of gunicorn's deployment docs).

nginx in front of FastCGI (ours, uWSGI's FastCGI, php-fpm) is tests/_peers.py's.
Every process is started through ``Peers``: stopped by PID when the run ends, even when
it fails.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

from _common import ROOT, Unavailable

from tests._peers import LOOPBACK, Peers, free_port

#: nginx's request temp folders, each given a path under the peer's own directory.
_TEMPS = ("client_body", "fastcgi", "proxy", "uwsgi", "scgi")


def _script(name: str) -> str:
    """A console script beside our Python (the bench extra installs them), else on PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise Unavailable(f"{name} is not installed: pip install -e '.[bench]'")
    return found


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def uwsgi(peers: Peers, app: str, processes: int, protocol: str) -> tuple[int, subprocess.Popen]:
    """uWSGI serving ``app`` with ``processes`` workers over ``protocol`` ("uwsgi" or "fastcgi")."""
    port = free_port()
    socket = {"uwsgi": "--socket", "fastcgi": "--fastcgi-socket"}[protocol]
    argv = [_script("uwsgi"), "--master", "--processes", str(processes), "--module", app,
            socket, f"{LOOPBACK}:{port}", "--need-app", "--disable-logging", "--die-on-term",
            "--chdir", str(ROOT)]
    return port, peers.process(argv, name=f"uwsgi-{protocol}", cwd=ROOT, env=env(), ready_port=port)


def gunicorn(peers: Peers, app: str, workers: int) -> tuple[int, subprocess.Popen]:
    """gunicorn serving ``app`` with ``workers`` sync workers (its default worker class)."""
    port = free_port()
    argv = [_script("gunicorn"), "--workers", str(workers), "--bind", f"{LOOPBACK}:{port}", app]
    return port, peers.process(argv, name="gunicorn", cwd=ROOT, env=env(), ready_port=port)


def granian(peers: Peers, app: str, workers: int) -> tuple[int, subprocess.Popen]:
    """granian serving ``app`` over HTTP on its WSGI interface with ``workers`` processes."""
    port = free_port()
    argv = [_script("granian"), "--interface", "wsgi", "--workers", str(workers),
            "--host", LOOPBACK, "--port", str(port), app]
    return port, peers.process(argv, name="granian", cwd=ROOT, env=env(), ready_port=port)


def nginx_proxy(peers: Peers, directory: pathlib.Path, protocol: str, upstream_port: int,
                worker_processes: int) -> tuple[int, subprocess.Popen]:
    """nginx passing every request to ``upstream_port`` over ``protocol`` ("uwsgi" or "http").

    Neither upstream keeps connections: uWSGI closes a uwsgi-protocol connection after
    each answer, and gunicorn's sync workers close theirs (its docs).
    """
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        raise Unavailable("nginx is not installed: run `make deps` (scripts/install-deps.sh)")
    port = free_port()
    workdir = directory / f"nginx-{protocol}-{port}"
    for temp in _TEMPS:
        (workdir / f"{temp}_temp").mkdir(parents=True, exist_ok=True)
    if protocol == "uwsgi":
        location = "include /etc/nginx/uwsgi_params;\n    uwsgi_pass app;"
    else:  # gunicorn's deployment docs
        location = ("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                    "    proxy_set_header X-Forwarded-Proto $scheme;\n"
                    "    proxy_set_header Host $http_host;\n"
                    "    proxy_redirect off;\n"
                    "    proxy_pass http://app;")
    temps = "\n".join(f"{temp}_temp_path {workdir}/{temp}_temp;" for temp in _TEMPS)
    # As root, nginx's workers would become "nobody", who cannot write the temp folders.
    user = "user root root;" if os.geteuid() == 0 else ""
    config = workdir / "nginx.conf"
    config.write_text(textwrap.dedent("""\
        daemon off;
        worker_processes {processes};
        {user}
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
        access_log off;
        {temps}
        upstream app {{ server {host}:{upstream} fail_timeout=0; }}
        server {{
        listen {host}:{port};
        location / {{
            {location}
        }}
        }}
        }}
        """).format(processes=worker_processes, user=user, workdir=workdir, temps=temps,
                    host=LOOPBACK, upstream=upstream_port, port=port, location=location))
    argv = [nginx, "-p", f"{workdir}/", "-e", str(workdir / "error.log"), "-c", str(config)]
    return port, peers.process(argv, name=f"nginx-{protocol}", cwd=workdir, ready_port=port)
