"""The control listener's shared secret: ``[frontend] control_token_file``.

Beyond ``control_allow``, a front-end with a token file answers a control
request only when it carries ``Authorization: Bearer <token>``, compared in
constant time (``hmac.compare_digest``). The file holds the token (blanks
around it are dropped) and must be readable by its owner only, as ssh asks
of a private key: a file group or others may read is a configuration error.
``fcgi-cluster ctl -c cluster.toml`` reads the same file.
"""

from __future__ import annotations

import hmac
import os
import stat

__all__ = ["authorized", "bearer", "read_token"]


def read_token(path: str) -> str:
    """The token in ``path``.

    Raises:
        ValueError: the file is group- or world-accessible, not a file, or empty.
        OSError: it cannot be read.
    """
    with open(path, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(f"{path} is accessible by others than its owner (mode {stat.S_IMODE(info.st_mode):04o});"
                             f" chmod 600 {path}")
        token = file.read(4096).strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: a token is ASCII text") from None


def bearer(token: str) -> str:
    """The ``Authorization`` header value carrying ``token``."""
    return f"Bearer {token}"


def authorized(header: str | None, token: str) -> bool:
    """True when the ``Authorization`` header value ``header`` carries ``token`` (constant time)."""
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("latin-1", "replace"), token.encode("ascii"))
