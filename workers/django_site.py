"""A Django project in one module, its sessions in the cluster's store.

``django.contrib.auth`` logs users in with the cluster's session engine, so a
login made on one pool is seen on every pool (and by PHP pages, whose
``$_SESSION`` holds ``_auth_user_id``) sharing the store::

    FCGI_DJANGO_DB=/var/lib/site/db.sqlite3 DJANGO_SECRET_KEY=... \\
    fcgi-cluster worker workers.django_site:app --listen 127.0.0.1:9001 \\
        --session save_handler=redis --session save_path=tcp://127.0.0.1:6379

Every pool needs the same ``DJANGO_SECRET_KEY`` (auth checks a hash of it on
each request) and the same database. ``python -m workers.django_site migrate``
and ``python -m workers.django_site adduser NAME PASSWORD`` prepare the database.

Pages (JSON answers, with the pid of the process that served):
    /login?user=NAME&password=PW   django.contrib.auth's authenticate + login
    /whoami                        the logged-in user, if any
    /logout                        django.contrib.auth's logout
    /visit                         counts the session's visits (``visits``)
"""

from __future__ import annotations

import os
import sys

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-site-key-change-me"),
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                           "NAME": os.environ.get("FCGI_DJANGO_DB", "django-site.sqlite3")}},
    SESSION_ENGINE="fcgi_cluster.sessions.django",
    SESSION_COOKIE_NAME="PHPSESSID",
    USE_TZ=True,
)
django.setup()

from django.contrib import auth  # noqa: E402  (needs the settings above)
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def _answer(request, **fields) -> JsonResponse:
    user = request.user
    fields.setdefault("user", user.get_username() if user.is_authenticated else None)
    response = JsonResponse({**fields, "pid": os.getpid()})
    response["Cache-Control"] = "no-store"
    return response


def login(request):
    user = auth.authenticate(request, username=request.GET.get("user", ""),
                             password=request.GET.get("password", ""))
    if user is None:
        response = _answer(request, error="wrong user or password")
        response.status_code = 403
        return response
    auth.login(request, user)
    return _answer(request, user=user.get_username())


def whoami(request):
    return _answer(request)


def logout(request):
    auth.logout(request)
    return _answer(request, user=None)


def visit(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    return _answer(request, visits=request.session["visits"])


urlpatterns = [path("login", login), path("whoami", whoami), path("logout", logout), path("visit", visit)]

app = get_wsgi_application()


def main(argv: list[str]) -> int:
    """``migrate`` or ``adduser NAME PASSWORD``; other arguments go to Django's manage commands."""
    if argv[:1] == ["adduser"] and len(argv) == 3:
        from django.contrib.auth.models import User

        User.objects.create_user(argv[1], password=argv[2])
        return 0
    from django.core.management import execute_from_command_line

    execute_from_command_line(["django_site", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
